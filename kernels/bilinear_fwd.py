"""Forward of the bilinear pool: tiled Gram, fused signed-sqrt epilogue, then a scaling pass.

``_bilinear_pool_fwd_kernel`` computes one (BLOCK_C × BLOCK_C) tile of G = X·Yᵀ/L per program
with a float32 accumulator; the epilogue applies the signed square root, stores the tile in the
descriptor's dtype and writes the tile's Σs² into a per-sample table of partial sums. In the
single-stream case only tiles on or above the diagonal do work, and each stores its mirror too:
half the FLOPs. The partial sums are indexed by SLOT×SLOT cells of the descriptor, so the table
does not depend on the autotuned tile size and is reduced deterministically afterwards.

``_normalize_rows_kernel`` then divides each sample by its norm. A second pass re-reads the
descriptor once; the alternative (handing the consumer the unnormalized descriptor and r) saves
that pass but changes the op's contract — see the README's kernel notes for the trade-off.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .common import INTERPRETER, dot_input_precision

__all__ = ["SLOT", "SQRT2", "bilinear_pool_fwd"]

SQRT2 = tl.constexpr(math.sqrt(2.0))

#: Side of the cells of the per-sample Σs² table; every tile size is a multiple of it.
SLOT = 16


def _fwd_configs() -> list[triton.Config]:
    if INTERPRETER:
        # The interpreter runs programs one by one in numpy: one config, tiles still small
        # enough that tests get several tiles and masked edges out of small shapes.
        return [triton.Config({"BLOCK_C": 32, "BLOCK_K": 32, "GROUP": 2}, num_warps=4)]
    return [
        triton.Config(
            {"BLOCK_C": block_c, "BLOCK_K": block_k, "GROUP": 4}, num_warps=warps, num_stages=stages
        )
        # Two starting points until a GPU run tunes them: both fit float32 tiles in shared
        # memory on sm_80/sm_90, and each costs one compile per dtype/option set.
        for block_c, block_k, warps, stages in ((128, 32, 8, 3), (64, 64, 4, 4))
    ]


@triton.autotune(
    configs=_fwd_configs(),
    key=["C_X", "C_Y", "L", "SELF", "SIGNED_SQRT", "TRIU", "INPUT_PRECISION"],
)
@triton.jit
def _bilinear_pool_fwd_kernel(
    # pointers: feature maps (N, C_X, L) and (N, C_Y, L), descriptor (N, D),
    # Σs² table (N, cdiv(C_X, SLOT), cdiv(C_Y, SLOT)), float32
    x_ptr,
    y_ptr,
    out_ptr,
    sumsq_ptr,
    # sizes
    C_X,
    C_Y,
    L,
    # strides, in elements
    stride_xn,
    stride_xc,
    stride_xl,
    stride_yn,
    stride_yc,
    stride_yl,
    stride_outn,
    stride_sumsqn,
    stride_sumsqr,
    # epilogue scalars
    inv_locations,
    eps,
    # meta-parameters
    SELF: tl.constexpr,
    SIGNED_SQRT: tl.constexpr,
    TRIU: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    SLOT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP: tl.constexpr,
):
    tl.static_assert(BLOCK_C % SLOT == 0)
    tl.static_assert(BLOCK_C // SLOT >= 2)
    # Programs run sample by sample; inside a sample, GROUP row tiles walk the column tiles
    # together so that the column panels they share stay in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(C_X, BLOCK_C)
    num_n = tl.cdiv(C_Y, BLOCK_C)
    n = (pid // (num_m * num_n)).to(tl.int64)
    tile = pid % (num_m * num_n)
    per_group = GROUP * num_n
    first_m = (tile // per_group) * GROUP
    group_rows = tl.minimum(num_m - first_m, GROUP)
    pid_m = first_m + (tile % per_group) % group_rows
    pid_n = (tile % per_group) // group_rows

    # This tile's cells in the Σs² table: the leading cell gets the tile's sum, the others 0,
    # so every cell is written once whatever BLOCK_C the autotuner picked.
    cell = tl.arange(0, BLOCK_C // SLOT)
    cell_rows = pid_m * (BLOCK_C // SLOT) + cell
    cell_cols = pid_n * (BLOCK_C // SLOT) + cell
    cell_ptrs = (
        sumsq_ptr + n * stride_sumsqn + cell_rows[:, None] * stride_sumsqr + cell_cols[None, :]
    )
    cell_mask = (cell_rows[:, None] < tl.cdiv(C_X, SLOT)) & (
        cell_cols[None, :] < tl.cdiv(C_Y, SLOT)
    )
    leading_cell = (cell[:, None] == 0) & (cell[None, :] == 0)

    if SELF:
        if pid_m > pid_n:
            # Below the diagonal: the mirror of tile (pid_n, pid_m) covers it.
            tl.store(
                cell_ptrs, tl.zeros((BLOCK_C // SLOT, BLOCK_C // SLOT), tl.float32), mask=cell_mask
            )
            return

    offs_m = pid_m * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_n = pid_n * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < C_X
    mask_n = offs_n < C_Y
    x_ptrs = x_ptr + n * stride_xn + offs_m[:, None] * stride_xc + offs_k[None, :] * stride_xl
    y_ptrs = y_ptr + n * stride_yn + offs_k[:, None] * stride_yl + offs_n[None, :] * stride_yc
    acc = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32)
    for k_start in range(0, L, BLOCK_K):
        k_left = L - k_start
        a = tl.load(x_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(y_ptrs, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K * stride_xl
        y_ptrs += BLOCK_K * stride_yl

    # Epilogue on the float32 accumulator; padded rows and columns hold G = 0 exactly.
    gram = acc * inv_locations
    if SIGNED_SQRT:
        root = tl.sqrt(tl.abs(gram) + eps)
        # sign(0) = 0; a NaN fails both tests and keeps its NaN root.
        desc = tl.where(gram == 0, 0.0, tl.where(gram < 0, -root, root))
    else:
        desc = gram
    if SELF:
        desc_t = tl.trans(desc)
        on_diagonal = pid_m == pid_n
        # A diagonal tile is made exactly symmetric (the backward reads z[i, j] for z[j, i]);
        # an off-diagonal tile's squares count twice, once more for its mirror.
        desc = tl.where(on_diagonal & (offs_m[:, None] > offs_n[None, :]), desc_t, desc)
        weight = tl.where(on_diagonal, 1.0, 2.0)
    else:
        weight = 1.0
    tile_sumsq = tl.sum(tl.sum(desc * desc, axis=1), axis=0) * weight
    tl.store(cell_ptrs, tl.where(leading_cell, tile_sumsq, 0.0), mask=cell_mask)

    out_dtype = out_ptr.dtype.element_ty
    out_base = out_ptr + n * stride_outn
    if TRIU:
        # Row-major upper triangle: entry (i, j), i <= j, sits at i·(2C − i − 1)/2 + j;
        # off-diagonal entries carry sqrt(2) for the mirror they stand for.
        rows = offs_m[:, None]
        cols = offs_n[None, :]
        entry = rows * (2 * C_X - rows - 1) // 2 + cols
        value = tl.where(rows == cols, desc, desc * SQRT2)
        tl.store(out_base + entry, value.to(out_dtype), mask=(rows <= cols) & (cols < C_X))
    else:
        tile_mask = mask_m[:, None] & mask_n[None, :]
        tl.store(
            out_base + offs_m[:, None] * C_Y + offs_n[None, :], desc.to(out_dtype), mask=tile_mask
        )
        if SELF:
            if pid_m != pid_n:
                mirror = out_base + offs_n[:, None] * C_Y + offs_m[None, :]
                tl.store(mirror, desc_t.to(out_dtype), mask=mask_n[:, None] & mask_m[None, :])


@triton.jit
def _normalize_rows_kernel(
    # pointers: source and destination (N, D) (may be the same), clamped norms (N,), float32
    src_ptr,
    dst_ptr,
    denom_ptr,
    # sizes and strides
    D,
    stride_srcn,
    stride_dstn,
    # meta-parameters
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    chunks = tl.cdiv(D, BLOCK)
    n = (pid // chunks).to(tl.int64)
    offs = (pid % chunks) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    denom = tl.load(denom_ptr + n)
    value = tl.load(src_ptr + n * stride_srcn + offs, mask=mask).to(tl.float32)
    tl.store(
        dst_ptr + n * stride_dstn + offs, (value / denom).to(dst_ptr.dtype.element_ty), mask=mask
    )


def bilinear_pool_fwd(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    signed_sqrt: bool = True,
    normalize: bool = True,
    eps: float = 1e-10,
    triu: bool = False,
    norm_eps: float = 1e-12,
) -> tuple[torch.Tensor, torch.Tensor]:
    """B-CNN descriptor of x (N, Cx, L) with y (N, Cy, L), or with itself when y is None.

    Returns ``(out, norm)``: out (N, Cx·Cy), or (N, C(C+1)/2) with ``triu``, in x's dtype;
    norm (N,) float32, the L2 norm of each sample's descriptor before normalization (an
    empty (0,) tensor unless ``normalize``). Normalization divides by max(norm, norm_eps),
    as ``torch.nn.functional.normalize`` does. Inputs may have any strides.

    Example:
        >>> x = torch.rand(4, 512, 784, device="cuda", dtype=torch.bfloat16)
        >>> out, norm = bilinear_pool_fwd(x)   # out: (4, 262144) bfloat16, norm: (4,) float32
    """
    num_samples, channels_x, locations = x.shape
    single = y is None
    y = x if single else y
    channels_y = y.shape[1]
    size = channels_x * (channels_x + 1) // 2 if triu else channels_x * channels_y
    # Unnormalized float16 values must fit float16: the signed square root always does
    # (|s| <= max|x|), a raw Gram may not, so it is staged in float32.
    staged = normalize and not signed_sqrt and x.dtype == torch.float16
    stage = torch.empty(
        (num_samples, size), device=x.device, dtype=torch.float32 if staged else x.dtype
    )
    sumsq = torch.empty(
        (num_samples, triton.cdiv(channels_x, SLOT), triton.cdiv(channels_y, SLOT)),
        device=x.device,
        dtype=torch.float32,
    )

    def grid(meta):
        block = meta["BLOCK_C"]
        return (num_samples * triton.cdiv(channels_x, block) * triton.cdiv(channels_y, block),)

    _bilinear_pool_fwd_kernel[grid](
        x,
        y,
        stage,
        sumsq,
        channels_x,
        channels_y,
        locations,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        y.stride(0),
        y.stride(1),
        y.stride(2),
        stage.stride(0),
        sumsq.stride(0),
        sumsq.stride(1),
        1.0 / locations,
        eps,
        SELF=single,
        SIGNED_SQRT=signed_sqrt,
        TRIU=triu,
        INPUT_PRECISION=dot_input_precision(x.dtype),
        SLOT=SLOT,
    )
    if not normalize:
        return stage, torch.empty(0, device=x.device, dtype=torch.float32)
    norm = sumsq.view(num_samples, -1).sum(dim=1).sqrt_()
    out = torch.empty((num_samples, size), device=x.device, dtype=x.dtype) if staged else stage
    block = 4096
    _normalize_rows_kernel[(num_samples * triton.cdiv(size, block),)](
        stage,
        out,
        norm.clamp_min(norm_eps),
        size,
        stage.stride(0),
        out.stride(0),
        BLOCK=block,
    )
    return out, norm
