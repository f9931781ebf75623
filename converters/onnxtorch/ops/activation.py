"""Activations, softmax family, and the guided-backprop / deconvnet backward rules for Relu-like ops."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..registry import register

RELU_RULES = ("plain", "guided", "deconvnet")
CLIP_UPPER = ("block", "pass")  # a rule's choice at a Clip's upper bound (see clip_with_rule)


@register("Relu")
def relu(x: torch.Tensor) -> torch.Tensor:
    """max(x, 0)."""
    return torch.relu(x)


@register("LeakyRelu")
def leaky_relu(x: torch.Tensor, *, alpha: float = 0.01) -> torch.Tensor:
    """x where x >= 0, alpha * x elsewhere."""
    return F.leaky_relu(x, alpha)


@register("PRelu")
def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """x where x >= 0, slope * x elsewhere (slope broadcasts to x; per-channel slopes use F.prelu)."""
    if x.dim() >= 2 and slope.numel() == x.shape[1] and slope.dim() in (x.dim() - 1, 1) and \
            (slope.dim() == 1 or all(s == 1 for s in slope.shape[1:])) and slope.numel() > 1:
        return F.prelu(x, slope.reshape(-1))
    return torch.where(x < 0, x * slope, x)


@register("Clip")
def clip(x: torch.Tensor, min=None, max=None) -> torch.Tensor:
    """Clamp to [min, max]; bounds come as attributes before opset 11 and as optional inputs after
    (constant bound inputs arrive as Python numbers, see SCALAR_INPUTS). Number bounds on a float
    tensor run as relu/hardtanh, like torch's ReLU/ReLU6, whose backward is much faster than clamp's."""
    if min is None and max is None:
        return x
    if isinstance(min, torch.Tensor) or isinstance(max, torch.Tensor) or not x.is_floating_point() or \
            (min is not None and max is not None and min > max):
        return torch.clamp(x, min, max)
    if min == 0 and max is None:
        return torch.relu(x)
    return F.hardtanh(x, -math.inf if min is None else min, math.inf if max is None else max)


# inputs that, when they are constants, are passed as Python numbers under these keyword names
SCALAR_INPUTS: dict[str, tuple[str, ...]] = {"Clip": ("min", "max")}


@register("Sigmoid")
def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + exp(-x))."""
    return torch.sigmoid(x)


@register("HardSigmoid")
def hard_sigmoid(x: torch.Tensor, *, alpha: float = 0.2, beta: float = 0.5) -> torch.Tensor:
    """max(0, min(1, alpha * x + beta)); torch's hardsigmoid where alpha is 1/6."""
    if abs(alpha - 1 / 6) < 1e-7 and beta == 0.5:
        return F.hardsigmoid(x)
    return torch.clamp(x * alpha + beta, 0, 1)


@register("HardSwish", since=14)
def hard_swish(x: torch.Tensor) -> torch.Tensor:
    """x * max(0, min(1, x / 6 + 0.5))."""
    return F.hardswish(x)


@register("Tanh")
def tanh(x: torch.Tensor) -> torch.Tensor:
    """Hyperbolic tangent."""
    return torch.tanh(x)


@register("Gelu", since=20)
def gelu(x: torch.Tensor, *, approximate: str = "none") -> torch.Tensor:
    """Gaussian error linear unit, exact or tanh-approximated."""
    return F.gelu(x, approximate=approximate)


@register("Erf", since=9)
def erf(x: torch.Tensor) -> torch.Tensor:
    """Gauss error function."""
    return torch.erf(x)


@register("Softplus")
def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(exp(x) + 1)."""
    return F.softplus(x)


@register("Softsign")
def softsign(x: torch.Tensor) -> torch.Tensor:
    """x / (1 + |x|)."""
    return F.softsign(x)


@register("Elu")
def elu(x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    """x where x > 0, alpha * (exp(x) - 1) elsewhere."""
    return F.elu(x, alpha)


@register("Celu", since=12)
def celu(x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1))."""
    return F.celu(x, alpha)


@register("Selu")
def selu(x: torch.Tensor, *, alpha: float = 1.67326319217681884765625,
         gamma: float = 1.05070102214813232421875) -> torch.Tensor:
    """gamma * (x where x > 0, alpha * (exp(x) - 1) elsewhere)."""
    return F.elu(x, alpha) * gamma


