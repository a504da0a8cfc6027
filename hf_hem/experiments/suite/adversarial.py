"""FGSM and PGD (L-inf and L2) attacks in plain torch, against any image classifier that returns logits.

`model` may be a transformers image classifier (`AutoModelForImageClassification`, called as
`model(pixel_values=x).logits`), any `nn.Module` or callable returning logits or an output with `.logits`. The
model is put in eval mode for the attack and restored afterwards; gradients are taken with respect to the input only,
so the model's `.grad` fields are left untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


ATTACK_NORMS = ("linf", "l2")


def model_logits(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Calls `model` on a batch and returns its logits.

    Transformers models are called with their main input name (`pixel_values` for image classifiers), other callables
    positionally; outputs with a `.logits` attribute, tuples (first element) and plain tensors are understood.
    """
    input_name = getattr(model, "main_input_name", None)
    output = model(**{input_name: pixel_values}) if input_name is not None else model(pixel_values)
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    if not torch.is_tensor(output):
        raise ValueError(
            f"model returned {type(output).__name__}; expected logits, a tuple or an output with .logits."
        )
    return output


def _check_attack_inputs(pixel_values, labels, epsilon, clamp):
    if not torch.is_tensor(pixel_values) or not pixel_values.is_floating_point():
        raise ValueError("`pixel_values` must be a floating-point torch tensor.")
    if not torch.is_tensor(labels) or labels.dim() != 1 or labels.shape[0] != pixel_values.shape[0]:
        raise ValueError(f"`labels` must be a 1-D tensor with one label per image ({pixel_values.shape[0]}).")
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"`epsilon` must be a finite number >= 0, got {epsilon!r}.")
    if clamp is not None:
        low, high = clamp
        if not low < high:
            raise ValueError(f"`clamp` must be (min, max) with min < max, got {clamp!r}.")
        # Clamping only keeps perturbations inside the epsilon-ball when the clean inputs are inside the box.
        if float(pixel_values.min()) < low - 1e-6 or float(pixel_values.max()) > high + 1e-6:
            raise ValueError(
                f"clean `pixel_values` span [{float(pixel_values.min()):.4g}, {float(pixel_values.max()):.4g}], "
                f"outside clamp={clamp!r}; pass the range the inputs live in, or clamp=None."
            )


class _EvalMode:
    """Puts a module in eval mode for the attack (BatchNorm statistics must not move) and restores it."""

    def __init__(self, model):
        self.model = model if isinstance(model, torch.nn.Module) else None

    def __enter__(self):
        self.was_training = self.model.training if self.model is not None else False
        if self.model is not None:
            self.model.eval()

    def __exit__(self, *exc_info):
        if self.model is not None:
            self.model.train(self.was_training)


def _input_gradient(model, adversarial, labels, loss_fn) -> torch.Tensor:
    adversarial = adversarial.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(model_logits(model, adversarial), labels)
        (gradient,) = torch.autograd.grad(loss, adversarial)
    return gradient


