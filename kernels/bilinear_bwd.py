"""Backward of the bilinear pool: one GEMM whose left operand is formed while it is loaded.

With the descriptor z, its gradient g and two per-sample scalars (projection p, scale k; see
``bcnn_triton.ops.coefficients``), the Gram gradient is dG = (g − p·z)·k / |z| (0 where z = 0;
no division without the signed square root). ``_bilinear_pool_bwd_kernel`` computes
``result = M·V`` tile by tile, building each tile of M from g and z in registers, never in
global memory:

- one stream:  M = dG + dGᵀ = (g + gᵀ − 2p·z)·k/|z| (z is symmetric), V = X  → dX;
- two streams: M = dG, V = Y → dX, and M = dGᵀ, V = X → dY (the same kernel, the descriptor
  read through swapped strides).

With ``triu`` the descriptor holds each pair (i, j), (j, i) once, scaled by w = sqrt(2) off the
diagonal: z = out/w and the pair's gradient sum g + gᵀ is w·g (2·g on the diagonal).
``_rowwise_dot_kernel`` gives ⟨z, g⟩ per sample, needed for p, in deterministic partial sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .bilinear_fwd import SQRT2
from .common import INTERPRETER, dot_input_precision

__all__ = ["bilinear_pool_bwd", "rowwise_dot"]


def _bwd_configs() -> list[triton.Config]:
    if INTERPRETER:
        return [triton.Config({"BLOCK_A": 32, "BLOCK_B": 32, "BLOCK_L": 32}, num_warps=4)]
    return [
        triton.Config(
            {"BLOCK_A": block_a, "BLOCK_B": block_b, "BLOCK_L": block_l},
            num_warps=warps,
            num_stages=stages,
        )
        for block_a, block_b, block_l, warps, stages in ((128, 32, 128, 8, 3), (64, 32, 64, 4, 4))
    ]


@triton.autotune(
    configs=_bwd_configs(),
    key=["A_DIM", "B_DIM", "L", "SELF", "SIGNED_SQRT", "TRIU", "INPUT_PRECISION"],
)
@triton.jit
def _bilinear_pool_bwd_kernel(
    # pointers: descriptor gradient and descriptor (N, D); operand V (N, B_DIM, L);
    # result (N, A_DIM, L); per-sample projection and scale (N,), float32
    grad_ptr,
    out_ptr,
    v_ptr,
    result_ptr,
    projection_ptr,
    scale_ptr,
    # sizes
    A_DIM,
    B_DIM,
    L,
    # strides, in elements. Entry (a, b) of M sits at a·stride_ma + b·stride_mb of a dense
    # descriptor row: (Cy, 1) for dX, (1, Cy) for dY; unused with TRIU.
    stride_gradn,
    stride_gradd,
    stride_outn,
    stride_ma,
    stride_mb,
    stride_vn,
    stride_vc,
    stride_vl,
    stride_resn,
    stride_resc,
    stride_resl,
    # meta-parameters
    SELF: tl.constexpr,
    SIGNED_SQRT: tl.constexpr,
    TRIU: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    # Sample-major order; inside a sample, consecutive programs share a row panel of M.
    pid = tl.program_id(0)
    num_a = tl.cdiv(A_DIM, BLOCK_A)
    num_l = tl.cdiv(L, BLOCK_L)
    n = (pid // (num_a * num_l)).to(tl.int64)
    tile = pid % (num_a * num_l)
    pid_a = tile // num_l
    pid_l = tile % num_l

    offs_a = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    rows = offs_a[:, None]
    mask_a = rows < A_DIM
    mask_l = offs_l[None, :] < L
    projection = tl.load(projection_ptr + n)
    scale = tl.load(scale_ptr + n)
    grad_base = grad_ptr + n * stride_gradn
    out_base = out_ptr + n * stride_outn

    acc = tl.zeros((BLOCK_A, BLOCK_L), dtype=tl.float32)
    for b_start in range(0, B_DIM, BLOCK_B):
        offs_b = b_start + tl.arange(0, BLOCK_B)
        cols = offs_b[None, :]
        mask = mask_a & (cols < B_DIM)
        if TRIU:
            low = tl.minimum(rows, cols)
            high = tl.maximum(rows, cols)
            entry = low * (2 * B_DIM - low - 1) // 2 + high
            on_diagonal = rows == cols
            g = tl.load(grad_base + entry * stride_gradd, mask=mask, other=0.0).to(tl.float32)
            z = tl.load(out_base + entry, mask=mask, other=0.0).to(tl.float32)
            z = tl.where(on_diagonal, z, z / SQRT2)
            numer = tl.where(on_diagonal, 2.0 * g, SQRT2 * g) - 2.0 * projection * z
        else:
            entry = rows * stride_ma + cols * stride_mb
            g = tl.load(grad_base + entry * stride_gradd, mask=mask, other=0.0).to(tl.float32)
            z = tl.load(out_base + entry, mask=mask, other=0.0).to(tl.float32)
            if SELF:
                mirror = cols * stride_ma + rows * stride_mb
                g_mirror = tl.load(grad_base + mirror * stride_gradd, mask=mask, other=0.0)
                numer = g + g_mirror.to(tl.float32) - 2.0 * projection * z
            else:
                numer = g - projection * z
        if SIGNED_SQRT:
            # sign(G) = 0 where z = 0: no gradient there (padding lands here too).
            numer = tl.where(z == 0, 0.0, numer / tl.abs(z))
        m = (numer * scale).to(v_ptr.dtype.element_ty)
        v = tl.load(
            v_ptr + n * stride_vn + offs_b[:, None] * stride_vc + offs_l[None, :] * stride_vl,
            mask=(offs_b[:, None] < B_DIM) & mask_l,
            other=0.0,
        )
        acc = tl.dot(m, v, acc, input_precision=INPUT_PRECISION)

    result = result_ptr + n * stride_resn + rows * stride_resc + offs_l[None, :] * stride_resl
    tl.store(result, acc.to(result_ptr.dtype.element_ty), mask=mask_a & mask_l)


@triton.jit
def _rowwise_dot_kernel(
    # pointers: two (N, D) tensors, partial sums (N, cdiv(D, BLOCK)), float32
    a_ptr,
    b_ptr,
    partial_ptr,
    # sizes and strides
    D,
    stride_an,
    stride_ad,
    stride_bn,
    stride_bd,
    # meta-parameters
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    chunks = tl.cdiv(D, BLOCK)
    n = (pid // chunks).to(tl.int64)
    offs = (pid % chunks) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    a = tl.load(a_ptr + n * stride_an + offs * stride_ad, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + n * stride_bn + offs * stride_bd, mask=mask, other=0.0).to(tl.float32)
    tl.store(partial_ptr + pid, tl.sum(a * b, axis=0))


def rowwise_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row dot product of two (N, D) tensors (any strides), accumulated in float32: (N,).

    Deterministic: fixed-size partial sums, reduced in a fixed order.
    """
    num_rows, size = a.shape
    block = 4096
    chunks = triton.cdiv(size, block)
    partial = torch.empty((num_rows, chunks), device=a.device, dtype=torch.float32)
    _rowwise_dot_kernel[(num_rows * chunks,)](
        a,
        b,
        partial,
        size,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        BLOCK=block,
    )
    return partial.sum(dim=1)


