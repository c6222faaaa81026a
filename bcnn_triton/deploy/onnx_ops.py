"""Our operators written in standard ONNX operators, for ``torch.onnx.export(dynamo=True)``.

:data:`ONNX_TRANSLATIONS` maps each ``torch.ops.bcnn_triton`` operator to an ONNX Script
function that builds the same computation from standard operators (MatMul, Sign, Abs, Sqrt,
ReduceSumSquare, ...), so an exported model runs in any ONNX runtime without this package. A new
operator gets one entry here; exporting a model that contains an operator without an entry
stops with an error naming it (:func:`bcnn_triton.deploy.export.missing_translations`).

Functions receive the operator's arguments in its schema order: tensors as ONNX values, the
other arguments (flags, ``eps``, ``backend``) as Python constants; they return one value per
output of the operator. Importing this module needs ``onnxscript``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from onnxscript import FLOAT, ir
from onnxscript import opset18 as op

from bcnn_triton.ops.coefficients import NORM_EPS

__all__ = ["ONNX_TRANSLATIONS", "bilinear_pool_onnx", "matrix_sqrt_newton_schulz_onnx"]


def _constant(values: np.ndarray) -> ir.Value:
    return op.Constant(value=ir.tensor(values))


def _upper_triangle(gram_flat: ir.Value, channels: int) -> ir.Value:
    """Row-major upper-triangular entries of (N, C·C), off-diagonal ones × √2 (as the op)."""
    rows, cols = np.triu_indices(channels)
    weights = np.where(rows == cols, 1.0, math.sqrt(2.0)).astype(np.float32)
    picked = op.Gather(gram_flat, _constant((rows * channels + cols).astype(np.int64)), axis=1)
    return op.Mul(picked, op.CastLike(_constant(weights), gram_flat))


def bilinear_pool_onnx(
    x: FLOAT,
    y: FLOAT | None,
    signed_sqrt: bool,
    normalize: bool,
    eps: float,
    triu: bool,
    center: bool,
    backend: str,
) -> tuple[FLOAT, FLOAT]:
    """``bcnn_triton::bilinear_pool``: x (N, Cx, L), y (N, Cy, L) or None → (out (N, D), norm).

    ``norm`` is (N,) with ``normalize`` and an empty (0,) tensor without, as in the op. The
    ``backend`` argument chooses between implementations of the same function, so it plays no
    part here.
    """
    channels = x.shape[1] if x.shape is not None else None  # known before any operator
    if center:
        x = op.Sub(x, op.ReduceMean(x, _constant(np.array([2], np.int64)), keepdims=1))
        if y is not None:
            y = op.Sub(y, op.ReduceMean(y, _constant(np.array([2], np.int64)), keepdims=1))
    other = x if y is None else y
    locations = op.CastLike(op.Shape(x, start=2, end=3), x)
    gram = op.Div(op.MatMul(x, op.Transpose(other, perm=[0, 2, 1])), locations)
    if signed_sqrt:
        # sign(0) = 0: exact zeros of the Gram stay zero, as in the op.
        magnitude = op.Sqrt(op.Add(op.Abs(gram), op.CastLike(_constant(np.array(eps)), gram)))
        gram = op.Mul(op.Sign(gram), magnitude)
    out = op.Flatten(gram, axis=1)
    if triu:
        if not isinstance(channels, int):
            raise ValueError("triu=True needs a static channel count to export to ONNX")
        out = _upper_triangle(out, channels)
    if not normalize:
        return out, op.ConstantOfShape(_constant(np.array([0], np.int64)))
    axis = _constant(np.array([1], np.int64))
    norm = op.Sqrt(op.ReduceSumSquare(out, axis, keepdims=1))
    floor = op.CastLike(_constant(np.array(NORM_EPS, np.float32)), norm)
    out = op.Div(out, op.Max(norm, floor))
    return out, op.Squeeze(norm, axis)


def matrix_sqrt_newton_schulz_onnx(
    a: FLOAT, iterations: int, eps: float, triu: bool, backend: str
) -> tuple[FLOAT, FLOAT, FLOAT, FLOAT]:
    """``bcnn_triton::matrix_sqrt_newton_schulz``: a (N, C, C) → (out, basis, values, scale).

    The coupled Newton–Schulz iteration unrolled into MatMuls (``iterations`` is a constant).
    ``out`` is √s·Y, (N, C, C) or its unweighted upper triangle (N, C(C+1)/2); the other
    outputs are what the backward would keep where the op iterates: Â, zeros (N, C) and s.
    """
    channels = a.shape[1] if a.shape is not None else None
    if not isinstance(channels, int):
        raise ValueError("matrix_sqrt_newton_schulz needs a static channel count to export to ONNX")
    identity = np.eye(channels, dtype=np.float32)
    symmetric = op.Div(
        op.Add(a, op.Transpose(a, perm=[0, 2, 1])), op.CastLike(_constant(np.array(2.0)), a)
    )
    trace = op.ReduceSum(
        op.Mul(symmetric, op.CastLike(_constant(identity), a)),
        _constant(np.array([1, 2], np.int64)),
        keepdims=0,
    )
    scale = op.Add(trace, op.CastLike(_constant(np.array(eps)), trace))
    as_matrices = _constant(np.array([1, 2], np.int64))
    a_hat = op.Div(symmetric, op.Unsqueeze(scale, as_matrices))
    three = op.CastLike(_constant(3.0 * identity), a)
    half = op.CastLike(_constant(np.array(0.5)), a)
    z = op.Mul(op.Sub(three, a_hat), half)
    y = op.MatMul(a_hat, z)
    for _ in range(iterations - 1):
        t = op.Mul(op.Sub(three, op.MatMul(z, y)), half)
        y, z = op.MatMul(y, t), op.MatMul(t, z)
    out = op.Mul(y, op.Unsqueeze(op.Sqrt(scale), as_matrices))
    if triu:
        rows, cols = np.triu_indices(channels)
        index = _constant((rows * channels + cols).astype(np.int64))
        out = op.Gather(op.Flatten(out, axis=1), index, axis=1)
    zeros = op.ConstantOfShape(op.Shape(a, start=0, end=2))
    return out, a_hat, op.CastLike(zeros, a), scale


#: ``torch.ops.bcnn_triton`` operator overload → its ONNX Script translation.
ONNX_TRANSLATIONS: dict[torch._ops.OpOverload, Callable[..., object]] = {
    torch.ops.bcnn_triton.bilinear_pool.default: bilinear_pool_onnx,
    torch.ops.bcnn_triton.matrix_sqrt_newton_schulz.default: matrix_sqrt_newton_schulz_onnx,
}
