"""Shared fixtures: tiny models (fresh per test, built once per session) and the real data dir."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_tiny  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and it avoids oversubscribing shared cores.

    ``HYPEREDIT_TEST_THREADS=N`` runs the suite on N threads instead: tolerances must hold on any
    thread count (reductions split differently), and this is how to check that they do."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("HYPEREDIT_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: build_tiny(kind, root / kind) for kind in ("llama", "gpt2", "t5", "gemma3")}


def _load(path):
    from hyperedit.models import load_model

    return load_model(str(path))


@pytest.fixture
def model_dir(tiny_dirs):
    """The tiny Llama's directory, as a command line takes it (``--model DIR``)."""
    return str(tiny_dirs["llama"])


@pytest.fixture
def tiny_llama(tiny_dirs):
    return _load(tiny_dirs["llama"])


@pytest.fixture
def tiny_gpt2(tiny_dirs):
    return _load(tiny_dirs["gpt2"])


@pytest.fixture
def tiny_t5(tiny_dirs):
    return _load(tiny_dirs["t5"])


@pytest.fixture
def tiny_gemma3(tiny_dirs):
    return _load(tiny_dirs["gemma3"])


@pytest.fixture(params=["llama", "gpt2", "t5", "gemma3"])
def tiny_any(request, tiny_dirs):
    return _load(tiny_dirs[request.param])


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Unit tests never touch the user's cache, except the embedded model's (read-only reuse)."""
    if "HYPEREDIT_CACHE" not in os.environ:
        monkeypatch.setenv("HYPEREDIT_STATS_CACHE", str(tmp_path / "stats-cache"))
