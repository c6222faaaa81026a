"""Kernel tests: every buffer a launcher allocates starts out as NaN.

A missing or unmasked store then shows as NaN in the result instead of passing with whatever
the memory held — on a GPU, the caching allocator would otherwise hand back the identical result
of an earlier call.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def nan_filled_allocations(monkeypatch):
    """Make torch.empty / empty_like return NaN-filled floating tensors during the test."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))