def _launch_bwd(
    grad, out, operand, result, projection, scale, m_strides, single, signed_sqrt, triu
):
    num_samples, rows, locations = result.shape

    def grid(meta):
        return (
            num_samples
            * triton.cdiv(rows, meta["BLOCK_A"])
            * triton.cdiv(locations, meta["BLOCK_L"]),
        )

    _bilinear_pool_bwd_kernel[grid](
        grad,
        out,
        operand,
        result,
        projection,
        scale,
        rows,
        operand.shape[1],
        locations,
        grad.stride(0),
        grad.stride(1),
        out.stride(0),
        m_strides[0],
        m_strides[1],
        operand.stride(0),
        operand.stride(1),
        operand.stride(2),
        result.stride(0),
        result.stride(1),
        result.stride(2),
        SELF=single,
        SIGNED_SQRT=signed_sqrt,
        TRIU=triu,
        INPUT_PRECISION=dot_input_precision(operand.dtype),
    )


def bilinear_pool_bwd(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor | None,
    out: torch.Tensor,
    projection: torch.Tensor,
    scale: torch.Tensor,
    *,
    signed_sqrt: bool = True,
    triu: bool = False,
    needs_dx: bool = True,
    needs_dy: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients (dx, dy) of the bilinear pool; dy is None without a second stream.

    grad (N, D) any strides; x (N, Cx, L), y (N, Cy, L) or None, any strides; out (N, D) the
    contiguous descriptor of the forward pass; projection, scale (N,) per-sample scalars with the
    1/L of the Gram folded into scale. dx and dy keep the strides of x and y where they are
    dense (a channels_last map gets a channels_last gradient).
    """
    projection = projection.to(torch.float32).contiguous()
    scale = scale.to(torch.float32).contiguous()
    channels_y = x.shape[1] if y is None else y.shape[1]
    dense = (channels_y, 1)
    if y is None:
        dx = torch.empty_like(x)
        _launch_bwd(grad, out, x, dx, projection, scale, dense, True, signed_sqrt, triu)
        return dx, None
    dx = dy = None
    if needs_dx:
        dx = torch.empty_like(x)
        _launch_bwd(grad, out, y, dx, projection, scale, dense, False, signed_sqrt, False)
    if needs_dy:
        dy = torch.empty_like(y)
        transposed = (1, channels_y)
        _launch_bwd(grad, out, x, dy, projection, scale, transposed, False, signed_sqrt, False)
    return dx, dy
