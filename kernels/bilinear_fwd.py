"""Forward of the bilinear pool: a tiled Gram with the signed square root fused in its epilogue.

``_bilinear_pool_fwd_kernel`` computes one (BLOCK_C × BLOCK_C) tile of G = X·Yᵀ/L per program
with a float32 accumulator. With one stream only tiles on or above the diagonal do work and each
stores its mirror too: half the FLOPs. The constexpr ``PHASE`` says what a launch does with the
tile (``PHASES``):

- "store": store the tile (signed square root applied) into the descriptor — no normalization;
- "sumsq": only write the tile's Σs² into a per-sample table of SLOT×SLOT cells (independent of
  the autotuned tile size, so the norm is summed in one fixed order: deterministic, no atomics);
- "stage": both — write the Σs² and store the tile, not yet divided;
- "divide": sum the sample's table first and store the tile divided by the norm.

L2 normalization needs every tile of a sample before any can be divided. Two ways, chosen per
dtype by ``bilinear_pool_fwd``:

- "stage": one "stage" launch into a float32 buffer (the output itself for float32), then
  ``_normalize_rows_kernel`` divides it — one extra pass over the descriptor;
- "recompute": a "sumsq" launch, then a "divide" launch — the Gram is computed twice (tensor
  cores make that cheap in half precision) and the 16-bit output rounds once.

Centring (``CENTER``) uses the identity cov(X) = (X − s)(X − s)ᵀ/L − δδᵀ, exact for any shift
s with δ = mean(X − s): ``_channel_shift_kernel`` picks s per channel and the Gram kernel
subtracts s while loading and δδᵀ in its epilogue. Subtracting the mean while loading rounds the
centred values back to the input dtype, a floor of 2⁻¹¹ (float16) or 2⁻⁹ (bfloat16) of the
spread; the correction δδᵀ alone (s = 0) keeps the 16-bit operands exact but cancels in float32
as (mean/spread)². So float32 maps always shift by the mean; 16-bit maps shift only channels
whose mean exceeds 8 standard deviations, and correct the others in the epilogue — torch's
float32 precision for ordinary (post-ReLU) features, and the input dtype's for extreme means.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .common import (
    INTERPRETER,
    aligned_rows,
    batch_bucket,
    device_guard,
    dot_input_precision,
    pipeline_shared_memory,
    shared_memory_pruner,
)

__all__ = [
    "NORM_STRATEGIES",
    "PHASES",
    "SHIFT_RATIO",
    "SLOT",
    "SQRT2",
    "bilinear_pool_fwd",
    "channel_means",
    "channel_shifts",
    "fwd_shared_memory",
]

SQRT2 = tl.constexpr(math.sqrt(2.0))

#: Side of the cells of the per-sample Σs² table; every tile size is a multiple of it.
SLOT = 16

#: How the forward normalizes (see the module docstring); ``None`` picks per dtype.
NORM_STRATEGIES = ("stage", "recompute")

#: What one launch of the Gram kernel does with its tile (the ``PHASE`` constexpr; see the
#: module docstring).
PHASES = ("store", "sumsq", "stage", "divide")

#: 16-bit channels with mean² > SHIFT_RATIO² · variance are shifted by their mean on load.
SHIFT_RATIO = 8.0


def _fwd_configs() -> list[triton.Config]:
    if INTERPRETER:
        # The interpreter runs programs one by one in numpy: one config, tiles still small
        # enough that tests get several tiles and masked edges out of small shapes.
        return [triton.Config({"BLOCK_C": 32, "BLOCK_K": 32, "GROUP": 2}, num_warps=4)]
    return [
        triton.Config(
            {"BLOCK_C": block_c, "BLOCK_K": block_k, "GROUP": 4}, num_warps=warps, num_stages=stages
        )
        # Starting points until a GPU sweep (bench/tune_kernels.py) picks the list; the last
        # one fits the 99 KiB of shared memory of consumer GPUs in float32.
        for block_c, block_k, warps, stages in (
            (128, 64, 8, 3),
            (128, 32, 8, 4),
            (64, 32, 4, 3),
        )
    ]


def fwd_shared_memory(config: triton.Config, args: dict, arch: str | None = None) -> int:
    """Upper bound of the forward's shared memory for ``config`` on the target ``arch``: the
    operand pipeline (``pipeline_shared_memory``; centring shifts the operands in registers),
    or a float32 tile for the epilogue's transposes, which reuses it (the compile test checks
    that this bounds what Triton allocates)."""
    block_c, block_k = config.kwargs["BLOCK_C"], config.kwargs["BLOCK_K"]
    operand_bytes = args["x_ptr"].element_size()
    pipeline = pipeline_shared_memory(
        config.num_stages,
        2 * block_c * block_k * operand_bytes,
        arch,
        element_size=operand_bytes,
        through_registers=bool(args.get("CENTER", False)),
    )
    return max(pipeline, block_c * block_c * 4)


@triton.autotune(
    configs=_fwd_configs(),
    key=[
        "C_X",
        "C_Y",
        "L",
        "BATCH_BUCKET",
        "stride_xc",
        "stride_xl",
        "SELF",
        "SIGNED_SQRT",
        "TRIU",
        "CENTER",
        "PHASE",
        "INPUT_PRECISION",
    ],
    prune_configs_by={"early_config_prune": shared_memory_pruner(fwd_shared_memory, "x_ptr")},
)
# BATCH_BUCKET only keys the autotuner: not specialized, so it never causes a recompile.
@triton.jit(do_not_specialize=["BATCH_BUCKET"])
def _bilinear_pool_fwd_kernel(
    # pointers: feature maps (N, C_X, L) and (N, C_Y, L); per-channel shifts s and residual
    # means δ (N, C_X) and (N, C_Y), float32 (read only with CENTER); descriptor (N, D); Σs²
    # table (N, cdiv(C_X, SLOT), cdiv(C_Y, SLOT)), float32; norms (N,), float32 (with DIVIDE)
    x_ptr,
    y_ptr,
    shift_x_ptr,
    shift_y_ptr,
    residual_x_ptr,
    residual_y_ptr,
    out_ptr,
    sumsq_ptr,
    norm_ptr,
    # sizes; BATCH_BUCKET only keys the autotuner
    C_X,
    C_Y,
    L,
    BATCH_BUCKET,
    # strides, in elements
    stride_xn,
    stride_xc,
    stride_xl,
    stride_yn,
    stride_yc,
    stride_yl,
    stride_outn,
    stride_sumsqn,
    # epilogue scalars
    inv_locations,
    eps,
    norm_eps,
    # meta-parameters
    SELF: tl.constexpr,
    SIGNED_SQRT: tl.constexpr,
    TRIU: tl.constexpr,
    CENTER: tl.constexpr,
    PHASE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    SLOT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP: tl.constexpr,
):
    tl.static_assert(BLOCK_C % SLOT == 0)
    tl.static_assert(BLOCK_C // SLOT >= 2)
    SUMSQ: tl.constexpr = (PHASE == "sumsq") or (PHASE == "stage")
    STORE: tl.constexpr = PHASE != "sumsq"
    DIVIDE: tl.constexpr = PHASE == "divide"
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
    table_cols = tl.cdiv(C_Y, SLOT)
    cell_ptrs = sumsq_ptr + n * stride_sumsqn + cell_rows[:, None] * table_cols + cell_cols[None, :]
    cell_mask = (cell_rows[:, None] < tl.cdiv(C_X, SLOT)) & (cell_cols[None, :] < table_cols)
    leading_cell = (cell[:, None] == 0) & (cell[None, :] == 0)

    if SELF:
        if pid_m > pid_n:
            # Below the diagonal: the mirror of tile (pid_n, pid_m) covers it.
            if SUMSQ:
                empty = tl.zeros((BLOCK_C // SLOT, BLOCK_C // SLOT), tl.float32)
                tl.store(cell_ptrs, empty, mask=cell_mask)
            return

    offs_m = pid_m * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_n = pid_n * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = offs_m < C_X
    mask_n = offs_n < C_Y
    x_base = x_ptr + n * stride_xn
    y_base = y_ptr + n * stride_yn
    shift_m = tl.zeros((BLOCK_C,), dtype=tl.float32)
    shift_n = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if CENTER:
        shift_m = tl.load(shift_x_ptr + n * C_X + offs_m, mask=mask_m, other=0.0)
        shift_n = tl.load(shift_y_ptr + n * C_Y + offs_n, mask=mask_n, other=0.0)
    if CENTER and tl.max(tl.abs(shift_m), axis=0) + tl.max(tl.abs(shift_n), axis=0) > 0:
        # Shifting on load takes the operands through registers (about 3.5× the instructions
        # per step on sm_90); tiles without a shifted channel — all of them for 16-bit maps
        # of ordinary features — keep the direct path below.
        gram = _gram_tile(
            x_base, y_base, shift_m, shift_n, offs_m, offs_n, mask_m, mask_n, L,
            stride_xc, stride_xl, stride_yc, stride_yl, True, INPUT_PRECISION, BLOCK_C, BLOCK_K,
        )  # fmt: skip
    else:
        gram = _gram_tile(
            x_base, y_base, shift_m, shift_n, offs_m, offs_n, mask_m, mask_n, L,
            stride_xc, stride_xl, stride_yc, stride_yl, False, INPUT_PRECISION, BLOCK_C, BLOCK_K,
        )  # fmt: skip

    # Epilogue on the float32 accumulator; padded rows and columns hold G = 0 exactly.
    gram = gram * inv_locations
    if CENTER:
        residual_m = tl.load(residual_x_ptr + n * C_X + offs_m, mask=mask_m, other=0.0)
        residual_n = tl.load(residual_y_ptr + n * C_Y + offs_n, mask=mask_n, other=0.0)
        gram = gram - residual_m[:, None] * residual_n[None, :]
    if SIGNED_SQRT:
        root = tl.sqrt(tl.abs(gram) + eps)
        # sign(0) = 0; a NaN fails both tests and keeps its NaN root.
        desc = tl.where(gram == 0, 0.0, tl.where(gram < 0, -root, root))
    else:
        desc = gram
    if SELF:
        # A diagonal tile is made exactly symmetric (the backward reads z[i, j] for z[j, i]).
        on_diagonal = pid_m == pid_n
        desc = tl.where(on_diagonal & (offs_m[:, None] > offs_n[None, :]), tl.trans(desc), desc)
    if SUMSQ:
        # An off-diagonal tile's squares count twice in the single-stream case: once more for
        # its mirror. One reduction over the whole tile: Triton 3.6 cannot lower a sum of row
        # sums of a tensor-memory accumulator for sm_100 ("parent layout must have at least
        # rank >= 2" in TritonNvidiaGPUOptimizeTMemLayoutsPass).
        tile_sumsq = tl.sum(desc * desc)
        if SELF:
            tile_sumsq = tl.where(pid_m == pid_n, tile_sumsq, 2.0 * tile_sumsq)
        tl.store(cell_ptrs, tl.where(leading_cell, tile_sumsq, 0.0), mask=cell_mask)
    if STORE:
        if DIVIDE:
            norm = tl.sqrt(
                _table_sum(sumsq_ptr + n * stride_sumsqn, tl.cdiv(C_X, SLOT) * table_cols)
            )
            if tile == 0:
                tl.store(norm_ptr + n, norm)
            desc = desc / tl.maximum(norm, norm_eps, propagate_nan=tl.PropagateNan.ALL)
        _store_tile(
            out_ptr + n * stride_outn, desc, offs_m, offs_n, mask_m, mask_n, pid_m, pid_n, C_X, C_Y,
            SELF, TRIU,
        )  # fmt: skip


@triton.jit
def _gram_tile(
    x_base,
    y_base,
    shift_m,
    shift_n,
    offs_m,
    offs_n,
    mask_m,
    mask_n,
    L,
    stride_xc,
    stride_xl,
    stride_yc,
    stride_yl,
    SHIFT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Σ_l x[m, l]·y[n, l] over one tile, float32 (x and y shifted first with SHIFT)."""
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_base + offs_m[:, None] * stride_xc + offs_k[None, :] * stride_xl
    y_ptrs = y_base + offs_k[:, None] * stride_yl + offs_n[None, :] * stride_yc
    acc = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32)
    for k_start in range(0, L, BLOCK_K):
        in_k = offs_k < L - k_start
        a = tl.load(x_ptrs, mask=mask_m[:, None] & in_k[None, :], other=0.0)
        b = tl.load(y_ptrs, mask=in_k[:, None] & mask_n[None, :], other=0.0)
        if SHIFT:
            # Exactly as _channel_shift_kernel rounds them when it sums δ; padding stays 0.
            a = _shifted(a, shift_m[:, None], in_k[None, :])
            b = _shifted(b, shift_n[None, :], in_k[:, None])
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K * stride_xl
        y_ptrs += BLOCK_K * stride_yl
    return acc


