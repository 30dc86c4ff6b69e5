"""The ledger keeps the shipped RLEdit's sequential state on the embedded SmolLM2 (the unit test
``test_ledger_state`` does the same with a tiny RLEdit of the shipped settings)."""
from __future__ import annotations

import pytest

from hyperedit import EditRequest, Ledger
from ledger_state_reading import assert_memory_grew, kept_keys, n_edits
from test_smollm2 import requires_smollm2

pytestmark = [pytest.mark.integration, requires_smollm2]

FIRST = [EditRequest(prompt="The Eiffel Tower is located in the city of", target="Rome", subject="Eiffel Tower")]
SECOND = [EditRequest(prompt="Roger Federer plays the sport of", target="golf", subject="Roger Federer")]


def test_shipped_rledit_entries_chain_their_state_and_revert_recomputes_it(tmp_path):
    import torch

    from hyperedit.models import load_model

    torch.set_num_threads(1)
    lm = load_model("smollm2-135m")
    ledger = Ledger(tmp_path / "ws").attach(lm)
    one = ledger.apply(FIRST, "rledit", {}, metrics=False)
    two = ledger.apply(SECOND, "rledit", {}, metrics=False)
    assert (n_edits(ledger, one), n_edits(ledger, two)) == (1, 2)
    assert_memory_grew(kept_keys(ledger, one), kept_keys(ledger, two))

    ledger.revert(one.id, recompute=True)
    recomputed = ledger.get(two.id)
    alone = Ledger(tmp_path / "alone").attach(load_model("smollm2-135m"))  # the base weights, not the edited ones
    only = alone.apply(SECOND, "rledit", {}, metrics=False)
    assert n_edits(ledger, recomputed) == 1
    assert (recomputed.state_hash, recomputed.delta_hash) == (only.state_hash, only.delta_hash)
