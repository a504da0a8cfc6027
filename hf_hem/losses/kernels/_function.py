"""The fused autograd Function behind `hem_loss` and its relatives, and the choice of backend."""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from types import ModuleType

import torch

from .._common import (
    check_label_range,
    check_logits_and_labels,
    check_margin,
    check_reduction,
    normalize_class_dim,
    reduce_per_sample,
)
from . import _cpu, _portable
from ._inputs import KernelInputs


IMPLEMENTATIONS = ("auto", "reference", "cpu", "triton", "torch")
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_triton_module: ModuleType | None = None


@functools.cache
def triton_available() -> bool:
    """Whether the `triton` package can be imported (it is only used for CUDA tensors, or under TRITON_INTERPRET)."""
    return importlib.util.find_spec("triton") is not None


def _triton() -> ModuleType:
    global _triton_module
    if _triton_module is None:
        from . import _triton as module

        _triton_module = module
    return _triton_module


def resolve_implementation(
    logits: torch.Tensor, margin: float | torch.Tensor, implementation: str = "auto", class_dim: int = 1
) -> str:
    """The backend that computes the loss for these inputs: `"reference"`, `"cpu"`, `"triton"` or `"torch"`.

    `"auto"` picks the Triton kernel for CUDA tensors when `triton` is installed, the compiled C++ kernel on CPU when
    it builds, and otherwise the portable chunked torch implementation. It keeps the reference (plain autograd) when
    a margin tensor requires a gradient, or while `torch.compile` traces the call.

    Args:
        logits (`torch.Tensor`): the logits the loss will be computed on.
        margin (`float` or `torch.Tensor`): the margin argument of the loss.
        implementation (`str`, defaults to `"auto"`): one of `"auto"`, `"reference"`, `"cpu"`, `"triton"`, `"torch"`.
        class_dim (`int`, defaults to 1): the class dimension of `logits`, 1 or the last one (-1).

    Returns:
        `str`: the backend name.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r} is not supported; expected one of {IMPLEMENTATIONS}.")
    if implementation != "auto":
        return implementation
    if torch.is_tensor(margin) and margin.requires_grad:
        return "reference"
    if not torch.is_tensor(logits) or logits.dim() < 2 or not _has_classes(logits, class_dim):
        return "reference"  # let the reference raise or handle the degenerate case
    if torch.compiler.is_compiling() or logits.device.type == "meta":
        return "reference"
    if logits.device.type == "cuda" and logits.dtype in _TRITON_DTYPES and triton_available():
        return "triton"
    if logits.device.type == "cpu" and logits.dtype in _cpu.FORMATS and _cpu.load() is not None:
        return "cpu"
    return "torch"


def _has_classes(logits: torch.Tensor, class_dim: int) -> bool:
    """Whether the class dimension is valid and not empty; an invalid one is left to the reference to report."""
    try:
        return logits.shape[normalize_class_dim(class_dim, logits.shape)] > 0
    except ValueError:
        return False


def check_label_flag(label_error: torch.Tensor, flat_labels: torch.Tensor, num_classes: int, ignore_index: int):
    """Raises the reference's ValueError (listing the bad labels) if a kernel flagged an out-of-range label.

    On CUDA, reading the flag would stall the host until the forward pass has run, which idles the GPU while the
    backward kernels are launched (about 4% of a ViT-B/16 step). So by default the check is a device-side assertion,
    as `F.cross_entropy` does on CUDA; `HF_HEM_CUDA_LABEL_CHECK=sync` restores the ValueError.
    """
    if label_error.is_cuda and os.environ.get("HF_HEM_CUDA_LABEL_CHECK", "async") != "sync":
        message = f"hf_hem: labels contain values outside [0, {num_classes}) that are not ignore_index={ignore_index}"
        torch._assert_async(label_error[0] == 0, message)
    elif bool(label_error.item()):
        check_label_range(flat_labels, num_classes, ignore_index)
        raise AssertionError("unreachable: a kernel flagged a label that is in range")  # pragma: no cover


def check_backend(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    """Raises a ValueError when a forced backend cannot run on tensors of this device and dtype."""
    if backend == "cpu" and (device.type != "cpu" or dtype not in _cpu.FORMATS or _cpu.load() is None):
        raise ValueError(
            f"implementation='cpu' needs a CPU tensor of dtype {list(_cpu.FORMATS)} and a C++ compiler "
            f"(got {device.type} {dtype}; kernel: {_cpu.status()})."
        )
    if backend == "triton" and not (
        triton_available() and dtype in _TRITON_DTYPES and (device.type == "cuda" or _triton().interpreting())
    ):
        raise ValueError(
            f"implementation='triton' needs triton and a CUDA tensor (or TRITON_INTERPRET=1) of dtype "
            f"{list(_TRITON_DTYPES)}, got {device.type} {dtype}."
        )


def kernel_labels_and_margins(labels: torch.Tensor, margin: float | torch.Tensor, device, accumulate: torch.dtype):
    """`(flat int64 labels, margin tensor or None, scalar margin)` as the kernels take them."""
    flat_labels = labels.reshape(-1)
    if flat_labels.dtype != torch.int64 or not flat_labels.is_contiguous():
        flat_labels = flat_labels.to(torch.int64).contiguous()
    if torch.is_tensor(margin):
        return flat_labels, margin.detach().to(device=device, dtype=accumulate).contiguous(), 0.0
    return flat_labels, None, float(margin)


def reduce_kernel_output(per_sample, kept, flat_labels, labels_shape, ignore_index, mean_above_zero, reduction):
    """The loss from the kernels' per-sample losses: per-sample (`"none"`), sum, or mean over the samples that count
    (violating samples for the mean-above-zero variants, labelled samples otherwise)."""
    if reduction == "none":
        return per_sample.reshape(labels_shape)
    denominator = (kept > 0).sum() if mean_above_zero else (flat_labels != ignore_index).sum()
    return reduce_per_sample(per_sample, denominator, reduction)


def group_logits(logits: torch.Tensor, class_dim: int = 1) -> torch.Tensor:
    """Views logits as `(B, C, I)` with every `(b, i)` one sample, copying only when needed.

    Logits whose classes are strided (contiguous `(N, C, d1, ...)`) give `B = N, I = d1 * ...`; logits whose class
    dimension is innermost in memory (`(N, C)`, memory-format channels-last, or contiguous `(N, d1, ..., C)` from a
    token classification head with `class_dim=-1`) give `B = N * d1 * ..., I = 1`. In both cases the sample order is
    that of `labels.reshape(-1)`. Anything else is made contiguous first.

    Args:
        logits (`torch.Tensor`): the logits.
        class_dim (`int`, defaults to 1): their class dimension, 1 or the last one (-1).

    Shape:
        - logits: `(N, C)` or `(N, C, d1, ...)` with `class_dim=1`; `(N, d1, ..., C)` with `class_dim=-1`
        - Output: `(B, C, I)` with `B * I = N * d1 * ...`
    """
    class_dim = normalize_class_dim(class_dim, logits.shape)
    if class_dim != 1:
        # A view with permuted strides, no copy: a contiguous (N, d1, ..., C) tensor is then "classes innermost"
        # below and becomes (N * d1 * ..., C, 1) rows, the layout the kernels read with class stride 1.
        logits = logits.movedim(class_dim, 1)
    batch, num_classes, inner = logits.shape[0], logits.shape[1], math.prod(logits.shape[2:])
    if logits.is_contiguous():
        return logits.view(batch, num_classes, inner)
    classes_last = logits.movedim(1, -1)
    if classes_last.is_contiguous():
        return classes_last.view(batch * inner, num_classes, 1)
    return logits.contiguous().view(batch, num_classes, inner)


def _backend(name: str) -> ModuleType:
    """The module of a fused backend; each has `forward` and `backward` taking [`KernelInputs`]."""
    if name == "cpu":
        return _cpu
    return _triton() if name == "triton" else _portable


def backend_forward(backend: str, inputs: KernelInputs, threshold: bool, mean_above_zero: bool):
    """Per-sample `(loss, tau, kept, label_error)` of grouped `(B, C, I)` logits with one backend's forward kernel."""
    return _backend(backend).forward(inputs, threshold, mean_above_zero)