@register("ThresholdedRelu", since=10)
def thresholded_relu(x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    """x where x > alpha, 0 elsewhere."""
    return torch.where(x > alpha, x, 0.0)


@register("Mish", since=18)
def mish(x: torch.Tensor) -> torch.Tensor:
    """x * tanh(softplus(x))."""
    return F.mish(x)


def flat_at_axis(fn: Callable, x: torch.Tensor, axis: int) -> torch.Tensor:
    """Apply fn over dim 1 of x seen as 2-D [prod(shape[:axis]), prod(shape[axis:])] (opset < 13)."""
    axis = axis + x.dim() if axis < 0 else axis
    return fn(x.reshape(math.prod(x.shape[:axis]), -1), 1).reshape(x.shape)


@register("Softmax", until=12)
def softmax_2d(x: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    """Softmax before opset 13: the input is flattened to 2-D at `axis` and normalised over the second axis."""
    return flat_at_axis(torch.softmax, x, axis)


@register("Softmax", since=13)
def softmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    """Softmax along one axis."""
    return torch.softmax(x, axis)


@register("LogSoftmax", until=12)
def log_softmax_2d(x: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    """LogSoftmax before opset 13 (flattened to 2-D at `axis`)."""
    return flat_at_axis(torch.log_softmax, x, axis)


@register("LogSoftmax", since=13)
def log_softmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    """LogSoftmax along one axis."""
    return torch.log_softmax(x, axis)


def hardmax_along(x: torch.Tensor, axis: int) -> torch.Tensor:
    """One-hot of the first maximum along `axis`."""
    return F.one_hot(x.argmax(axis), x.shape[axis]).movedim(-1, axis).to(x.dtype)


@register("Hardmax", until=12)
def hardmax_2d(x: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    """Hardmax before opset 13 (flattened to 2-D at `axis`)."""
    return flat_at_axis(hardmax_along, x, axis)


@register("Hardmax", since=13)
def hardmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    """One-hot of the first maximum along `axis`."""
    return hardmax_along(x, axis)


# --- backward rules for Relu-like ops -------------------------------------------------------------

class RuleActivation(torch.autograd.Function):
    """y = fn(x) with a replaced backward: the gradient's negative part is dropped (both rules) and, for
    guided backprop, it is also multiplied by the local derivative fn'(x) (the forward mask)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable, derivative: Callable | None) -> torch.Tensor:
        ctx.derivative = derivative
        if derivative is not None:
            ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clamp(min=0)
        if ctx.derivative is not None:
            (x,) = ctx.saved_tensors
            grad = grad * ctx.derivative(x)
        return grad, None, None


def apply_rule(x: torch.Tensor, rule: str, fn: Callable, derivative: Callable) -> torch.Tensor:
    """fn(x) whose backward follows `rule` ("guided": relu(grad) * fn'(x); "deconvnet": relu(grad))."""
    return RuleActivation.apply(x, fn, derivative if rule == "guided" else None)


def relu_with_rule(x: torch.Tensor, *, rule: str) -> torch.Tensor:
    """Relu whose backward follows a guided-backprop or deconvnet rule."""
    return apply_rule(x, rule, torch.relu, lambda t: (t > 0).to(t.dtype))


def leaky_relu_with_rule(x: torch.Tensor, *, alpha: float = 0.01, rule: str) -> torch.Tensor:
    """LeakyRelu whose backward follows a guided-backprop or deconvnet rule."""
    return apply_rule(x, rule, lambda t: F.leaky_relu(t, alpha),
                      lambda t: torch.where(t > 0, 1.0, alpha).to(t.dtype))


def prelu_with_rule(x: torch.Tensor, slope: torch.Tensor, *, rule: str) -> torch.Tensor:
    """PRelu whose backward follows a rule (no gradient reaches the slope)."""
    slope = slope.detach()
    return apply_rule(x, rule, lambda t: prelu(t, slope),
                      lambda t: torch.where(t > 0, torch.ones_like(t), slope.to(t.dtype)))


def clip_with_rule(x: torch.Tensor, min=None, max=None, *, rule: str, upper: str | None = None) -> torch.Tensor:
    """Clip with a zero lower bound (ReLU6 and the like) whose backward follows a rule. At the upper bound
    (a saturated unit, slope 0) `upper` chooses: "block" stops the gradient there, "pass" lets it through
    as for the ReLU it bounds. Default (None): guided blocks (it follows the forward slope: min < x < max and
    grad > 0), deconvnet passes (grad > 0 wherever the input was, as Zeiler & Fergus ignore the forward)."""
    upper = upper or ("block" if rule == "guided" else "pass")
    if upper not in CLIP_UPPER:
        raise ValueError(f"upper must be one of {', '.join(CLIP_UPPER)}, not {upper!r}")

    def derivative(t: torch.Tensor) -> torch.Tensor:
        inside = t > min if rule == "guided" else torch.ones_like(t, dtype=torch.bool)
        if max is not None and upper == "block":
            inside = inside & (t < max)
        return inside.to(t.dtype)
    needs_mask = rule == "guided" or (upper == "block" and max is not None)
    return RuleActivation.apply(x, lambda t: clip(t, min, max), derivative if needs_mask else None)


RULE_FUNCTIONS: dict[str, Callable] = {
    "Relu": relu_with_rule,
    "LeakyRelu": leaky_relu_with_rule,
    "PRelu": prelu_with_rule,
    "Clip": clip_with_rule,
}
