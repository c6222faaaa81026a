"""Backward of the bilinear pool: the Gram gradient built once, then one GEMM per stream.

With the descriptor z, its gradient g, the norm r and p = ⟨z, g⟩ (0 without normalization),
the gradient of the Gram is dG = (g − p·z)·k / |z| (0 where z = 0; no division without the
signed square root), where the per-sample scale k is 1/(2r²L), 1/(2L), 1/(rL) or 1/L
(see ``bcnn_triton.ops.coefficients``). Three kernels, no torch arithmetic in between:

- ``_rowwise_dot_kernel``: partial sums of ⟨z, g⟩ per sample (only when normalizing);
- ``_gram_grad_kernel``: M = dG/k once per entry, in registers from g, gᵀ and z — for one stream
  the symmetric M = dG + dGᵀ = (g + gᵀ − 2p·z)/|z|, only tiles on or above the diagonal, each
  stored with its mirror; for two streams M = (g − p·z)/|z|. It sums the partials itself;
- ``_gram_grad_matmul_kernel``: result = k·M·V in float32, k applied to the accumulator — one
  stream: dX = k·M·X; two streams: dX = k·M·Y and dY = k·Mᵀ·X (M read through swapped strides).
  With ``CENTER`` V is centred while it is loaded; the centring's own Jacobian adds nothing,
  because the rows of a centred map sum to zero.

k stays out of M because it is tiny (about 1e-8 at C = 512, L = 784): folded into a float16 M it
would flush realistic gradients to zero. M is kept in bfloat16 for bfloat16 maps (its range is
float32's) and in float32 otherwise; float16 maps then run the GEMM in TF32, whose 10-bit
mantissa equals float16's, with float32's range (IEEE float32 on GPUs without TF32: gfx90a,
gfx950).

With ``triu`` the descriptor holds each pair (i, j), (j, i) once, scaled by w = sqrt(2) off the
diagonal: z = out/w and the pair's gradient sum g + gᵀ is w·g (2·g on the diagonal).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .bilinear_fwd import SQRT2, channel_means
from .common import (
    INTERPRETER,
    aligned_rows,
    batch_bucket,
    device_guard,
    dot_input_precision,
    pipeline_shared_memory,
    shared_memory_pruner,
)

__all__ = ["bilinear_pool_bwd", "matmul_shared_memory"]

# Tile side of the elementwise kernel that builds M (a transpose per tile, no tensor cores).
_GRAD_BLOCK = 32 if INTERPRETER else 64
# Width of the ⟨z, g⟩ partial sums.
_DOT_BLOCK = 4096


def _matmul_configs() -> list[triton.Config]:
    if INTERPRETER:
        return [triton.Config({"BLOCK_A": 32, "BLOCK_B": 32, "BLOCK_L": 32}, num_warps=4)]
    return [
        triton.Config(
            {"BLOCK_A": block_a, "BLOCK_B": block_b, "BLOCK_L": block_l},
            num_warps=warps,
            num_stages=stages,
        )
        # Starting points until a GPU sweep (bench/tune_kernels.py) picks the list; the last
        # one fits the 99 KiB of shared memory of consumer GPUs in float32.
        for block_a, block_b, block_l, warps, stages in (
            (128, 64, 128, 8, 3),
            (128, 32, 128, 8, 4),
            (64, 32, 64, 4, 3),
        )
    ]


def _gram_grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of M for maps of ``dtype``: bfloat16 stays, float16 and float32 use float32."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def matmul_shared_memory(config: triton.Config, args: dict, arch: str | None = None) -> int:
    """Upper bound of the GEMM's shared memory for ``config`` on the target ``arch``: the
    pipeline of both operands, each counted at M's element size (``pipeline_shared_memory``;
    centring V passes it through registers and pipelines V's float32 channel means along),
    or a float32 result tile, which reuses it (the compile test checks that this bounds what
    Triton allocates)."""
    block_a, block_b, block_l = (config.kwargs[k] for k in ("BLOCK_A", "BLOCK_B", "BLOCK_L"))
    operand_bytes = args["m_ptr"].element_size()
    center = bool(args.get("CENTER", False))
    pipeline = pipeline_shared_memory(
        config.num_stages,
        (block_a * block_b + block_b * block_l) * operand_bytes,
        arch,
        element_size=operand_bytes,
        through_registers=center,
    )
    means = config.num_stages * block_b * 4 if center else 0
    return max(pipeline + means, block_a * block_l * 4)


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


def _partial_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Partial sums (N, cdiv(D, _DOT_BLOCK)) of the per-row dot products of two (N, D) tensors
    (any strides), float32; ``_gram_grad_kernel`` adds them up in a fixed order."""
    num_rows, size = a.shape
    chunks = triton.cdiv(size, _DOT_BLOCK)
    partial = torch.empty((num_rows, chunks), device=a.device, dtype=torch.float32)
    _rowwise_dot_kernel[(num_rows * chunks,)](
        a, b, partial, size, a.stride(0), a.stride(1), b.stride(0), b.stride(1), BLOCK=_DOT_BLOCK
    )
    return partial