def backend_backward(backend: str, inputs: KernelInputs, tau, kept, weight) -> torch.Tensor:
    """Gradient of `sum(weight * kept errors)` with respect to grouped `(B, C, I)` logits, in their dtype."""
    return _backend(backend).backward(inputs, tau, kept, weight)


def kept_error_weight(grad_per_sample, tau, kept, num_classes: int, mean_above_zero: bool) -> torch.Tensor:
    """The weight of each kept error: d(loss_b)/d(kept error) is 1/k_b (mean above zero) or 1/C, times the incoming
    per-sample gradient."""
    divisor = kept.clamp_min(1).to(tau.dtype) if mean_above_zero else num_classes
    return (grad_per_sample.to(tau.dtype) / divisor).contiguous()


class FusedMarginFamily(torch.autograd.Function):
    """Per-sample margin-family losses of grouped `(B, C, I)` logits; backward recomputes the sparse gradient.

    Outputs `(per_sample, kept, label_error)`: per-sample losses `(B*I,)` (float32, float64 for float64 logits), the
    number of kept classes per sample (int32) and a one-element int32 flag, non-zero when a label is out of range
    (those samples were treated as ignored; the caller raises). Only the logits (already alive), the labels and two numbers
    per sample are saved, so memory beyond the inputs is the gradient alone.
    """

    @staticmethod
    def forward(ctx, grouped, labels, margins, margin, ignore_index, threshold, mean_above_zero, backend):
        inputs = KernelInputs(grouped, labels, margins, margin, ignore_index)
        per_sample, tau, kept, label_error = backend_forward(backend, inputs, threshold, mean_above_zero)
        ctx.save_for_backward(grouped, labels, margins, tau, kept)
        ctx.margin, ctx.ignore_index, ctx.mean_above_zero, ctx.backend = margin, ignore_index, mean_above_zero, backend
        ctx.mark_non_differentiable(kept, label_error)
        return per_sample, kept, label_error

    @staticmethod
    def backward(ctx, grad_per_sample, _grad_kept, _grad_label_error):
        grouped, labels, margins, tau, kept = ctx.saved_tensors
        weight = kept_error_weight(grad_per_sample, tau, kept, grouped.shape[1], ctx.mean_above_zero)
        inputs = KernelInputs(grouped, labels, margins, ctx.margin, ctx.ignore_index)
        grad = backend_backward(ctx.backend, inputs, tau, kept, weight)
        return grad, None, None, None, None, None, None, None


