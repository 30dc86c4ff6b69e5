"""The registry of the benchmark files hyperedit reads: where each comes from, its licence, its
layout, and the sha256 and size a good copy has (``hyperedit data list | fetch | verify``).

Each URL is a raw GitHub URL pinned to a commit, so its bytes cannot change under the hash.
A file is *confirmed* when the git blob at that commit is byte-identical to the copy the
project's benchmarks were measured on (checked against a mirror of the repository). A file with
``url=None`` has no confirmed public download (the general-ability sets: published upstream as
Python pickles, which hyperedit never loads); such a file can only be placed by hand.

``DropRecords`` describes a file derived from its upstream one: MQuAKE-hard here is the
upstream JSON array without 8 cases, written as compact JSON (``ensure_ascii=False``); both the
upstream hash and the result's hash are checked.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hyperedit.data._common import DataDirNotFound, resolve_data_dir
from hyperedit.errors import HyperEditError

GITHUB_RAW = "https://raw.githubusercontent.com/"


@dataclass(frozen=True)
class DropRecords:
    """The upstream JSON array minus the records whose ``key`` is in ``values``."""

    key: str
    values: tuple
    upstream_sha256: str
    upstream_size: int


@dataclass(frozen=True)
class RegistryFile:
    path: str  # under the data directory
    records: int
    layout: str
    sha256: str
    size: int
    url: str | None  # None: no confirmed public download
    derive: DropRecords | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    licence: str
    source: str
    files: tuple[RegistryFile, ...]

    @property
    def fetchable(self) -> bool:
        return all(f.url for f in self.files)


def _gh(repo: str, commit: str, path: str) -> str:
    return f"{GITHUB_RAW}{repo}/{commit}/{path}"


def _pinned(repo: tuple[str, str], *files: tuple) -> tuple[RegistryFile, ...]:
    """The files one repository serves at a pinned commit, each ``(path under the data directory,
    records, layout, sha256, size, path in the repository)``."""
    return tuple(RegistryFile(path, records, layout, sha256, size, _gh(*repo, upstream))
                 for path, records, layout, sha256, size, upstream in files)


_KS = ("Jometeorie/KnowledgeSpread", "51d7402617c2e52bde0dc11b76e400c3725a181a")
_FEVER = ("TalSchuster/FeverSymmetric", "fa25d17e73ea0694edc78133ec654b9f32f6db73")
_LTE = ("YJiangcm/LTE", "b8fb59b90d54e5e77095dc06f0b5e0da9a2d5340")
_LEONZ = ("leonz-z/EasyEdit", "5d49c472bd4b8447a70d276fb577d28088588e62")
_MZSRE = ("shaobo9856/EasyEdit", "9df3cf7e29834895eaa53a7aab33475f6225d0fb")
_MQUAKE = ("Alanzxd/memit_for_mquake", "7d658a522b3988b18bd1cdc22335837303223f42")
_GLUE = "GLUE-style rows (sentence(s), label)"

_DATASETS = [
    Dataset("counterfact", "CounterFact (ROME, MIT), as published in an Apache-2.0 repository",
            "Jometeorie/KnowledgeSpread, data/counterfact (EasyEdit layout)", _pinned(_KS,
                ("counterfact/train.json", 10000, "counterfact-easyedit",
                 "f7d443ffb0c5da6cbe816cdac45281ccb3f204b8a840f00d07a4aafa949bcd76", 3949873,
                 "data/counterfact/counterfact-train.json"),
                ("counterfact/val.json", 1919, "counterfact-easyedit",
                 "42b44645471020a9419d183deb9e113e82941380046861770ea0083dabd13982", 760303,
                 "data/counterfact/counterfact-val.json"))),
    Dataset("zsre", "MIT (EasyEdit forks) / Apache-2.0 (KnowledgeSpread) repositories; no separate data licence",
            "MEND zsRE (Jometeorie/KnowledgeSpread), KnowEdit ZsRE test (leonz-z/EasyEdit), "
            "MzsRE English (shaobo9856/EasyEdit)", (
                *_pinned(_KS,
                    ("zsre/train.json", 1000, "zsre-mend",
                     "e62596101d8ed551889c26c0d2a5277f92eaef3b14416d8eaee39b04a244ab60", 537970,
                     "data/zsre/zsre_mend_train-1k.json")),
                *_pinned(_LEONZ,
                    ("zsre/knowedit-test.json", 1304, "zsre-knowedit",
                     "d70ff1f69ddcac101bbe9c6f1d6ee3918bdac96f145d937e90fbbb02fcf85fab", 1523064,
                     "dataset/KnowEdit-ms/benchmark_ZsRE_ZsRE-test-all.json")),
                *_pinned(_MZSRE,
                    ("zsre/train-10k.json", 10000, "zsre-mend (reduced: alt is the target)",
                     "86f1d06ad075dc806fd046cc292b866726ff981fdf2c14a7d933fa12dd5c5010", 3300077,
                     "data/MzsRE/zsre_mend_train_10000.json")),
            )),
    Dataset("fever", "data CC BY-SA 3.0 (Wikipedia material); code MIT",
            "TalSchuster/FeverSymmetric", _pinned(_FEVER,
                ("fever/fever_symmetric_v0.1_full.jsonl", 956, "fever",
                 "6edf8b5bdc3f2fe470b98e94297ed31200a241c98b0318f905bf324345cf6897", 262583,
                 "symmetric_v0.1/fever_symmetric_full.jsonl"),
                ("fever/fever_symmetric_v0.2_dev.jsonl", 708, "fever",
                 "1d43d016da9264de2139cd10edd459ffbeac84f1fd85d60b70ab6ef63d283f81", 466743,
                 "symmetric_v0.2/fever_symmetric_dev.jsonl"),
                ("fever/fever_symmetric_v0.2_test.jsonl", 712, "fever",
                 "b2ff560615bd3337c858bc5b09256d04f39aaa034aaae2351bb2d6345c110f83", 485280,
                 "symmetric_v0.2/fever_symmetric_test.jsonl"))),
    Dataset("knowedit", "KnowEdit (MIT) in Apache-2.0 (YJiangcm/LTE) and MIT (leonz-z/EasyEdit) repositories",
            "KnowEdit: YJiangcm/LTE EasyEdit/data/knowedit; WikiData_counterfact test from leonz-z/EasyEdit", (
                *_pinned(_LTE,
                    ("knowedit/wiki_recent_train.json", 570, "knowedit",
                     "5856107412ddeeae2ceea2a15ebd125fd7c86ac8d62b933b095514304a77c73a", 1837416,
                     "EasyEdit/data/knowedit/wiki_recent/recent_train.json"),
                    ("knowedit/wiki_counterfact_train.json", 1428, "knowedit",
                     "acdc01922afab1d4122249a2c22ad8c1e0e86506dd7a28eec698f22d175ebf9d", 1388264,
                     "EasyEdit/data/knowedit/wiki_counterfact/train_cf.json")),
                *_pinned(_LEONZ,
                    ("knowedit/wiki_counterfact_test.jsonl", 885, "knowedit (JSON lines)",
                     "ab0dd49dd0efc3ca12beb795b3b4af9e71536aefa19f00edeb90dca9e5bcdac7", 3469788,
                     "dataset/KnowEdit-ms/wiki_counterfact_test_cf-generate-10.json")),
                *_pinned(_LTE,
                    ("knowedit/wikibio_train.json", 464, "knowedit-wikibio",
                     "6ee88049c1c6c00d6f81d2d942350b6ec78b45917d2ec8a3eec3eafa89c2e209", 454217,
                     "EasyEdit/data/knowedit/WikiBio/wikibio-train-all.json"),
                    ("knowedit/wikibio_test.json", 306, "knowedit-wikibio",
                     "00933f69b47d8281d01f1f4b84f3f266b7482a65a7d74022e660a8a9ca2264a4", 309858,
                     "EasyEdit/data/knowedit/WikiBio/wikibio-test-all.json")),
            )),
    Dataset("mquake", "MQuAKE (MIT), in an MIT repository",
            "Alanzxd/memit_for_mquake data/MQuAKE-hard.json, 8 cases removed", (
                RegistryFile("mquake/MQuAKE-hard.json", 421, "mquake",
                             "53975ce803f37f0fe8b342ccfd20457f360e00d19d62fc697bab875f4c05a73b", 1895662,
                             _gh(*_MQUAKE, "data/MQuAKE-hard.json"),
                             DropRecords("case_id", (7755, 8151, 8277, 8323, 8759, 9014, 9085, 9141),
                                         "fc78dc7bec4625d3ce6e2923acae7f1920691b0b23e663182bf799f2856f2a11",
                                         1943567)),
            )),
    Dataset("general", "GLUE and MMLU task licences (per task); unconfirmed public source",
            "the general-ability sets of HiEdit/RLEdit (glue_eval); upstream as pickles: place by hand", tuple(
                RegistryFile(f"general/{task}.jsonl", records, layout, sha, size, None)
                for task, records, layout, sha, size in (
                    ("sst2", 856, _GLUE, "10c63b8200470375fdd8d59a59086b43e1bc8e5a953e70c795ada91c7e60acd8", 125645),
                    ("mrpc", 258, _GLUE, "ef7784affbb9405dabb87a680cb87e81dfd62ed6d1d83c7bcaf9195d7464ee65", 75907),
                    ("cola", 644, _GLUE, "5a8de8955e2401a127e8b2fb25a1edbb52e68f3bcd4c260ce98b1cb22af71bd4", 53052),
                    ("rte", 262, _GLUE, "ca71ff301bcf67d2b038075efbfebad37d667dcf8ec9bf1a6dff72c49e80f1c7", 95879),
                    ("nli", 2489, _GLUE, "ca300c98920ecb7d70ca959c4038bebedb083d79961a7d326293ad7315b3ae5c", 989742),
                    ("mmlu", 1516, "question, subject, choices[], answer",
                     "5975ae11672fffaa8a2b05f6817104a5471144f0a2d0bff7905479dfd3b3d044", 816296),
                    ("dialogue", 886, "options[], answers",
                     "ccf41a5f59e3be6baf94a9f19162ed449e46fe13e50077989c668458d977b04e", 658022),
                    ("sentiment", 872, _GLUE, "a59564505f2ef3c697c3790b58153fe1d2be7f20a4591156ef3dea74bdfb4b16", 119356),
                ))),
]

REGISTRY: dict[str, Dataset] = {d.name: d for d in _DATASETS}
_BY_PATH: dict[str, Dataset] = {f.path: d for d in _DATASETS for f in d.files}


def get_dataset(name: str) -> Dataset:
    if name not in REGISTRY:
        raise HyperEditError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)} (see `hyperedit data list`)")
    return REGISTRY[name]


def registry_file(path: str) -> RegistryFile | None:
    dataset = _BY_PATH.get(path)
    return next(f for f in dataset.files if f.path == path) if dataset else None


def how_to_get(path: str) -> str:
    """The command that puts ``path`` (under the data directory) in place, as a clause."""
    dataset = _BY_PATH.get(path)
    if dataset is None:
        return "see `hyperedit data list`"
    if not dataset.fetchable:
        return f"it has no confirmed public download: place it there by hand (`hyperedit data list {dataset.name}`)"
    return f"get it with `hyperedit data fetch {dataset.name}`"


def require_file(path: str, data_dir: str | os.PathLike | None = None, what: str | None = None) -> Path:
    """``path`` under the data directory, or one line saying which command gets it."""
    what = what or path
    try:
        base = resolve_data_dir(data_dir)
    except DataDirNotFound:
        raise HyperEditError(f"{what}: no benchmark data directory; {how_to_get(path)}") from None
    found = base / path
    if not found.is_file():
        raise HyperEditError(f"{what}: {path} is missing from the data directory {base}; {how_to_get(path)}")
    return found