@triton.jit
def _gram_grad_kernel(
    # pointers: descriptor gradient and descriptor (N, D); ⟨z, g⟩ partial sums (N, CHUNKS) and
    # norms (N,), float32 (read only with NORMALIZE); M (N, A_DIM, B_DIM), contiguous
    grad_ptr,
    out_ptr,
    partial_ptr,
    norm_ptr,
    m_ptr,
    # sizes
    A_DIM,
    B_DIM,
    CHUNKS,
    # strides, in elements (the descriptor is contiguous along D)
    stride_gradn,
    stride_gradd,
    stride_outn,
    # scalars
    norm_eps,
    # meta-parameters
    SELF: tl.constexpr,
    SIGNED_SQRT: tl.constexpr,
    NORMALIZE: tl.constexpr,
    TRIU: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    num_a = tl.cdiv(A_DIM, BLOCK)
    num_b = tl.cdiv(B_DIM, BLOCK)
    n = (pid // (num_a * num_b)).to(tl.int64)
    pid_a = (pid % (num_a * num_b)) // num_b
    pid_b = pid % num_b
    if SELF:
        if pid_a > pid_b:
            return  # the mirror of tile (pid_b, pid_a)

    projection = 0.0
    if NORMALIZE:
        offs = tl.arange(0, 64)
        partial = tl.zeros((64,), dtype=tl.float32)
        for start in range(0, CHUNKS, 64):
            partial += tl.load(
                partial_ptr + n * CHUNKS + start + offs, mask=start + offs < CHUNKS, other=0.0
            )
        # Below the clamp F.normalize divides by a constant: no projection term there.
        projection = tl.where(tl.load(norm_ptr + n) >= norm_eps, tl.sum(partial, axis=0), 0.0)

    offs_a = pid_a * BLOCK + tl.arange(0, BLOCK)
    offs_b = pid_b * BLOCK + tl.arange(0, BLOCK)
    rows = offs_a[:, None]
    cols = offs_b[None, :]
    mask = (rows < A_DIM) & (cols < B_DIM)
    grad_base = grad_ptr + n * stride_gradn
    out_base = out_ptr + n * stride_outn
    # z enters through the projection and |z| only: a plain Gram's M is built from g alone
    # (and its descriptor is not even kept for the backward).
    USES_Z: tl.constexpr = SIGNED_SQRT or NORMALIZE
    if TRIU:
        low = tl.minimum(rows, cols)
        high = tl.maximum(rows, cols)
        entry = low * (2 * B_DIM - low - 1) // 2 + high
        on_diagonal = rows == cols
        g = tl.load(grad_base + entry * stride_gradd, mask=mask, other=0.0).to(tl.float32)
        numer = tl.where(on_diagonal, 2.0 * g, SQRT2 * g)
        if USES_Z:
            z = tl.load(out_base + entry, mask=mask, other=0.0).to(tl.float32)
            z = tl.where(on_diagonal, z, z / SQRT2)
            numer = numer - 2.0 * projection * z
    else:
        entry = rows * B_DIM + cols
        numer = tl.load(grad_base + entry * stride_gradd, mask=mask, other=0.0).to(tl.float32)
        if SELF:
            mirror = cols * B_DIM + rows
            g_mirror = tl.load(grad_base + mirror * stride_gradd, mask=mask, other=0.0)
            numer = numer + g_mirror.to(tl.float32)
        if USES_Z:
            z = tl.load(out_base + entry, mask=mask, other=0.0).to(tl.float32)
            numer = numer - (2.0 if SELF else 1.0) * projection * z
    if SIGNED_SQRT:
        # sign(G) = 0 where z = 0: no gradient there (padding lands here too).
        numer = tl.where(z == 0, 0.0, numer / tl.abs(z))

    m_base = m_ptr + n * A_DIM * B_DIM
    m_dtype = m_ptr.dtype.element_ty
    tl.store(m_base + rows * B_DIM + cols, numer.to(m_dtype), mask=mask)
    if SELF:
        if pid_a != pid_b:
            tl.store(m_base + cols * B_DIM + rows, numer.to(m_dtype), mask=mask)


@triton.autotune(
    configs=_matmul_configs(),
    key=[
        "A_DIM",
        "B_DIM",
        "L",
        "BATCH_BUCKET",
        "stride_ma",
        "stride_vc",
        "stride_vl",
        "stride_resl",
        "CENTER",
        "INPUT_PRECISION",
    ],
    prune_configs_by={"early_config_prune": shared_memory_pruner(matmul_shared_memory, "m_ptr")},
)
# BATCH_BUCKET only keys the autotuner: not specialized, so it never causes a recompile.
@triton.jit(do_not_specialize=["BATCH_BUCKET"])
def _gram_grad_matmul_kernel(
    # pointers: M (N, A_DIM, B_DIM); operand V (N, B_DIM, L); V's channel means (N, B_DIM),
    # float32 (read only with CENTER); norms (N,), float32 (read only with NORMALIZE);
    # result (N, A_DIM, L)
    m_ptr,
    v_ptr,
    mean_ptr,
    norm_ptr,
    result_ptr,
    # sizes; BATCH_BUCKET only keys the autotuner
    A_DIM,
    B_DIM,
    L,
    BATCH_BUCKET,
    # strides, in elements
    stride_mn,
    stride_ma,
    stride_mb,
    stride_vn,
    stride_vc,
    stride_vl,
    stride_resn,
    stride_resc,
    stride_resl,
    # scalars
    inv_locations,
    norm_eps,
    # meta-parameters
    SIGNED_SQRT: tl.constexpr,
    NORMALIZE: tl.constexpr,
    CENTER: tl.constexpr,
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
    pid_a = (pid % (num_a * num_l)) // num_l
    pid_l = pid % num_l

    offs_a = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_b = tl.arange(0, BLOCK_B)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_a = offs_a < A_DIM
    mask_l = offs_l < L
    m_ptrs = m_ptr + n * stride_mn + offs_a[:, None] * stride_ma + offs_b[None, :] * stride_mb
    v_ptrs = v_ptr + n * stride_vn + offs_b[:, None] * stride_vc + offs_l[None, :] * stride_vl
    acc = tl.zeros((BLOCK_A, BLOCK_L), dtype=tl.float32)
    for b_start in range(0, B_DIM, BLOCK_B):
        in_b = offs_b < B_DIM - b_start
        m = tl.load(m_ptrs, mask=mask_a[:, None] & in_b[None, :], other=0.0)
        v = tl.load(v_ptrs, mask=in_b[:, None] & mask_l[None, :], other=0.0)
        if CENTER:
            # Centred in float32 and rounded once, to M's dtype (float32 for float16 maps).
            mean = tl.load(mean_ptr + n * B_DIM + b_start + offs_b, mask=in_b, other=0.0)
            v = tl.where(mask_l[None, :], v.to(tl.float32) - mean[:, None], 0.0)
        acc = tl.dot(m, v.to(m.dtype), acc, input_precision=INPUT_PRECISION)
        m_ptrs += BLOCK_B * stride_mb
        v_ptrs += BLOCK_B * stride_vc

    # k = 1/L, halved by the square root's derivative, divided by r (and r again with the
    # square root: |s| = r·|z|) under normalization.
    scale = inv_locations
    if SIGNED_SQRT:
        scale = 0.5 * scale
    if NORMALIZE:
        norm = tl.maximum(tl.load(norm_ptr + n), norm_eps, propagate_nan=tl.PropagateNan.ALL)
        scale = scale / norm
        if SIGNED_SQRT:
            scale = scale / norm
    result = result_ptr + n * stride_resn + offs_a[:, None] * stride_resc
    result += offs_l[None, :] * stride_resl
    tl.store(result, (acc * scale).to(result_ptr.dtype.element_ty), mask=mask_a[:, None] & mask_l)


def bilinear_pool_bwd(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor | None,
    out: torch.Tensor,
    norm: torch.Tensor,
    *,
    signed_sqrt: bool = True,
    normalize: bool = True,
    triu: bool = False,
    center: bool = False,
    needs_dx: bool = True,
    needs_dy: bool = True,
    norm_eps: float = 1e-12,
    align_rows: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients (dx, dy) of the bilinear pool; dy is None without a second stream.

    grad (N, D) any strides; x (N, Cx, L), y (N, Cy, L) or None, any strides; out (N, D) the
    contiguous descriptor of the forward pass (not read, and may be empty, without
    ``signed_sqrt`` and ``normalize``) and norm (N,) its norms before normalization
    (float32, ignored unless ``normalize``); the options as in the forward. dx and dy keep the
    strides of x and y where they are dense (a channels_last map gets a channels_last
    gradient); a stream whose gradient is not needed gets None (the single stream always gets
    one). ``align_rows`` as in ``bilinear_pool_fwd``.
    """
    with device_guard(x):
        return _backward(
            grad, x, y, out, norm, signed_sqrt, normalize, triu, center, needs_dx, needs_dy,
            norm_eps, align_rows,
        )  # fmt: skip


def _backward(
    grad, x, y, out, norm, signed_sqrt, normalize, triu, center, needs_dx, needs_dy, norm_eps,
    align_rows,
):  # fmt: skip
    num_samples, channels_x, locations = x.shape
    single = y is None
    channels_y = channels_x if single else y.shape[1]
    # Placeholders for pointers a launch never reads must still be real (non-empty) tensors.
    out = out if signed_sqrt or normalize else grad
    partial = _partial_dots(out, grad) if normalize else grad
    norm = norm if normalize else grad
    m = torch.empty(
        (num_samples, channels_x, channels_y), device=x.device, dtype=_gram_grad_dtype(x.dtype)
    )
    tiles = triton.cdiv(channels_x, _GRAD_BLOCK) * triton.cdiv(channels_y, _GRAD_BLOCK)
    _gram_grad_kernel[(num_samples * tiles,)](
        grad, out, partial, norm, m,
        channels_x, channels_y, partial.shape[1],
        grad.stride(0), grad.stride(1), out.stride(0),
        norm_eps,
        SELF=single, SIGNED_SQRT=signed_sqrt, NORMALIZE=normalize, TRIU=triu, BLOCK=_GRAD_BLOCK,
    )  # fmt: skip

    # float16 maps multiply their float32 M in TF32 whatever torch's float32 setting (see the
    # module docstring), where the GPU has TF32.
    precision = dot_input_precision(
        m.dtype, x.device, allow_tf32=True if x.dtype == torch.float16 else None
    )

    def matmul(m_strides, operand, result_like):
        result = torch.empty_like(result_like)
        v = aligned_rows(operand) if align_rows else operand
        mean = channel_means(v) if center else norm  # not read without CENTER
        rows = result.shape[1]

        def grid(meta):
            return (
                num_samples
                * triton.cdiv(rows, meta["BLOCK_A"])
                * triton.cdiv(locations, meta["BLOCK_L"]),
            )

        _gram_grad_matmul_kernel[grid](
            m, v, mean, norm, result,
            rows, v.shape[1], locations, batch_bucket(num_samples),
            m.stride(0), *m_strides,
            v.stride(0), v.stride(1), v.stride(2),
            result.stride(0), result.stride(1), result.stride(2),
            1.0 / locations, norm_eps,
            SIGNED_SQRT=signed_sqrt, NORMALIZE=normalize, CENTER=center,
            INPUT_PRECISION=precision,
        )  # fmt: skip
        return result

    if single:
        return matmul((channels_x, 1), x, x), None
    dx = matmul((channels_y, 1), y, x) if needs_dx else None
    dy = matmul((1, channels_y), x, y) if needs_dy else None
    return dx, dy
