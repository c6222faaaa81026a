"""The bilinear-pool op: argument checks, backend dispatch, torch.library registration, autograd.

Two operators are registered in the ``bcnn_triton`` namespace:

- ``bcnn_triton::bilinear_pool(x, y, signed_sqrt, normalize, eps, triu, center, backend)
  -> (out, norm)``
- ``bcnn_triton::bilinear_pool_backward(grad, x, y, out, norm, ...) -> (dx, dy)``

They follow the template of ``bcnn_triton.ops.registration``: a compiled or exported model
calls each as one node with no graph break, on CPU (torch path) and on CUDA (Triton kernels)
alike, and plain eager calls skip the custom-op dispatch. The ``backend`` argument is "auto"
unless the caller chose one, and "auto" is resolved inside the body from the tensors at run
time (``bcnn_triton.ops.dispatch``): a graph traced or exported on one machine picks the Triton
kernels where the GPU it runs on suits them and the torch path elsewhere, wherever it runs.
"""

from __future__ import annotations

import math

import torch

from bcnn_triton import kernels  # the launchers load (and Triton with them) at first use
from bcnn_triton.ops.dispatch import BACKENDS, resolve_backend, run_dispatched, triton_available
from bcnn_triton.ops.registration import FusedOperator
from bcnn_triton.ops.torch_path import (
    bilinear_pool_backward_torch,
    bilinear_pool_forward_torch,
    compute_dtype_for,
)

