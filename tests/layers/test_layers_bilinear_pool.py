"""BilinearPool: the op as an nn.Module."""

import pytest
import torch
from reference import feature_like

from bcnn_triton import BilinearPool, bilinear_pool


def test_bilinear_pool_module():
    pool = BilinearPool(triu=True, eps=1e-8)
    assert "triu=True" in repr(pool) and "eps=1e-08" in repr(pool)
    assert pool.output_size(10) == 55
    x = feature_like(2, 10, 3, 3)
    torch.testing.assert_close(pool(x), bilinear_pool(x, triu=True, eps=1e-8))
    assert list(pool.parameters()) == []
    with pytest.raises(ValueError, match="backend"):
        BilinearPool(backend="cuda")
    with pytest.raises(ValueError, match="eps"):
        BilinearPool(eps=-1.0)


def test_two_streams_through_the_module():
    pool = BilinearPool(signed_sqrt=False)
    x, y = feature_like(3, 4, 5, 5), feature_like(3, 6, 25)
    assert pool.output_size(4, 6) == 24
    torch.testing.assert_close(pool(x, y), bilinear_pool(x, y, signed_sqrt=False))
    assert repr(BilinearPool()) == (
        "BilinearPool(signed_sqrt=True, normalize=True, eps=1e-10, triu=False, center=False, "
        "backend=None)"
    )


def test_covariance_pooling_through_the_module():
    pool = BilinearPool(center=True, signed_sqrt=False, normalize=False)
    x = feature_like(2, 5, 4, 4)
    torch.testing.assert_close(
        pool(x), bilinear_pool(x, center=True, signed_sqrt=False, normalize=False)
    )
    assert "center=True" in repr(pool)
