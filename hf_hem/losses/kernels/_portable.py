"""Portable fused implementation: torch operations over chunks of samples, on any device and dtype.

Only chunk-sized intermediates exist at any time, and backward recomputes the sparse gradient from the logits and
two saved numbers per sample (threshold and kept count), so no autograd graph of intermediates is kept.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ._inputs import KernelInputs


# Logits per chunk: small enough for the intermediates to stay in cache on CPU, large enough to amortise kernel
# launches on an accelerator.
CHUNK_ELEMENTS = {"cpu": 1 << 18}
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def _chunks(num_groups: int, num_classes: int, inner: int, device: torch.device) -> Iterator[tuple[slice, slice]]:
    budget = CHUNK_ELEMENTS.get(device.type, DEFAULT_CHUNK_ELEMENTS)
    inner_step = min(inner, max(1, budget // num_classes))
    group_step = max(1, budget // (num_classes * inner_step))
    for group_start in range(0, num_groups, group_step):
        for inner_start in range(0, inner, inner_step):
            yield (
                slice(group_start, min(group_start + group_step, num_groups)),
                slice(inner_start, min(inner_start + inner_step, inner)),
            )


def _errors(
    chunk: torch.Tensor, targets: torch.Tensor, margins: torch.Tensor | None, margin: float, accumulate: torch.dtype
) -> torch.Tensor:
    """Margin errors of a `(b, C, i)` chunk, the target's entry 0, in the same operation order as the reference."""
    # One contiguous copy in the compute dtype; every later step works in place on it.
    errors = torch.empty(chunk.shape, dtype=accumulate, device=chunk.device)
    errors.copy_(chunk)
    index = targets[:, None, :]
    errors -= errors.gather(1, index)
    errors += margins[targets][:, None, :] if margins is not None else margin
    errors.clamp_min_(0)
    return errors.scatter_(1, index, 0.0)


def forward(
    inputs: KernelInputs, threshold: bool, mean_above_zero: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample loss, threshold tau (inf where ignored) and kept count of `(B, C, I)` logits; labels `(B*I,)`.

    Returns:
        `(per_sample, tau, kept, label_error)`: samples whose label is neither in `[0, C)` nor `ignore_index` are
        treated as ignored and flagged in the one-element int32 `label_error` (no host synchronisation).
    """
    grouped, labels, margins, margin, ignore_index = inputs
    num_groups, num_classes, inner = grouped.shape
    accumulate = torch.float64 if grouped.dtype == torch.float64 else torch.float32
    labels = labels.view(num_groups, inner)
    in_range = (labels >= 0) & (labels < num_classes)
    label_error = ((labels != ignore_index) & ~in_range).any().to(torch.int32).reshape(1)
    valid = in_range & (labels != ignore_index)
    targets = torch.where(valid, labels, 0)
    per_sample = torch.empty(num_groups, inner, dtype=accumulate, device=grouped.device)
    tau = torch.empty_like(per_sample)
    kept = torch.empty(num_groups, inner, dtype=torch.int32, device=grouped.device)
    for groups, positions in _chunks(num_groups, num_classes, inner, grouped.device):
        errors = _errors(grouped[groups, :, positions], targets[groups, positions], margins, margin, accumulate)
        if threshold:
            chunk_tau = errors.sum(dim=1) / num_classes
        else:
            chunk_tau = torch.zeros_like(errors[:, 0])
        chunk_tau.masked_fill_(~valid[groups, positions], float("inf"))
        keep = errors >= chunk_tau[:, None]
        keep &= errors > 0
        chunk_kept = keep.sum(dim=1, dtype=torch.int32)
        kept_sum = errors.mul_(keep).sum(dim=1)
        divisor = chunk_kept.clamp_min(1).to(accumulate) if mean_above_zero else num_classes
        per_sample[groups, positions] = kept_sum / divisor
        tau[groups, positions] = chunk_tau
        kept[groups, positions] = chunk_kept
    return per_sample.view(-1), tau.view(-1), kept.view(-1), label_error


def backward(inputs: KernelInputs, tau: torch.Tensor, kept: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Gradient of `sum(weight * per_sample)`: `+weight` on kept classes, `-kept * weight` on the target."""
    grouped, labels, margins, margin, ignore_index = inputs
    num_groups, num_classes, inner = grouped.shape
    accumulate = weight.dtype
    labels = labels.view(num_groups, inner)
    # Flagged labels were treated as ignored forward (tau = inf): any in-range index will do here.
    targets = torch.where((labels != ignore_index) & (labels >= 0) & (labels < num_classes), labels, 0)
    tau, kept, weight = tau.view(num_groups, inner), kept.view(num_groups, inner), weight.view(num_groups, inner)
    grad = torch.empty_like(grouped, memory_format=torch.contiguous_format)
    for groups, positions in _chunks(num_groups, num_classes, inner, grouped.device):
        errors = _errors(grouped[groups, :, positions], targets[groups, positions], margins, margin, accumulate)
        chunk_weight = weight[groups, positions][:, None]
        keep = errors >= tau[groups, positions][:, None]
        keep &= errors > 0
        chunk_grad = errors.copy_(keep).mul_(chunk_weight)
        target_grad = -kept[groups, positions][:, None].to(accumulate) * chunk_weight
        chunk_grad.scatter_(1, targets[groups, positions][:, None], target_grad)
        grad[groups, :, positions] = chunk_grad
    return grad
