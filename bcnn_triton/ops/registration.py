"""How every operator of bcnn-triton is defined: one template, used by each op module.

An op module (``bilinear_pool.py``, ``matrix_sqrt.py``) holds, in this order:

1. the argument checks of its public function;
2. the forward body ``forward(*inputs) -> (result, *saved)`` and the backward body
   ``backward(grad_result, *saved, *options) -> gradients``: plain, annotated functions that
   dispatch to the Triton kernels or the torch path;
3. their fake (meta) functions, which give the output shapes without computing;
4. ``setup_context(ctx, inputs, outputs)``, which saves what the backward needs, and
   ``input_gradients(ctx, grad_result, backward, needs_input_grad)``, which returns one
   gradient (or None) per forward input by calling ``backward`` — the registered backward op,
   or its body — for the inputs ``needs_input_grad`` marks;
5. ``OP = FusedOperator("name", forward=..., ...)``: registers ``bcnn_triton::name`` and
   ``bcnn_triton::name_backward`` with torch.library and the autograd formula;
6. the public function: checks, then ``OP(*inputs)``.

The registered ops are ``torch.library.custom_op``s: opaque to torch.compile and torch.export,
which record each as one node. In plain eager mode (nothing traces or transforms the call) a
:class:`FusedOperator` runs the same bodies through a ``torch.autograd.Function`` instead, which
skips the custom-op dispatch: less host work per call, which decides the speed of a small op on
a GPU (``bench/test_bench_host_overhead.py`` measures both ways). The check for "plain eager"
uses private torch functions; where a torch release lacks them, every call takes the registered
op, which is always correct.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["FusedOperator", "eager_bypass_available"]

try:
    from torch.utils._python_dispatch import _get_current_dispatch_mode
except ImportError:  # a torch release without it: every call takes the registered op
    _get_current_dispatch_mode = None
_functorch_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def eager_bypass_available() -> bool:
    """Whether this torch offers what the eager bypass checks (else the registered op runs)."""
    return _get_current_dispatch_mode is not None and _functorch_transforms_active is not None


def _plain_eager(inputs: tuple[Any, ...]) -> bool:
    """Nothing traces or transforms this call: plain tensors, no compile, no dispatch mode."""
    return (
        eager_bypass_available()
        and all(type(t) is torch.Tensor for t in inputs if isinstance(t, torch.Tensor))
        and not torch.compiler.is_compiling()
        and _get_current_dispatch_mode() is None
        and not _functorch_transforms_active()
    )


class FusedOperator:
    """A forward op and its backward op in the ``bcnn_triton`` namespace, with autograd.

    Args:
        name: the forward op is ``bcnn_triton::<name>``, the backward ``<name>_backward``.
        forward: forward body, inputs → tuple of outputs, the first being the result.
        forward_fake: forward's fake function (same arguments, empty outputs).
        backward: backward body, returns a tensor or a tuple of tensors.
        backward_fake: backward's fake function.
        setup_context: ``(ctx, inputs, outputs) -> None``, saves what the backward needs.
        input_gradients: ``(ctx, grad_result, backward, needs_input_grad) -> tuple`` with one
            gradient or None per forward input, computed by calling ``backward``;
            ``needs_input_grad`` has one bool per forward input.

    Calling the operator with the forward's inputs returns the result, the first output.
    """

    def __init__(
        self,
        name: str,
        *,
        forward: Callable[..., tuple[torch.Tensor, ...]],
        forward_fake: Callable[..., tuple[torch.Tensor, ...]],
        backward: Callable[..., Any],
        backward_fake: Callable[..., Any],
        setup_context: Callable[[Any, tuple[Any, ...], tuple[torch.Tensor, ...]], None],
        input_gradients: Callable[..., tuple[Any, ...]],
    ) -> None:
        self.forward_body = forward
        self.backward_body = backward
        self.setup_context = setup_context
        self.input_gradients = input_gradients
        self.forward_op = torch.library.custom_op(f"bcnn_triton::{name}", mutates_args=())(forward)
        self.forward_op.register_fake(forward_fake)
        self.backward_op = torch.library.custom_op(
            f"bcnn_triton::{name}_backward", mutates_args=()
        )(backward)
        self.backward_op.register_fake(backward_fake)
        self.forward_op.register_autograd(self._registered_backward, setup_context=setup_context)

    def _registered_backward(self, ctx, grad_result: torch.Tensor, *_grads_of_saved_outputs):
        return self.input_gradients(ctx, grad_result, self.backward_op, ctx.needs_input_grad)

    def __call__(self, *inputs: Any) -> torch.Tensor:
        """The forward's result for ``inputs``: through the eager bypass when nothing traces
        the call, else through the registered op (which graphs record)."""
        if _plain_eager(inputs):
            return _EagerCall.apply(self, *inputs)
        return self.forward_op(*inputs)[0]


class _EagerCall(torch.autograd.Function):
    """A :class:`FusedOperator`'s forward and backward bodies, without the custom-op dispatch."""

    @staticmethod
    def forward(ctx, operator: FusedOperator, *inputs: Any) -> torch.Tensor:
        outputs = operator.forward_body(*inputs)
        operator.setup_context(ctx, inputs, outputs)
        ctx.operator = operator
        return outputs[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_result: torch.Tensor):
        operator = ctx.operator
        needs_input_grad = ctx.needs_input_grad[1:]  # [0] is the operator argument
        gradients = operator.input_gradients(
            ctx, grad_result, operator.backward_body, needs_input_grad
        )
        return (None, *gradients)
