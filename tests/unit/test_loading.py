"""load_model: clear one-line errors, frozen eval-mode models, the cache directory."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from hyperedit.errors import HyperEditError, ModelLoadError
from hyperedit.models import LoadedModel, cache_dir, load_model


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text
    return text


def test_missing_path(tmp_path):
    missing = tmp_path / "nothing-here"
    with pytest.raises(ModelLoadError) as info:
        load_model(str(missing))
    assert "no such model or directory" in _one_line(info.value)
    assert str(missing) in str(info.value)


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(f))
    assert "is a file" in _one_line(info.value)


def test_directory_without_config(tmp_path):
    d = tmp_path / "empty-model"
    d.mkdir()
    with pytest.raises(ModelLoadError) as info:
        load_model(str(d))
    assert "no config.json" in _one_line(info.value)


def test_hub_like_name_is_refused_without_network():
    with pytest.raises(ModelLoadError) as info:
        load_model("some-org/some-model")
    text = _one_line(info.value)
    assert "model-hub name" in text and "never downloads" in text


def test_model_load_error_is_a_user_error():
    assert issubclass(ModelLoadError, HyperEditError)


def test_unsupported_architecture_dir(tmp_path, tiny_dirs):
    from transformers import BertConfig, BertForMaskedLM

    d = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=16)).save_pretrained(d)
    with pytest.raises(ModelLoadError) as info:
        load_model(str(d))
    assert "unsupported architecture" in _one_line(info.value) and "'bert'" in str(info.value)


def test_corrupt_config_json(tmp_path, tiny_dirs):
    d = tmp_path / "broken"
    shutil.copytree(tiny_dirs["llama"], d)
    (d / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(d))
    assert "config.json: invalid JSON" in _one_line(info.value)


def test_unknown_dtype(tiny_dirs):
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model(str(tiny_dirs["llama"]), dtype="float8")


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5"])
def test_tiny_model_loads_frozen_in_eval_mode(tiny_dirs, kind):
    lm = load_model(str(tiny_dirs[kind]))
    assert isinstance(lm, LoadedModel)
    model, tok, adapter = lm  # unpacks
    assert model is lm.model and tok is lm.tokenizer and adapter is lm.adapter
    assert adapter.model_type == kind
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert lm.device == torch.device("cpu")
    assert lm.name == Path(tiny_dirs[kind]).name
    assert tok.pad_token_id is not None


def test_dtype_bfloat16(tiny_dirs):
    lm = load_model(str(tiny_dirs["llama"]), dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in lm.model.parameters())


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPEREDIT_CACHE", str(tmp_path / "my-cache"))
    assert cache_dir() == tmp_path / "my-cache"
    monkeypatch.delenv("HYPEREDIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "hyperedit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "hyperedit"


def test_embedded_model_without_its_package_names_the_install_and_leaves_no_cache(tmp_path, monkeypatch):
    from hyperedit.models import loading

    monkeypatch.setenv("HYPEREDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(loading.EMBEDDED, "absent-model", ("hyperedit-no-such-package", "x/model.gguf"))
    monkeypatch.setitem(loading.INSTALL_HINT, "absent-model", "make setup-absent")
    with pytest.raises(ModelLoadError) as info:
        load_model("absent-model")
    text = _one_line(info.value)
    assert "hyperedit-no-such-package" in text and "make setup-absent" in text
    assert not any((tmp_path / "cache" / "models").iterdir())  # the temporary cache directory is gone


def test_chunked_embedded_model_with_a_missing_chunk_module_is_one_line(tmp_path, monkeypatch):
    """A chunked model whose joining module cannot be imported (a chunk package missing)."""
    from hyperedit.models import loading

    monkeypatch.setenv("HYPEREDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(loading.EMBEDDED, "chunked-model", ("torch", "torch/__init__.py"))  # installed
    monkeypatch.setitem(loading.CHUNKED_GGUF, "chunked-model", "hyperedit_no_such_chunk_module")
    monkeypatch.setitem(loading.INSTALL_HINT, "chunked-model", "make setup-chunked")
    with pytest.raises(ModelLoadError) as info:
        load_model("chunked-model")
    text = _one_line(info.value)
    assert "chunk package is missing" in text and "make setup-chunked" in text
    assert not any((tmp_path / "cache" / "models").iterdir())


def test_chunked_embedded_model_failing_its_checksum_is_one_line(tmp_path, monkeypatch):
    """The joining module reports a corrupt chunk (its SHA-256 check fails): one line, nothing cached."""
    from hyperedit.models import loading

    package = tmp_path / "site"
    package.mkdir()
    (package / "hyperedit_test_chunks.py").write_text(
        'MODEL_NAME = "m.gguf"\n'
        "def assemble(output_path):\n"
        '    open(output_path, "wb").write(b"partial")\n'
        '    raise ValueError("Assembled file sha256 did not match expected value")\n')
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.setenv("HYPEREDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(loading.EMBEDDED, "chunked-model", ("torch", "torch/__init__.py"))
    monkeypatch.setitem(loading.CHUNKED_GGUF, "chunked-model", "hyperedit_test_chunks")
    monkeypatch.setitem(loading.INSTALL_HINT, "chunked-model", "make setup-chunked")
    with pytest.raises(ModelLoadError) as info:
        load_model("chunked-model")
    text = _one_line(info.value)
    assert "sha256 did not match" in text and "reinstall: make setup-chunked" in text
    assert not any((tmp_path / "cache" / "models").iterdir())  # the partial join went with the temporary
