"""Coupled Newton–Schulz iterations for the matrix square root, two launches per step.

All matrices of the iteration (and, in the backward, all their tangents along a symmetric
direction) are symmetric: they are polynomials in the symmetric Â, and so commute. So every
product is symmetric, and ``_newton_schulz_kernel`` computes only the tiles on and above the
diagonal, storing each tile and its mirror (half the FLOPs). One launch does one phase of a step
for every sample and every matrix of the state at once:

- ``MAKE_T``: the pair ``T = (3I − Z·Y)/2`` and, with ``TANGENT``, ``dT = −(dZ·Y + Z·dY)/2``
  (two products in one accumulator), the identity added in the epilogue;
- otherwise the step: ``Y ← Y·T``, ``Z ← Z·T`` and, with ``TANGENT``, ``dY ← dY·T + Y·dT``,
  ``dZ ← dZ·T + Z·dT``. ``SLOT_STEP = 2`` computes Y (and dY) only: the first and last steps.
  The last one can scale by √s per sample and write the upper triangle (``SCALE``, ``TRIU``).

The state is one stack (N, slots, C, C) of float32 matrices ``[Y, Z]`` or ``[Y, Z, dY, dZ]``,
the pair a stack ``[T]`` or ``[T, dT]``; the launchers ping-pong between two state stacks. The
first T and the backward's trace term are elementwise and stay in torch; the trace
normalization Â = (A + Aᵀ)/2s comes from the op layer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import INTERPRETER, batch_bucket, device_guard, dot_input_precision

__all__ = ["matrix_sqrt_newton_schulz_bwd", "matrix_sqrt_newton_schulz_fwd"]


def _configs() -> list[triton.Config]:
    if INTERPRETER:
        return [triton.Config({"BLOCK_C": 32, "BLOCK_K": 32}, num_warps=4)]
    return [
        triton.Config({"BLOCK_C": block_c, "BLOCK_K": 32}, num_warps=warps, num_stages=stages)
        # Starting points until a GPU run tunes them: C = 256 gives 10 upper tiles of 64 per
        # matrix (enough programs for N = 8) or 3 of 128 (fewer, fatter ones for large N).
        for block_c, warps, stages in ((64, 4, 3), (128, 8, 3))
    ]


@triton.jit
def _accumulate_product(
    acc, lhs, rhs, C, offs_m, offs_n, INPUT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr
):
    """acc + lhs[offs_m, :]·rhs[:, offs_n] for row-major C×C matrices at ``lhs`` and ``rhs``."""
    offs_k = tl.arange(0, BLOCK_K)
    lhs_ptrs = lhs + offs_m[:, None] * C + offs_k[None, :]
    rhs_ptrs = rhs + offs_k[:, None] * C + offs_n[None, :]
    for k_start in range(0, C, BLOCK_K):
        k_left = C - k_start
        a = tl.load(lhs_ptrs, mask=(offs_m[:, None] < C) & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(rhs_ptrs, mask=(offs_k[:, None] < k_left) & (offs_n[None, :] < C), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        lhs_ptrs += BLOCK_K
        rhs_ptrs += BLOCK_K * C
    return acc


@triton.autotune(
    configs=_configs(),
    key=["C", "BATCH_BUCKET", "MAKE_T", "TANGENT", "SLOT_STEP", "SCALE", "TRIU", "INPUT_PRECISION"],
)
# BATCH_BUCKET only keys the autotuner: not specialized, so it never causes a recompile.
@triton.jit(do_not_specialize=["BATCH_BUCKET"])
def _newton_schulz_kernel(
    # pointers: state stack [Y, Z(, dY, dZ)] and pair stack [T(, dT)], float32 (N, slots, C, C)
    # with row-major C×C matrices; result stack (or the (N, C(C+1)/2) triangle with TRIU);
    # per-sample result scale (N,) float32, read with SCALE
    state_ptr,
    pair_ptr,
    out_ptr,
    scale_ptr,
    # sizes; BATCH_BUCKET only keys the autotuner
    C,
    BATCH_BUCKET,
    # strides, in elements: sample and slot of each stack
    stride_state_n,
    stride_state_s,
    stride_pair_n,
    stride_pair_s,
    stride_out_n,
    stride_out_s,
    # meta-parameters
    MAKE_T: tl.constexpr,
    TANGENT: tl.constexpr,
    SLOT_STEP: tl.constexpr,
    SCALE: tl.constexpr,
    TRIU: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Axis 0: tiles of one matrix (sample-major order keeps a sample's operands in L2);
    # axis 1: which matrix of the result stack; axis 2: the sample.
    num_tiles = tl.cdiv(C, BLOCK_C)
    pid_m = tl.program_id(0) // num_tiles
    pid_n = tl.program_id(0) % num_tiles
    if pid_m > pid_n:
        return  # below the diagonal: the mirror of tile (pid_n, pid_m) covers it
    output = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    state = state_ptr + n * stride_state_n
    if MAKE_T:
        # output 0: T from Z·Y; output 1: dT from dZ·Y + Z·dY
        lhs = state + (1 + 2 * output) * stride_state_s
        rhs = state
        lhs_second = state + stride_state_s
        rhs_second = state + 2 * stride_state_s
        second = output == 1
        alpha = -0.5
        beta = tl.where(output == 0, 1.5, 0.0)
        slot = output
    else:
        # state slot s times T, plus (tangent slots) slot s − 2 times dT
        slot = output * SLOT_STEP
        lhs = state + slot * stride_state_s
        rhs = pair_ptr + n * stride_pair_n
        lhs_second = state + (slot - 2) * stride_state_s
        rhs_second = rhs + stride_pair_s
        second = slot >= 2
        alpha = 1.0
        beta = 0.0

    offs_m = pid_m * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_n = pid_n * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32)
    acc = _accumulate_product(acc, lhs, rhs, C, offs_m, offs_n, INPUT_PRECISION, BLOCK_K)
    if TANGENT:
        if second:
            acc = _accumulate_product(
                acc, lhs_second, rhs_second, C, offs_m, offs_n, INPUT_PRECISION, BLOCK_K
            )

    rows = offs_m[:, None]
    cols = offs_n[None, :]
    value = alpha * acc + tl.where(rows == cols, beta, 0.0)
    # A diagonal tile is made exactly symmetric, so the whole matrix is.
    value_t = tl.trans(value)
    value = tl.where((pid_m == pid_n) & (rows > cols), value_t, value)
    if SCALE:
        value = value * tl.load(scale_ptr + n)
        value_t = value_t * tl.load(scale_ptr + n)
    out_dtype = out_ptr.dtype.element_ty
    out = out_ptr + n * stride_out_n + slot * stride_out_s
    if TRIU:
        # Row-major upper triangle: entry (i, j), i <= j, sits at i·(2C − i − 1)/2 + j.
        entry = rows * (2 * C - rows - 1) // 2 + cols
        tl.store(out + entry, value.to(out_dtype), mask=(rows <= cols) & (cols < C))
    else:
        tl.store(out + rows * C + cols, value.to(out_dtype), mask=(rows < C) & (cols < C))
        if pid_m != pid_n:
            mirror = out + offs_n[:, None] * C + offs_m[None, :]
            mask = (offs_n[:, None] < C) & (offs_m[None, :] < C)
            tl.store(mirror, value_t.to(out_dtype), mask=mask)


def _launch(state, pair, out, scale, *, make_t, tangent, slot_step=1, triu=False) -> None:
    """One phase for every sample: the pair from the state (``make_t``), or a step."""
    num_samples, slots, channels, _ = state.shape
    outputs = out.shape[1] if make_t else slots // slot_step

    def grid(meta):
        return (triton.cdiv(channels, meta["BLOCK_C"]) ** 2, outputs, num_samples)

    _newton_schulz_kernel[grid](
        state,
        pair,
        out,
        state if scale is None else scale,  # not read without SCALE
        channels,
        batch_bucket(num_samples),
        state.stride(0),
        state.stride(1),
        pair.stride(0),
        pair.stride(1),
        out.stride(0),
        out.stride(1) if out.dim() == 4 else 0,
        MAKE_T=make_t,
        TANGENT=tangent,
        SLOT_STEP=slot_step,
        SCALE=scale is not None,
        TRIU=triu,
        INPUT_PRECISION=dot_input_precision(torch.float32, state.device),
    )


def _first_state(a_hat: torch.Tensor, tangent: torch.Tensor | None) -> torch.Tensor:
    """[Â, T₀] or [Â, T₀, E, dT₀] with T₀ = (3I − Â)/2, dT₀ = −E/2: the first step's input."""
    num_samples, channels, _ = a_hat.shape
    slots = 2 if tangent is None else 4
    state = a_hat.new_empty((num_samples, slots, channels, channels))
    state[:, 0] = a_hat
    torch.mul(a_hat, -0.5, out=state[:, 1])
    state[:, 1].diagonal(dim1=1, dim2=2).add_(1.5)
    if tangent is not None:
        state[:, 2] = tangent
        torch.mul(tangent, -0.5, out=state[:, 3])
    return state