def _per_sample_norm(values: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped to broadcast against `values`."""
    return values.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (values.dim() - 1)))


def _project(delta: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    scale = (epsilon / _per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale


def _clamp(values: torch.Tensor, clamp) -> torch.Tensor:
    return values if clamp is None else values.clamp(clamp[0], clamp[1])


def fgsm(
    model,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    loss_fn: Callable = F.cross_entropy,
    clamp: tuple[float, float] | None = (0.0, 1.0),
) -> torch.Tensor:
    r"""Fast gradient sign method: one step `x + epsilon * sign(grad_x loss)` (Goodfellow et al., 2015).

    Args:
        model: image classifier (see the module docstring).
        pixel_values (`torch.Tensor`): clean inputs.
        labels (`torch.Tensor`): true class ids.
        epsilon (`float`): L-inf radius, in the units of `pixel_values`.
        loss_fn (`Callable`, defaults to `F.cross_entropy`): `loss_fn(logits, labels) -> scalar` to increase.
        clamp (`tuple[float, float]`, *optional*, defaults to `(0.0, 1.0)`): valid input range, or `None`.

    Returns:
        `torch.Tensor`: adversarial inputs, detached, same shape/dtype/device.

    Shape:
        - pixel_values: `(N, C, H, W)` (any `(N, ...)` works); labels: `(N,)`.
    """
    _check_attack_inputs(pixel_values, labels, epsilon, clamp)
    with _EvalMode(model):
        gradient = _input_gradient(model, pixel_values, labels, loss_fn)
    return _clamp(pixel_values.detach() + epsilon * gradient.sign(), clamp).detach()


def pgd(
    model,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    step_size: float | None = None,
    steps: int = 10,
    norm: str = "linf",
    random_start: bool = True,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    seed: int | None = 0,
    loss_fn: Callable = F.cross_entropy,
) -> torch.Tensor:
    r"""Projected gradient descent on the loss (Madry et al., 2018), in an L-inf or L2 ball around each input.

    Each step moves `step_size` along `sign(grad)` (L-inf) or `grad / ||grad||_2` (L2, per sample), projects back
    onto the `epsilon`-ball around the clean input and clamps to the valid range. Clamping moves every coordinate
    towards the clean value, so the result stays in the ball.

    Args:
        model: image classifier (see the module docstring).
        pixel_values (`torch.Tensor`): clean inputs.
        labels (`torch.Tensor`): true class ids.
        epsilon (`float`): radius of the ball.
        step_size (`float`, *optional*): step length; defaults to `2.5 * epsilon / steps`.
        steps (`int`, defaults to 10): number of steps (>= 1).
        norm (`str`, defaults to `"linf"`): `"linf"` or `"l2"`.
        random_start (`bool`, defaults to `True`): start from a uniform random point of the ball.
        clamp (`tuple[float, float]`, *optional*, defaults to `(0.0, 1.0)`): valid input range, or `None`.
        seed (`int`, *optional*, defaults to 0): seed of the random start (`None`: torch's global generator).
        loss_fn (`Callable`, defaults to `F.cross_entropy`): `loss_fn(logits, labels) -> scalar` to increase.

    Returns:
        `torch.Tensor`: adversarial inputs, detached, same shape/dtype/device.

    Shape:
        - pixel_values: `(N, C, H, W)` (any `(N, ...)` works); labels: `(N,)`.
    """
    _check_attack_inputs(pixel_values, labels, epsilon, clamp)
    if norm not in ATTACK_NORMS:
        raise ValueError(f"`norm` must be one of {ATTACK_NORMS}, got {norm!r}.")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}.")
    step_size = 2.5 * epsilon / steps if step_size is None else step_size
    if not (math.isfinite(step_size) and step_size >= 0):
        raise ValueError(f"`step_size` must be a finite number >= 0, got {step_size!r}.")
    clean = pixel_values.detach()
    delta = torch.zeros_like(clean)
    if random_start and epsilon > 0:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        if norm == "linf":
            noise = torch.rand(clean.shape, generator=generator, dtype=clean.dtype) * 2 - 1
            delta = (noise * epsilon).to(clean.device)
        else:
            # Uniform in the L2 ball: a uniform direction, radius epsilon * U^(1/d).
            direction = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
            direction = direction / _per_sample_norm(direction).clamp_min(1e-12)
            dimension = clean[0].numel()
            radius = torch.rand((clean.shape[0],), generator=generator, dtype=clean.dtype) ** (1.0 / dimension)
            delta = (direction * epsilon * radius.view(-1, *([1] * (clean.dim() - 1)))).to(clean.device)
    adversarial = _clamp(clean + delta, clamp)
    with _EvalMode(model):
        for _ in range(steps):
            gradient = _input_gradient(model, adversarial, labels, loss_fn)
            if norm == "linf":
                step = gradient.sign()
            else:
                step = gradient / _per_sample_norm(gradient).clamp_min(1e-12)
            delta = _project(adversarial + step_size * step - clean, epsilon, norm)
            adversarial = _clamp(clean + delta, clamp).detach()
    return adversarial