@triton.jit
def _shifted(values, shift, keep):
    """values − shift, computed in float32 and rounded back to the values' dtype; 0 off ``keep``."""
    return tl.where(keep, values.to(tl.float32) - shift, 0.0).to(values.dtype)


@triton.jit
def _channel_shift_kernel(
    # pointers: feature map (N, C, L); shifts s and residual means δ (N, C), float32 (written)
    x_ptr,
    shift_ptr,
    residual_ptr,
    # sizes and strides
    C,
    L,
    stride_xn,
    stride_xc,
    stride_xl,
    # scalars
    shift_ratio_sq,
    # meta-parameters
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Per channel: s = its mean where mean² > shift_ratio_sq·variance (else 0), and
    δ = mean(round(x − s)), with the rounding the Gram kernel applies."""
    pid = tl.program_id(0)
    num_c = tl.cdiv(C, BLOCK_C)
    n = (pid // num_c).to(tl.int64)
    offs_c = (pid % num_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_l = tl.arange(0, BLOCK_L)
    mask_c = offs_c < C
    base = x_ptr + n * stride_xn + offs_c[:, None] * stride_xc
    total = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    total_sq = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    for start in range(0, L, BLOCK_L):
        mask = mask_c[:, None] & (start + offs_l[None, :] < L)
        x = tl.load(base + (start + offs_l[None, :]) * stride_xl, mask=mask, other=0.0)
        x = x.to(tl.float32)
        total += x
        total_sq += x * x
    mean = tl.sum(total, axis=1) / L
    variance = tl.maximum(tl.sum(total_sq, axis=1) / L - mean * mean, 0.0)
    shift = tl.where(mean * mean > shift_ratio_sq * variance, mean, 0.0)
    residual = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
    for start in range(0, L, BLOCK_L):
        keep = start + offs_l[None, :] < L
        x = tl.load(base + (start + offs_l[None, :]) * stride_xl, mask=mask_c[:, None] & keep)
        residual += _shifted(x, shift[:, None], keep).to(tl.float32)
    tl.store(shift_ptr + n * C + offs_c, shift, mask=mask_c)
    tl.store(residual_ptr + n * C + offs_c, tl.sum(residual, axis=1) / L, mask=mask_c)


def channel_shifts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifts s and residual means δ (N, C), float32, of a map x (N, C, L) for centring: the
    covariance of x is (x − s)(x − s)ᵀ/L − δδᵀ (see the module docstring)."""
    num_samples, channels, locations = x.shape
    shift = torch.empty((2, num_samples, channels), device=x.device, dtype=torch.float32)
    # float32 always shifts by the mean (ratio 0); 16-bit only beyond SHIFT_RATIO.
    ratio = 0.0 if x.dtype == torch.float32 else SHIFT_RATIO
    block_c = 32
    _channel_shift_kernel[(num_samples * triton.cdiv(channels, block_c),)](
        x, shift[0], shift[1], channels, locations, x.stride(0), x.stride(1), x.stride(2),
        ratio * ratio, BLOCK_C=block_c, BLOCK_L=64,
    )  # fmt: skip
    return shift[0], shift[1]


def channel_means(x: torch.Tensor) -> torch.Tensor:
    """Per-channel means (N, C), float32, of a map x (N, C, L), summed as the Gram kernel sees
    the values: mean = s + δ, the shift plus the mean of what remains after it."""
    shift, residual = channel_shifts(x)
    return shift + residual


@triton.jit
def _table_sum(table_base, cells):
    """Σ of one sample's Σs² table, in a fixed order: every program gets the same norm."""
    offs = tl.arange(0, 1024)
    total = tl.zeros((1024,), dtype=tl.float32)
    for start in range(0, cells, 1024):
        total += tl.load(table_base + start + offs, mask=start + offs < cells, other=0.0)
    return tl.sum(total, axis=0)


@triton.jit
def _store_tile(
    out_base, desc, offs_m, offs_n, mask_m, mask_n, pid_m, pid_n, C_X, C_Y,
    SELF: tl.constexpr, TRIU: tl.constexpr,
):  # fmt: skip
    """Store a descriptor tile: dense (and its mirror for one stream), or the upper triangle."""
    out_dtype = out_base.dtype.element_ty
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
                tl.store(
                    mirror, tl.trans(desc).to(out_dtype), mask=mask_n[:, None] & mask_m[None, :]
                )


@triton.jit
def _normalize_rows_kernel(
    # pointers: source and destination (N, D) (may be the same); Σs² table (N, CELLS), float32;
    # norms (N,), float32 (written)
    src_ptr,
    dst_ptr,
    sumsq_ptr,
    norm_ptr,
    # sizes and strides
    D,
    CELLS,
    stride_srcn,
    stride_dstn,
    # scalars
    norm_eps,
    # meta-parameters
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    chunks = tl.cdiv(D, BLOCK)
    n = (pid // chunks).to(tl.int64)
    chunk = pid % chunks
    norm = tl.sqrt(_table_sum(sumsq_ptr + n * CELLS, CELLS))
    if chunk == 0:
        tl.store(norm_ptr + n, norm)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    value = tl.load(src_ptr + n * stride_srcn + offs, mask=mask).to(tl.float32)
    value = value / tl.maximum(norm, norm_eps, propagate_nan=tl.PropagateNan.ALL)
    tl.store(dst_ptr + n * stride_dstn + offs, value.to(dst_ptr.dtype.element_ty), mask=mask)


def _default_strategy(dtype: torch.dtype) -> str:
    # float32 stages in the output itself (one rounding either way); 16-bit outputs recompute
    # the Gram rather than round twice or write a float32 stage twice their size.
    return "stage" if dtype == torch.float32 else "recompute"


def bilinear_pool_fwd(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    signed_sqrt: bool = True,
    normalize: bool = True,
    eps: float = 1e-10,
    triu: bool = False,
    center: bool = False,
    norm_eps: float = 1e-12,
    norm_strategy: str | None = None,
    align_rows: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """B-CNN descriptor of x (N, Cx, L) with y (N, Cy, L), or with itself when y is None.

    Returns ``(out, norm)``: out (N, Cx·Cy), or (N, C(C+1)/2) with ``triu``, in x's dtype;
    norm (N,) float32, the L2 norm of each sample's descriptor before normalization (an
    empty (0,) tensor unless ``normalize``). Normalization divides by max(norm, norm_eps),
    as ``torch.nn.functional.normalize`` does. ``center`` subtracts each channel's mean over
    the L locations first (covariance). Inputs may have any strides. ``norm_strategy``
    ("stage" / "recompute", see the module docstring) and ``align_rows`` (copy maps whose rows
    are not 16-byte aligned, see ``aligned_rows``) exist for benchmarks; the defaults are the
    measured choices.

    Example:
        >>> x = torch.rand(4, 512, 784, device="cuda", dtype=torch.bfloat16)
        >>> out, norm = bilinear_pool_fwd(x)   # out: (4, 262144) bfloat16, norm: (4,) float32
    """
    with device_guard(x):
        return _forward(
            x, y, signed_sqrt, normalize, eps, triu, center, norm_eps,
            norm_strategy or _default_strategy(x.dtype), align_rows,
        )  # fmt: skip


def _forward(x, y, signed_sqrt, normalize, eps, triu, center, norm_eps, strategy, align_rows):
    if strategy not in NORM_STRATEGIES:
        raise ValueError(f"norm_strategy must be one of {NORM_STRATEGIES}; got {strategy!r}")
    num_samples, channels_x, locations = x.shape
    single = y is None
    if align_rows:
        x = aligned_rows(x)
        y = None if single else aligned_rows(y)
    y = x if single else y
    channels_y = y.shape[1]
    size = channels_x * (channels_x + 1) // 2 if triu else channels_x * channels_y
    device = x.device
    out = torch.empty((num_samples, size), device=device, dtype=x.dtype)
    cells = triton.cdiv(channels_x, SLOT) * triton.cdiv(channels_y, SLOT)
    sumsq = torch.empty((num_samples, cells), device=device, dtype=torch.float32)
    norm = torch.empty(num_samples if normalize else 0, device=device, dtype=torch.float32)
    # Placeholders for pointers a launch never reads must still be real (non-empty) tensors.
    norm_arg = norm if normalize else sumsq
    if center:
        shift_x, residual_x = channel_shifts(x)
        shift_y, residual_y = (shift_x, residual_x) if single else channel_shifts(y)
    else:
        shift_x = residual_x = shift_y = residual_y = sumsq  # never read

    def launch(target, phase):
        def grid(meta):
            block = meta["BLOCK_C"]
            return (num_samples * triton.cdiv(channels_x, block) * triton.cdiv(channels_y, block),)

        _bilinear_pool_fwd_kernel[grid](
            x, y, shift_x, shift_y, residual_x, residual_y, target, sumsq, norm_arg,
            channels_x, channels_y, locations, batch_bucket(num_samples),
            x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
            target.stride(0), sumsq.stride(0),
            1.0 / locations, eps, norm_eps,
            SELF=single, SIGNED_SQRT=signed_sqrt, TRIU=triu, CENTER=center, PHASE=phase,
            INPUT_PRECISION=dot_input_precision(x.dtype, device), SLOT=SLOT,
        )  # fmt: skip

    if not normalize:
        launch(out, "store")
    elif strategy == "recompute":
        launch(out, "sumsq")
        launch(out, "divide")
    else:
        stage = out if x.dtype == torch.float32 else torch.empty_like(out, dtype=torch.float32)
        launch(stage, "stage")
        block = 4096
        _normalize_rows_kernel[(num_samples * triton.cdiv(size, block),)](
            stage, out, sumsq, norm, size, cells, stage.stride(0), out.stride(0), norm_eps,
            BLOCK=block,
        )  # fmt: skip
    return out, norm
