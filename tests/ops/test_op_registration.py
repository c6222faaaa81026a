"""The operator template: eager calls skip the custom-op dispatch, traced calls record the
registered ops, and both give the same values and gradients, also where torch lacks the private
functions the bypass relies on."""

from __future__ import annotations

import pytest
import torch
from reference import bilinear_pool_reference, feature_like, newton_schulz_sqrt_reference, spd_like

from bcnn_triton import bilinear_pool, matrix_sqrt_newton_schulz
from bcnn_triton.ops import registration

EAGER_NODE = "_EagerCallBackward"


def _bilinear(x):
    return bilinear_pool(x)


def _root(a):
    return matrix_sqrt_newton_schulz(a, iterations=8)


def _bilinear_reference(x):
    return bilinear_pool_reference(x)


def _root_reference(a):
    return newton_schulz_sqrt_reference(a, iterations=8)


CASES = [
    pytest.param(_bilinear, _bilinear_reference, lambda: feature_like(2, 6, 5), id="bilinear"),
    pytest.param(_root, _root_reference, lambda: spd_like(2, 5, 12), id="matrix_sqrt"),
]


def _value_and_gradient(function, inputs):
    inputs = inputs.detach().requires_grad_()
    out = function(inputs)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    return out, inputs.grad, type(out.grad_fn).__name__


def _assert_matches_reference(function, reference, inputs):
    out, grad, _ = _value_and_gradient(function, inputs)
    expected, expected_grad, _ = _value_and_gradient(reference, inputs.to(torch.float64))
    torch.testing.assert_close(out.to(torch.float64), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad.to(torch.float64), expected_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("function", "reference", "make_input"), CASES)
def test_eager_calls_skip_the_custom_op_dispatch(function, reference, make_input):
    assert registration.eager_bypass_available()
    inputs = make_input()
    assert _value_and_gradient(function, inputs)[2] == EAGER_NODE
    _assert_matches_reference(function, reference, inputs)


@pytest.mark.parametrize(("function", "reference", "make_input"), CASES)
def test_without_the_private_torch_functions_calls_take_the_registered_op(
    monkeypatch, function, reference, make_input
):
    monkeypatch.setattr(registration, "_get_current_dispatch_mode", None)
    assert not registration.eager_bypass_available()
    inputs = make_input()
    assert _value_and_gradient(function, inputs)[2].startswith("GeneratedBackwardFor_bcnn_triton")
    _assert_matches_reference(function, reference, inputs)


@pytest.mark.parametrize(
    ("function", "make_input", "op"),
    [
        (_bilinear, lambda: feature_like(2, 6, 5), "bilinear_pool"),
        (_root, lambda: spd_like(2, 5, 12), "matrix_sqrt_newton_schulz"),
    ],
)
def test_traced_calls_record_the_registered_forward_and_backward(function, make_input, op):
    inputs = make_input().requires_grad_()

    def forward_backward(t):
        return torch.autograd.grad(function(t).sum(), t)

    graph = torch.fx.experimental.proxy_tensor.make_fx(forward_backward)(inputs)
    targets = {node.target for node in graph.graph.nodes}
    assert getattr(torch.ops.bcnn_triton, op).default in targets
    assert getattr(torch.ops.bcnn_triton, f"{op}_backward").default in targets


def test_only_the_stream_that_needs_a_gradient_gets_one():
    x = feature_like(2, 4, 6)
    y = feature_like(2, 3, 6).requires_grad_()
    bilinear_pool(x, y).sum().backward()
    assert x.grad is None and y.grad is not None
    y_ref = y.detach().to(torch.float64).requires_grad_()
    bilinear_pool_reference(x.to(torch.float64), y_ref).sum().backward()
    torch.testing.assert_close(y.grad.to(torch.float64), y_ref.grad, atol=1e-5, rtol=1e-4)
