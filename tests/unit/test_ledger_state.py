"""The ledger keeps every stateful editor's sequential state (``editors.protocols.SequentialState``).

Two entries in a row: the second starts from the first's state, so its memory holds the first's
keys; reverting the first with ``recompute`` recomputes the second's state as if the first had
never been applied (equal to a fresh ledger holding only the second).
"""
from __future__ import annotations

import pytest
import torch

from hyperedit import EditRequest, Ledger, load_model
from ledger_state_reading import assert_memory_grew, kept_keys, n_edits
from test_ledger import ALPHA

FIRST = [EditRequest(prompt="the eiffel tower is located in the city of", target="rome")]
SECOND = [EditRequest(prompt="john plays the sport of", target="tennis")]


@pytest.fixture
def rledit_checkpoint(tiny_llama, tmp_path):
    """A tiny RLEdit with the shipped one's state-keeping options (null-space memory)."""
    from hyperedit.editors.hypernet import RLEditConfig, RLEditEditor

    config = RLEditConfig(layers=[2, 3], rank=4, n_blocks=1, lr_init=0.05, nullspace=True, ridge_samples=16)
    return str(RLEditEditor.create(config, tiny_llama, seed=0).save(tmp_path / "rledit"))


@pytest.mark.parametrize("editor", ["rledit", "alphaedit"])
def test_second_entry_holds_the_first_entrys_keys_and_revert_recomputes_it(editor, tiny_dirs, tmp_path, request):
    options, checkpoint = (({}, request.getfixturevalue("rledit_checkpoint")) if editor == "rledit"
                           else (ALPHA, None))
    ledger = Ledger(tmp_path / "ws").attach(load_model(str(tiny_dirs["llama"])))
    one = ledger.apply(FIRST, editor, options, checkpoint=checkpoint, metrics=False)
    two = ledger.apply(SECOND, editor, options, checkpoint=checkpoint, metrics=False)
    assert one.state_hash and two.state_hash and one.state_hash != two.state_hash
    assert (n_edits(ledger, one), n_edits(ledger, two)) == (1, 2)
    assert_memory_grew(kept_keys(ledger, one), kept_keys(ledger, two))

    ledger.revert(one.id, recompute=True)
    recomputed = ledger.get(two.id)
    alone = Ledger(tmp_path / "alone").attach(load_model(str(tiny_dirs["llama"])))
    only = alone.apply(SECOND, editor, options, checkpoint=checkpoint, metrics=False)
    assert n_edits(ledger, recomputed) == 1
    assert (recomputed.state_hash, recomputed.delta_hash) == (only.state_hash, only.delta_hash)


def test_service_applying_two_rledit_edits_in_a_row_keeps_the_state(rledit_checkpoint, tiny_dirs, tmp_path):
    pytest.importorskip("fastapi", reason="the service needs fastapi")
    from fastapi.testclient import TestClient

    from hyperedit.service import Engine, ServiceConfig, create_app

    config = ServiceConfig(editor="rledit", checkpoint=rledit_checkpoint, max_prompt_tokens=40, max_new_tokens=4,
                           batch_window_s=0.0)
    engine = Engine(load_model(str(tiny_dirs["llama"])), Ledger(tmp_path / "ws"), config)
    try:
        client = TestClient(create_app(engine), base_url="http://127.0.0.1")
        for batch in (FIRST, SECOND):
            res = client.post("/edits", json={"requests": [{"prompt": r.prompt, "target": r.target} for r in batch],
                                              "wait": True})
            assert res.status_code == 200 and res.json()["status"] == "applied", res.text
        one, two = engine.ledger.entries()
        assert (n_edits(engine.ledger, one), n_edits(engine.ledger, two)) == (1, 2)
    finally:
        engine.close()