__all__ = [
    "BACKENDS",
    "bilinear_pool",
    "check_options",
    "descriptor_size",
    "resolve_backend",
    "triton_available",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def descriptor_size(channels_x: int, channels_y: int, triu: bool) -> int:
    """Length D of one sample's descriptor: Cx·Cy, or C(C+1)/2 for the upper triangle."""
    return channels_x * (channels_x + 1) // 2 if triu else channels_x * channels_y


def _check_stream(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dim() not in (3, 4):
        raise ValueError(
            f"{name} must have shape (N, C, H, W) or (N, C, L); got {t.dim()}-d shape "
            f"{tuple(t.shape)}"
        )
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64; got dtype {t.dtype}"
        )
    flat = t.flatten(2)
    if flat.shape[1] == 0 or flat.shape[2] == 0:
        raise ValueError(
            f"{name} needs at least one channel and one location; got shape {tuple(t.shape)}"
        )
    return flat


def _check_arguments(x: object, y: object, triu: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    x_flat = _check_stream("x", x)
    if y is None:
        y_flat = None
    else:
        y_flat = _check_stream("y", y)
        if y.device != x.device:
            raise ValueError(f"x and y must be on one device; got x on {x.device}, y on {y.device}")
        if y.dtype != x.dtype:
            raise TypeError(f"x and y must have one dtype; got x {x.dtype}, y {y.dtype}")
        if y_flat.shape[0] != x_flat.shape[0] or y_flat.shape[2] != x_flat.shape[2]:
            raise ValueError(
                "y must have x's batch size N and number of locations L; got x of shape "
                f"{tuple(x.shape)} (N={x_flat.shape[0]}, L={x_flat.shape[2]}) and y of shape "
                f"{tuple(y.shape)} (N={y_flat.shape[0]}, L={y_flat.shape[2]})"
            )
        if triu:
            raise ValueError(
                "triu=True needs a single stream (the Gram of x with itself is symmetric); "
                f"got a second stream y of shape {tuple(y.shape)}"
            )
    return x_flat, y_flat


def check_options(eps: object, backend: object) -> None:
    """Raise TypeError/ValueError for an ``eps`` or ``backend`` the op does not accept."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float; got {type(eps).__name__}")
    if not 0 <= eps < math.inf:  # also refuses NaN
        raise ValueError(f"eps must be finite and >= 0; got {eps}")
    if backend is not None and backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be None, 'auto', 'torch' or 'triton'; got {backend!r}")


def bilinear_pool(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    signed_sqrt: bool = True,
    normalize: bool = True,
    eps: float = 1e-10,
    triu: bool = False,
    center: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """B-CNN descriptor: Gram matrix of the feature map, signed square root, L2 normalization.

    Args:
        x: feature map, (N, Cx, H, W) or (N, Cx, L); float16, bfloat16, float32 or float64;
            any strides (a ``channels_last`` map is read in place).
        y: optional second stream, (N, Cy, H', W') or (N, Cy, L) with the same N and the same
            number of locations L = H·W. ``None`` pools x with itself (the usual B-CNN).
        signed_sqrt: apply ``sign(G)·sqrt(|G| + eps)`` to each Gram entry.
        normalize: divide each sample's descriptor by its L2 norm, exactly as
            ``torch.nn.functional.normalize(·, dim=1)`` (norm clamped at 1e-12).
        eps: added under the square root; must be >= 0. With eps > 0 the gradient is finite
            everywhere, all-zero inputs included.
        triu: single stream only: keep the upper triangle, C(C+1)/2 values per sample in
            row-major order, off-diagonal entries times sqrt(2) so that norms and dot products
            equal those of the full C² descriptor.
        center: subtract each channel's mean over the L locations first (each stream its own
            mean): G is then the covariance (X − μ)(Y − ν)ᵀ / L. The mean is taken out of every
            value before the product, so the result keeps its precision when the mean is large
            against the spread.
        backend: ``None`` or ``"auto"`` (the Triton kernels where the GPU runs them on tensor
            cores, torch otherwise, decided at run time: see ``bcnn_triton.ops.dispatch``),
            ``"torch"`` or ``"triton"`` (CPU tensors only under ``TRITON_INTERPRET=1``).

    Returns:
        (N, Cx·Cy) descriptor — the flattened ``G = X·Yᵀ / L`` after the signed square root and
        the normalization — or (N, C(C+1)/2) with ``triu``; in x's dtype, computed with float32
        (float64 for float64) accumulation and cast last, so a float16 map whose Gram exceeds the
        float16 range still gives a finite result. Samples are independent: NaN or Inf in one
        sample's features reach only that sample's row (and its gradient).

    Example:
        >>> x = torch.rand(2, 8, 7, 7)
        >>> z = bilinear_pool(x)
        >>> z.shape
        torch.Size([2, 64])
        >>> torch.allclose(z.norm(dim=1), torch.ones(2))
        True
    """
    check_options(eps, backend)
    if y is x:
        y = None  # the same map twice is the single-stream case: symmetric, half the work
    x_flat, y_flat = _check_arguments(x, y, triu)
    if backend not in (None, "auto"):
        resolve_backend(backend, x_flat)  # a backend that cannot run here fails now, clearly
    return BILINEAR_POOL(
        x_flat, y_flat, signed_sqrt, normalize, float(eps), triu, center, backend or "auto"
    )


def _empty_outputs(
    x: torch.Tensor, y: torch.Tensor | None, normalize: bool, triu: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised descriptor (N, D) and norm ((N,), or (0,) without ``normalize``)."""
    channels_y = x.shape[1] if y is None else y.shape[1]
    size = descriptor_size(x.shape[1], channels_y, triu)
    norm_shape = (x.shape[0],) if normalize else (0,)
    return x.new_empty((x.shape[0], size)), x.new_empty(
        norm_shape, dtype=compute_dtype_for(x.dtype)
    )


def _forward(
    x: torch.Tensor,
    y: torch.Tensor | None,
    signed_sqrt: bool,
    normalize: bool,
    eps: float,
    triu: bool,
    center: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (N, Cx, L), y: (N, Cy, L) or None → descriptor (N, D) and norm (N,) (or (0,))."""
    if x.shape[0] == 0:
        return _empty_outputs(x, y, normalize, triu)

    def run(forward):
        return forward(
            x, y, signed_sqrt=signed_sqrt, normalize=normalize, eps=eps, triu=triu, center=center
        )

    return run_dispatched(
        "bilinear_pool", "bilinear_pool forward", backend, x,
        lambda: run(kernels.bilinear_pool_fwd), lambda: run(bilinear_pool_forward_torch),
    )  # fmt: skip


def _kernels():
    """The Triton launchers, imported at the first call that runs them."""
    import bcnn_triton.kernels

    return bcnn_triton.kernels


def _forward_fake(x, y, signed_sqrt, normalize, eps, triu, center, backend):
    return _empty_outputs(x, y, normalize, triu)


def _backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor | None,
    out: torch.Tensor,
    norm: torch.Tensor,
    signed_sqrt: bool,
    normalize: bool,
    triu: bool,
    center: bool,
    backend: str,
    needs_dx: bool,
    needs_dy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (dx, dy) of the bilinear pool; dy is an empty (0,) tensor without a y."""
    if x.shape[0] == 0:
        return torch.zeros_like(x), _zeros_like_y(x, y)

    def run(backward):
        return backward(
            grad, x, y, out, norm,
            signed_sqrt=signed_sqrt, normalize=normalize, triu=triu, center=center,
            needs_dx=needs_dx, needs_dy=needs_dy,
        )  # fmt: skip

    dx, dy = run_dispatched(
        "bilinear_pool", "bilinear_pool backward", backend, x,
        lambda: run(kernels.bilinear_pool_bwd), lambda: run(bilinear_pool_backward_torch),
    )  # fmt: skip
    dx = torch.zeros_like(x) if dx is None else dx
    dy = _zeros_like_y(x, y) if dy is None else dy
    return dx, dy


def _zeros_like_y(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """A zero gradient for y, or the empty (0,) placeholder of the single-stream case."""
    return x.new_empty(0) if y is None else torch.zeros_like(y)


def _backward_fake(
    grad, x, y, out, norm, signed_sqrt, normalize, triu, center, backend, needs_dx, needs_dy
):
    dy = x.new_empty(0) if y is None else torch.empty_like(y)
    return torch.empty_like(x), dy


def _kept_descriptor(out: torch.Tensor, signed_sqrt: bool, normalize: bool) -> torch.Tensor:
    """What the backward needs of the descriptor: all of it, or nothing (an empty tensor) for a
    plain Gram or covariance, whose gradient does not depend on it."""
    return out if signed_sqrt or normalize else out.new_empty(0)


def _setup_context(ctx, inputs, output):
    x, y, signed_sqrt, normalize, _eps, triu, center, backend = inputs
    out, norm = output
    ctx.save_for_backward(x, y, _kept_descriptor(out, signed_sqrt, normalize), norm)
    ctx.options = (signed_sqrt, normalize, triu, center, backend)


def _input_gradients(ctx, grad_out, backward, needs_input_grad):
    """(dx, dy, None × 6) from what ``_setup_context`` saved, through ``backward``."""
    x, y, out, norm = ctx.saved_tensors
    needs_dx, needs_dy = needs_input_grad[0], needs_input_grad[1]
    dx, dy = backward(grad_out, x, y, out, norm, *ctx.options, needs_dx, needs_dy)
    dx = dx if needs_dx else None
    dy = dy if (y is not None and needs_dy) else None
    return dx, dy, None, None, None, None, None, None


BILINEAR_POOL = FusedOperator(
    "bilinear_pool",
    forward=_forward,
    forward_fake=_forward_fake,
    backward=_backward,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    input_gradients=_input_gradients,
)
