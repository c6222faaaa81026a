"""Seeds derived from tuples of integers, so random draws depend on (seed, epoch, index) only."""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "generator_for"]


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers: nearby tuples give unrelated streams.

    ``derive_seed(seed, epoch, index)`` is the same in every process and worker, which is what
    makes augmentation independent of the DataLoader's worker count and of the rank layout.
    """
    payload = b"".join(int(part).to_bytes(8, "little", signed=True) for part in parts)
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little") >> 1


def generator_for(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