def fused_margin_family_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin: float | torch.Tensor,
    *,
    threshold: bool,
    mean_above_zero: bool,
    ignore_index: int = -100,
    reduction: str = "mean",
    implementation: str = "auto",
    class_dim: int = 1,
) -> torch.Tensor:
    """HEM (`threshold=True, mean_above_zero=True`), MM, MM+maz or MM+thres in one fused pass over the logits.

    Computes the same function as the reference `_margin_family_loss_reference` (see `hf_hem.losses.hem`),
    without materialising the permuted logits or any `(P, C)` intermediate.

    Args:
        logits (`torch.Tensor`): unnormalised scores, float32/float64/bfloat16/float16; half precision is computed
            in float32 and its gradient returned in the logits' dtype.
        labels (`torch.Tensor`): class indices, or `ignore_index`.
        margin (`float` or `torch.Tensor`): one margin, or a `(C,)` tensor of per-target-class margins.
        threshold (`bool`): keep only errors at or above the per-sample mean error (HEM's threshold).
        mean_above_zero (`bool`): average the kept errors per sample, then the samples above zero.
        ignore_index (`int`, defaults to -100): label of positions that take no part.
        reduction (`str`, defaults to `"mean"`): `"mean"`, `"sum"` or `"none"`.
        implementation (`str`, defaults to `"auto"`): `"cpu"`, `"triton"`, `"torch"` or `"auto"` (see
            [`resolve_implementation`]); `"reference"` is not handled here.
        class_dim (`int`, defaults to 1): the class dimension of `logits`: 1, or -1 for classes last (token
            classification). Contiguous classes-last logits are read in place as `(N * d1 * ..., C)` rows, and their
            gradient has their layout.

    Returns:
        `torch.Tensor`: a scalar, or per-sample losses shaped like `labels` for `reduction="none"`.

    Shape:
        - logits: `(N, C)` or `(N, C, d1, ...)` with `class_dim=1`; `(N, d1, ..., C)` with `class_dim=-1`
        - labels: `(N,)` or `(N, d1, ...)`
    """
    check_reduction(reduction)
    class_dim = check_logits_and_labels(logits, labels, class_dim)
    num_classes = logits.shape[class_dim]
    margin = check_margin(margin, num_classes)
    backend = resolve_implementation(logits, margin, implementation, class_dim)
    if backend == "reference":
        raise ValueError("fused_margin_family_loss computes the fused backends only; call the reference directly.")
    check_backend(backend, logits.device, logits.dtype)
    accumulate = torch.float64 if logits.dtype == torch.float64 else torch.float32
    flat_labels, margins, scalar_margin = kernel_labels_and_margins(labels, margin, logits.device, accumulate)
    # Classes-last logits reach the kernels as a view of their own storage (see `group_logits`): no transposed copy.
    grouped = group_logits(logits, class_dim)
    per_sample, kept, label_error = FusedMarginFamily.apply(
        grouped, flat_labels, margins, scalar_margin, ignore_index, threshold, mean_above_zero, backend
    )
    check_label_flag(label_error, flat_labels, num_classes, ignore_index)
    return reduce_kernel_output(per_sample, kept, flat_labels, labels.shape, ignore_index, mean_above_zero, reduction)
