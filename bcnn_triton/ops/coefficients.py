"""Per-sample scalars of the backward pass, shared by the torch and the Triton paths.

With G = X·Yᵀ/L, s = sign(G)·sqrt(|G| + eps), r = ‖s‖, z = s / max(r, NORM_EPS) and the
incoming gradient g, the chain rule gives per entry

    dG = (g − projection·z) · scale / |z|        (signed sqrt; 0 where z = 0)
    dG = (g − projection·z) · scale              (no signed sqrt)

with two per-sample scalars:

    projection = ⟨z, g⟩ when normalizing (and r ≥ NORM_EPS, where F.normalize's clamp is
                 inactive), else 0;
    scale      = 1 / (2·r²·L)   signed sqrt and normalize (|s| = r·|z|, d sqrt = 1 / 2|s|)
                 1 / (2·L)      signed sqrt only
                 1 / (r·L)      normalize only
                 1 / L          neither
    (r clamped to NORM_EPS, as torch.nn.functional.normalize does.)
"""

from __future__ import annotations

import torch

__all__ = ["NORM_EPS", "backward_coefficients"]

#: The denominator clamp of ``torch.nn.functional.normalize``.
NORM_EPS = 1e-12


def backward_coefficients(
    norm: torch.Tensor,
    out_dot_grad: torch.Tensor | None,
    signed_sqrt: bool,
    normalize: bool,
    locations: int,
    num_samples: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``projection`` and ``scale``, each (N,), in ``dtype``.

    norm: (N,) descriptor norms from the forward pass (ignored unless ``normalize``);
    out_dot_grad: (N,) ⟨z, g⟩ (needed only when ``normalize``).
    """
    if not normalize:
        projection = torch.zeros(num_samples, device=device, dtype=dtype)
        factor = 0.5 if signed_sqrt else 1.0
        scale = torch.full((num_samples,), factor / locations, device=device, dtype=dtype)
        return projection, scale
    norm = norm.to(dtype)
    clamped = norm.clamp_min(NORM_EPS)
    # Below the clamp F.normalize divides by a constant: no projection term there.
    projection = torch.where(norm >= NORM_EPS, out_dot_grad.to(dtype), 0.0)
    scale = (0.5 / locations) / clamped.square() if signed_sqrt else (1.0 / locations) / clamped
    return projection, scale
