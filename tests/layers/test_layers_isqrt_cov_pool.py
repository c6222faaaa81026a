"""ISqrtCovPool: the op as an nn.Module."""

import pytest
import torch
from reference import feature_like

from bcnn_triton import ISqrtCovPool, isqrt_cov_pool


def test_isqrt_cov_pool_module():
    pool = ISqrtCovPool(iterations=3, triu=False, eps=1e-8)
    assert repr(pool) == (
        "ISqrtCovPool(iterations=3, center=True, triu=False, eps=1e-08, backend=None)"
    )
    assert pool.output_size(10) == 100
    assert ISqrtCovPool().output_size(10) == 55
    x = feature_like(2, 10, 3, 3)
    torch.testing.assert_close(pool(x), isqrt_cov_pool(x, iterations=3, triu=False, eps=1e-8))
    assert list(pool.parameters()) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(iterations=0), ValueError, "iterations must be >= 1"),
        (dict(iterations=1.5), TypeError, "iterations must be an integer"),
        (dict(eps=-1.0), ValueError, "eps"),
        (dict(backend="cuda"), ValueError, "backend"),
    ],
)
def test_bad_options_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        ISqrtCovPool(**kwargs)
