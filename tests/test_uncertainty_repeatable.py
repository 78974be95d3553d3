"""MC dropout gives an image the same answer on every run and in any batch."""

from __future__ import annotations

import torch

from engine.models import load_model
from engine.uncertainty import sample


def test_mc_dropout_answers_repeat_and_do_not_depend_on_the_batch(tiny_model):
    lm = load_model(tiny_model, device="cpu")
    assert lm.spec.head_dropout > 0
    size = lm.spec.input_size
    x = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(0))
    first, _ = sample([lm], x, "mc", 20, amp=False)
    again, _ = sample([lm], x, "mc", 20, amp=False)
    assert torch.equal(first, again)
    torch.manual_seed(99)  # the global random state plays no part
    alone, _ = sample([lm], x[2:3], "mc", 20, amp=False)
    assert torch.allclose(alone[:, 0], first[:, 2], atol=1e-6)
    # still K different sub-networks: the passes disagree, so there is a spread to report
    assert float(first.std(dim=0).max()) > 1e-4


def test_full_mc_dropout_repeats_for_the_same_batches(tiny_model):
    lm = load_model(tiny_model, device="cpu")
    size = lm.spec.input_size
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    state = torch.get_rng_state()
    first, _ = sample([lm], x, "mc-full", 5, amp=False)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    again, _ = sample([lm], x, "mc-full", 5, amp=False)
    assert torch.equal(first, again)