def _iterate(state, iterations, tangent, last_out, last_scale=None, triu=False):
    """Run the steps from a first state; the last step writes ``last_out``."""
    num_samples, slots, channels, _ = state.shape
    # The pair [T₀(, dT₀)] sits in the odd slots of the first state.
    first_pair = state[:, 1::2]
    if iterations == 1:
        _launch(
            state,
            first_pair,
            last_out,
            last_scale,
            make_t=False,
            tangent=tangent,
            slot_step=2,
            triu=triu,
        )
        return
    following = torch.empty_like(state)
    _launch(state, first_pair, following, None, make_t=False, tangent=tangent, slot_step=2)
    following[:, 1::2] = first_pair  # Z₀ = T₀ (and dZ₀ = dT₀)
    state, following = following, state
    pair = state.new_empty((num_samples, slots // 2, channels, channels))
    for step in range(1, iterations):
        _launch(state, state, pair, None, make_t=True, tangent=tangent)
        if step == iterations - 1:
            _launch(
                state,
                pair,
                last_out,
                last_scale,
                make_t=False,
                tangent=tangent,
                slot_step=2,
                triu=triu,
            )
        else:
            _launch(state, pair, following, None, make_t=False, tangent=tangent)
            state, following = following, state


def matrix_sqrt_newton_schulz_fwd(
    a_hat: torch.Tensor,
    scale: torch.Tensor,
    *,
    iterations: int = 5,
    triu: bool = False,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """√s·Y for normalized symmetric matrices Â (N, C, C) and their traces s (N,), float32.

    Y: ``iterations`` coupled Newton–Schulz steps from Â (``bcnn_triton.ops.matrix_sqrt``).
    Returns (N, C, C), or the row-major upper triangle (N, C(C+1)/2) with ``triu``, in
    ``out_dtype``. Â must be contiguous.

    Example:
        >>> a_hat = torch.eye(256, device="cuda").expand(8, 256, 256) / 256
        >>> root = matrix_sqrt_newton_schulz_fwd(a_hat, torch.full((8,), 256.0, device="cuda"))
    """
    num_samples, channels, _ = a_hat.shape
    size = (num_samples, channels * (channels + 1) // 2) if triu else a_hat.shape
    out = torch.empty(size, device=a_hat.device, dtype=out_dtype)
    with device_guard(a_hat):
        _iterate(_first_state(a_hat, None), iterations, False, out, scale.sqrt(), triu)
    return out


def matrix_sqrt_newton_schulz_bwd(
    grad: torch.Tensor,
    a_hat: torch.Tensor,
    scale: torch.Tensor,
    *,
    iterations: int = 5,
    triu: bool = False,
) -> torch.Tensor:
    """Gradient (N, C, C) float32, with respect to A, of :func:`matrix_sqrt_newton_schulz_fwd`.

    grad: (N, C, C), or (N, C(C+1)/2) with ``triu``, any strides and dtype; Â and s as given
    to the forward. Runs the iteration again beside its tangent along E = (G + Gᵀ)/2.
    """
    num_samples, channels, _ = a_hat.shape
    grad = grad.to(torch.float32)
    if triu:
        rows, cols = torch.triu_indices(channels, channels, device=a_hat.device)
        full = grad.new_zeros((num_samples, channels, channels))
        full[:, rows, cols] = grad
        grad = full
    tangent = (grad + grad.transpose(1, 2)).mul_(0.5)
    state = _first_state(a_hat, tangent)
    last = torch.empty_like(state)
    with device_guard(a_hat):
        _iterate(state, iterations, True, last)
    root, grad_a = last[:, 0], last[:, 2]
    # The trace: s enters Â = S/s and the factor √s.
    trace_term = torch.linalg.vecdot(tangent.flatten(1), root.flatten(1)) / 2
    trace_term -= torch.linalg.vecdot(grad_a.flatten(1), a_hat.flatten(1))
    grad_a.diagonal(dim1=1, dim2=2).add_(trace_term.unsqueeze(1))
    return grad_a.div_(scale.sqrt().view(-1, 1, 1))
