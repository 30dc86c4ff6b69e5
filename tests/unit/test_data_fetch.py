"""``hyperedit data``: fetch from a local HTTP server on 127.0.0.1 (no other network), hash checks,
interrupted downloads, unknown names, verify, and the packaged samples."""
from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from hyperedit.cli import main
from hyperedit.data import _common, load_requests
from hyperedit.data.fetch import check_file, fetch_file
from hyperedit.data.registry import REGISTRY, Dataset, RegistryFile
from hyperedit.errors import HyperEditError

BODY = b'{"prompt": "The capital of Veltria is", "target": "Lorn"}\n' * 50


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}

    def do_GET(self):  # noqa: N802
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if self.path.startswith("/cut/"):  # promise the whole file, send half, hang up
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.files = {"/good/edits.jsonl": BODY, "/cut/edits.jsonl": BODY}
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _entry(url, sha=None, size=None):
    return RegistryFile("mine/edits.jsonl", 50, "user", sha or hashlib.sha256(BODY).hexdigest(),
                        len(BODY) if size is None else size, url)


def _leftovers(folder: Path):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_good_download_is_checked_and_readable(server, tmp_path):
    entry = _entry(server + "/good/edits.jsonl")
    assert fetch_file(entry, tmp_path) == "fetched"
    assert (tmp_path / "mine" / "edits.jsonl").read_bytes() == BODY
    assert check_file(entry, tmp_path) == "ok"
    assert len(load_requests(tmp_path / "mine" / "edits.jsonl")) == 50
    assert fetch_file(entry, tmp_path) == "present"  # a second fetch keeps the good copy
    assert _leftovers(tmp_path) == ["edits.jsonl"]


def test_hash_mismatch_keeps_nothing(server, tmp_path):
    entry = _entry(server + "/good/edits.jsonl", sha="0" * 64)
    with pytest.raises(HyperEditError, match="sha256 mismatch") as info:
        fetch_file(entry, tmp_path)
    assert "\n" not in str(info.value)
    assert _leftovers(tmp_path) == []


def test_interrupted_download_keeps_nothing_and_is_not_used(server, tmp_path):
    entry = _entry(server + "/cut/edits.jsonl")
    with pytest.raises(HyperEditError, match="nothing was kept"):
        fetch_file(entry, tmp_path)
    assert _leftovers(tmp_path) == []
    assert check_file(entry, tmp_path) == "missing"
    with pytest.raises(HyperEditError, match="not found"):  # nothing half-written for a loader to read
        load_requests(tmp_path / "mine" / "edits.jsonl")


def test_differing_file_is_never_replaced(server, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "edits.jsonl").write_bytes(b"mine\n")
    with pytest.raises(HyperEditError, match="was not replaced"):
        fetch_file(_entry(server + "/good/edits.jsonl"), tmp_path)
    assert (tmp_path / "mine" / "edits.jsonl").read_bytes() == b"mine\n"


def test_http_error_is_one_line(server, tmp_path):
    with pytest.raises(HyperEditError, match="HTTP 404"):
        fetch_file(_entry(server + "/nowhere.jsonl"), tmp_path)
    assert _leftovers(tmp_path) == []


