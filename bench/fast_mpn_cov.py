"""Our re-implementation of fast-MPN-COV's published iSQRT-COV formulation, for the benchmarks.

iSQRT-COV (Li, Xie, Wang, Gao, CVPR 2018) as its public code (jiangtaoxie/fast-MPN-COV,
``src/representation/MPNCOV.py``) formulates it, written again from the paper's equations:
three autograd Functions with hand-written backwards,

- covariance Σ = X·Î·Xᵀ with the explicit centring matrix Î = (I − 11ᵀ/M)/M of size M×M
  (M = H·W), one copy per sample, kept for the backward with the input;
- pre-normalization Â = Σ / tr(Σ), coupled Newton–Schulz Y₀ = Â(3I − Â)/2, Z₀ = (3I − Â)/2,
  T = (3I − Z·Y)/2, Y ← Y·T, Z ← T·Z, post-compensation √tr(Σ)·Y; every iterate Y_k, Z_k is
  kept (stacks of ``iterations`` matrices, as allocated there) and the backward runs the
  paper's recurrences for ∂l/∂Y_k, ∂l/∂Z_k from the last step to the first;
- the upper triangle with its diagonal, unweighted, gathered by index.

Differences that do not change the formulation: the identity is broadcast instead of repeated
per sample, and the trace term is added to the diagonal in one batched operation instead of a
Python loop over samples (both favour this baseline).
"""

from __future__ import annotations

import torch
from torch.autograd import Function

__all__ = ["fast_mpn_cov_isqrt"]


class _CovarianceByCentringMatrix(Function):
    @staticmethod
    def forward(ctx, x):
        num, channels, height, width = x.shape
        m = height * width
        flat = x.reshape(num, channels, m)
        centring = (torch.eye(m, device=x.device) - 1.0 / m) / m
        centring = centring.expand(num, m, m).contiguous().to(x.dtype)
        ctx.save_for_backward(x, centring)
        return flat.bmm(centring).bmm(flat.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        x, centring = ctx.saved_tensors
        num, channels, height, width = x.shape
        flat = x.reshape(num, channels, height * width)
        return (grad + grad.transpose(1, 2)).bmm(flat).bmm(centring).reshape(x.shape)


class _NewtonSchulzSqrtm(Function):
    @staticmethod
    def forward(ctx, sigma, iterations):
        num, channels, _ = sigma.shape
        three = 3.0 * torch.eye(channels, device=sigma.device, dtype=sigma.dtype)
        trace = sigma.diagonal(dim1=1, dim2=2).sum(dim=1)
        a_hat = sigma / trace.view(num, 1, 1)
        ys = sigma.new_zeros((num, iterations, channels, channels))
        zs = torch.eye(channels, device=sigma.device, dtype=sigma.dtype).repeat(
            num, iterations, 1, 1
        )
        t = 0.5 * (three - a_hat)
        ys[:, 0] = a_hat.bmm(t)
        zs[:, 0] = t
        for k in range(1, iterations - 1):
            t = 0.5 * (three - zs[:, k - 1].bmm(ys[:, k - 1]))
            ys[:, k] = ys[:, k - 1].bmm(t)
            zs[:, k] = t.bmm(zs[:, k - 1])
        if iterations > 1:
            last = iterations - 2
            y = 0.5 * ys[:, last].bmm(three - zs[:, last].bmm(ys[:, last]))
        else:
            y = ys[:, 0]
        ctx.save_for_backward(sigma, a_hat, y, trace, ys, zs)
        ctx.iterations = iterations
        return y * trace.sqrt().view(num, 1, 1)

    @staticmethod
    def backward(ctx, grad):
        sigma, a_hat, y, trace, ys, zs = ctx.saved_tensors
        iterations = ctx.iterations
        num, channels, _ = sigma.shape
        three = 3.0 * torch.eye(channels, device=sigma.device, dtype=sigma.dtype)
        grad_y = grad * trace.sqrt().view(num, 1, 1)  # through the post-compensation
        grad_trace_post = (grad * y).sum(dim=(1, 2)) / (2 * trace.sqrt())
        if iterations < 2:
            grad_a_hat = 0.5 * (grad_y.bmm(three - a_hat) - a_hat.bmm(grad_y))
        else:
            y_k, z_k = ys[:, iterations - 2], zs[:, iterations - 2]
            d_y = 0.5 * (grad_y.bmm(three - y_k.bmm(z_k)) - z_k.bmm(y_k).bmm(grad_y))
            d_z = -0.5 * y_k.bmm(grad_y).bmm(y_k)
            for k in range(iterations - 3, -1, -1):
                y_k, z_k = ys[:, k], zs[:, k]
                three_minus_yz = three - y_k.bmm(z_k)
                zy = z_k.bmm(y_k)
                d_y, d_z = (
                    0.5 * (d_y.bmm(three_minus_yz) - z_k.bmm(d_z).bmm(z_k) - zy.bmm(d_y)),
                    0.5 * (three_minus_yz.bmm(d_z) - y_k.bmm(d_y).bmm(y_k) - d_z.bmm(zy)),
                )
            grad_a_hat = 0.5 * (d_y.bmm(three - a_hat) - d_z - a_hat.bmm(d_y))
        grad_sigma = grad_a_hat / trace.view(num, 1, 1)
        grad_trace_pre = (grad_a_hat * sigma).sum(dim=(1, 2)) / trace.square()
        diagonal = grad_sigma.diagonal(dim1=1, dim2=2)
        diagonal += (grad_trace_post - grad_trace_pre).view(num, 1)
        return grad_sigma, None


class _UpperTriangle(Function):
    @staticmethod
    def forward(ctx, matrix):
        num, channels, _ = matrix.shape
        index = torch.ones(channels, channels, device=matrix.device).triu().flatten().nonzero()
        ctx.save_for_backward(matrix, index)
        return matrix.reshape(num, channels * channels)[:, index].reshape(num, -1)

    @staticmethod
    def backward(ctx, grad):
        matrix, index = ctx.saved_tensors
        num, channels, _ = matrix.shape
        full = matrix.new_zeros((num, channels * channels))
        full[:, index.flatten()] = grad
        return full.reshape(num, channels, channels)


def fast_mpn_cov_isqrt(x: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    """iSQRT-COV of a feature map (N, C, H, W) as fast-MPN-COV formulates it: (N, C(C+1)/2)."""
    sigma = _CovarianceByCentringMatrix.apply(x)
    return _UpperTriangle.apply(_NewtonSchulzSqrtm.apply(sigma, iterations))