def test_cli_unknown_name_and_split(capsys, tmp_path):
    assert main(["data", "fetch", "nope", "--data-dir", str(tmp_path)]) == 2
    assert main(["data", "fetch", "counterfact:nope", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unknown dataset 'nope'" in err[0] and "unknown split" in err[1]


def test_cli_fetch_through_mirror_checks_the_registry_hash(server, capsys, tmp_path):
    """The real registry entry for counterfact:val, served with the wrong bytes: exit 2, nothing kept."""
    url = REGISTRY["counterfact"].files[1].url
    _Handler.files["/" + url.split("githubusercontent.com/", 1)[1]] = BODY
    rc = main(["data", "fetch", "counterfact:val", "--data-dir", str(tmp_path), "--mirror", server])
    assert rc == 2 and "gave" in capsys.readouterr().err  # wrong size, caught before the hash
    assert _leftovers(tmp_path) == []


def test_cli_unfetchable_dataset_says_so(capsys, tmp_path):
    assert main(["data", "fetch", "general", "--data-dir", str(tmp_path)]) == 2
    assert "no confirmed public download" in capsys.readouterr().err


def test_missing_named_split_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.delenv(_common.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_common, "_repo_data_dir", lambda: None)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with pytest.raises(HyperEditError, match="hyperedit data fetch counterfact") as info:
        load_requests("counterfact:val")
    assert "\n" not in str(info.value)
    (tmp_path / "data").mkdir()
    with pytest.raises(HyperEditError, match="missing from the data directory.*hyperedit data fetch zsre"):
        load_requests("zsre:train", data_dir=tmp_path / "data")


def test_verify_flags_a_changed_file(tmp_path, capsys):
    entry = REGISTRY["counterfact"].files[1]
    (tmp_path / "counterfact").mkdir()
    (tmp_path / "counterfact" / "val.json").write_bytes(b"x" * entry.size)
    assert main(["data", "verify", "counterfact", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "BAD      counterfact/val.json" in out and "missing  counterfact/train.json" in out


@pytest.mark.parametrize("split", ["counterfact:sample", "zsre:sample", "fever:sample"])
def test_packaged_samples_load_without_data(split, tmp_path, monkeypatch):
    monkeypatch.setenv(_common.ENV_VAR, str(tmp_path / "absent"))  # a data dir would fail: not read
    requests = load_requests(split)
    assert 0 < len(requests) <= 200 and all(r.prompt and r.target for r in requests)


def _shared():
    base = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not base.is_dir():
        pytest.skip("shared benchmark data directory not found")
    return base


def test_registry_matches_the_shared_data():
    base = _shared()
    for dataset in REGISTRY.values():
        for entry in dataset.files:
            assert check_file(entry, base) == "ok", entry.path


def test_samples_are_the_first_records_of_their_splits():
    base = _shared()
    for sample, split in (("counterfact:sample", "counterfact:val"), ("zsre:sample", "zsre:knowedit-test")):
        ours, full = load_requests(sample), load_requests(split, data_dir=base, limit=200)
        assert [(r.prompt, r.target, r.locality) for r in ours] == [(r.prompt, r.target, r.locality) for r in full]


def test_derived_file_is_rebuilt_from_upstream(server, tmp_path):
    """MQuAKE-hard: the upstream array minus some cases, written compactly, then hash-checked."""
    import json

    upstream = [{"case_id": i, "q": f"é{i}"} for i in range(5)]
    raw = json.dumps(upstream).encode()
    derived = json.dumps([r for r in upstream if r["case_id"] not in (1, 3)], ensure_ascii=False).encode()
    _Handler.files["/good/mq.json"] = raw
    from hyperedit.data.registry import DropRecords

    entry = RegistryFile("mq/mq.json", 3, "mquake", hashlib.sha256(derived).hexdigest(), len(derived),
                         server + "/good/mq.json",
                         DropRecords("case_id", (1, 3), hashlib.sha256(raw).hexdigest(), len(raw)))
    assert fetch_file(entry, tmp_path) == "fetched"
    assert (tmp_path / "mq" / "mq.json").read_bytes() == derived
    assert Dataset("x", "", "", (entry,)).fetchable


def test_cli_fetch_real_entry_through_mirror(server, capsys, tmp_path):
    """counterfact:val served from 127.0.0.1 with the shared copy's bytes: fetched, verified, loadable."""
    base = _shared()
    url = REGISTRY["counterfact"].files[1].url
    _Handler.files["/" + url.split("githubusercontent.com/", 1)[1]] = (base / "counterfact" / "val.json").read_bytes()
    assert main(["data", "fetch", "counterfact:val", "--data-dir", str(tmp_path), "--mirror", server]) == 0
    assert capsys.readouterr().out.startswith("fetched")
    assert len(load_requests("counterfact:val", data_dir=tmp_path)) == 1919
    assert _leftovers(tmp_path) == ["val.json"]
