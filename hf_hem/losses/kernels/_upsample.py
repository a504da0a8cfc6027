"""Margin-family losses on bilinearly upsampled logits, without materialising the upsampled logits.

SegFormer-style models predict `(N, C, h, w)` logits at a quarter of the label resolution; their loss upsamples them
to the `(N, H, W)` labels (`F.interpolate(..., mode="bilinear", align_corners=False)`) first. At 512x512 with 150
classes that is 16x the logits the model produced, kept alive until backward. Here the upsampled logits exist one
block of output rows at a time: forward upsamples a block, runs the fused kernel on it and keeps two numbers per
pixel (the threshold and the kept count); backward upsamples the block again, writes its sparse gradient with the
fused kernel and adds it back onto the low-resolution logits with the transpose of the interpolation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .._common import check_margin, check_reduction
from .._reference import _margin_family_loss_reference
from ._function import (
    backend_backward,
    backend_forward,
    check_backend,
    check_label_flag,
    kept_error_weight,
    kernel_labels_and_margins,
    reduce_kernel_output,
    resolve_implementation,
)
from ._inputs import KernelInputs


#: Elements of one block of upsampled logits, per device type: small enough to stay in cache on CPU, large enough on
#: a GPU that the per-block launches do not dominate.
CHUNK_ELEMENTS = {"cpu": 1 << 21}
DEFAULT_CHUNK_ELEMENTS = 1 << 26


def bilinear_axis(in_size: int, out_size: int, device: torch.device, dtype: torch.dtype):
    """Source indices and weights of one axis of `F.interpolate(mode="bilinear", align_corners=False)`.

    Computed as ATen does (scale `in / out` and source coordinate `scale * (dst + 0.5) - 0.5` in the compute dtype,
    clamped at 0), so the upsampled values agree with `F.interpolate` to rounding.

    Returns:
        `(index0, index1, weight0, weight1)`: `(out_size,)` tensors; output `o` is
        `weight0[o] * x[index0[o]] + weight1[o] * x[index1[o]]`.
    """
    scale = torch.tensor(in_size, dtype=dtype) / out_size
    source = (scale * (torch.arange(out_size, dtype=dtype) + 0.5) - 0.5).clamp_min(0)
    index0 = source.floor().long().clamp_max(in_size - 1)
    weight1 = (source - index0.to(dtype)).clamp(0, 1)
    index1 = torch.where(index0 < in_size - 1, index0 + 1, index0)
    return index0.to(device), index1.to(device), (1 - weight1).to(device), weight1.to(device)


class BlockUpsampler:
    """Blocks of output rows of the bilinear upsampling of `(N, C, h, w)` logits to `(H, W)`, and its transpose."""

    def __init__(self, logits: torch.Tensor, size: tuple[int, int], compute_dtype: torch.dtype):
        self.logits = logits
        self.compute_dtype = compute_dtype
        self.size = size
        height = logits.shape[-2]
        self.rows = bilinear_axis(height, size[0], logits.device, compute_dtype)

    def _source_rows(self, start: int, stop: int) -> tuple[int, int]:
        return int(self.rows[0][start]), int(self.rows[1][stop - 1]) + 1

    def block(self, start: int, stop: int) -> torch.Tensor:
        """The upsampled logits of output rows `[start, stop)`, contiguous `(N, C, stop - start, W)`."""
        first, last = self._source_rows(start, stop)
        source = self.logits[:, :, first:last].to(self.compute_dtype)
        row0, row1, row_weight0, row_weight1 = (part[start:stop] for part in self.rows)
        # The height by hand (a block's rows do not line up with an interpolation of its source rows), then the
        # width with `F.interpolate`, which leaves the height as it is (source row = output row, weight 1).
        tall = source.index_select(2, row0 - first) * row_weight0[:, None]
        tall.add_(source.index_select(2, row1 - first) * row_weight1[:, None])
        if self.size[1] == tall.shape[-1]:
            return tall
        return F.interpolate(tall, size=(stop - start, self.size[1]), mode="bilinear", align_corners=False)

    def add_transpose(self, grad_block: torch.Tensor, start: int, stop: int, grad_logits: torch.Tensor) -> None:
        """Adds the gradient of output rows `[start, stop)` onto the gradient of the low-resolution logits."""
        first, last = self._source_rows(start, stop)
        row0, row1, row_weight0, row_weight1 = (part[start:stop] for part in self.rows)
        batch, classes, rows, _ = grad_block.shape
        width = self.logits.shape[-1]
        if self.size[1] != width:
            grad_block = torch.ops.aten.upsample_bilinear2d_backward(
                grad_block, [rows, self.size[1]], [batch, classes, rows, width], False
            )
        source = grad_block.new_zeros(batch, classes, last - first, width)
        source.index_add_(2, row0 - first, grad_block * row_weight0[:, None])
        source.index_add_(2, row1 - first, grad_block * row_weight1[:, None])
        grad_logits[:, :, first:last] += source


def row_blocks(
    logits: torch.Tensor, size: tuple[int, int], chunk_elements: int | None = None
) -> Iterator[tuple[int, int]]:
    """`(start, stop)` output-row ranges whose upsampled logits hold about `chunk_elements` elements each."""
    budget = chunk_elements or CHUNK_ELEMENTS.get(logits.device.type, DEFAULT_CHUNK_ELEMENTS)
    batch, classes = logits.shape[:2]
    step = max(1, budget // max(1, batch * classes * size[1]))
    for start in range(0, size[0], step):
        yield start, min(start + step, size[0])


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


class FusedUpsampledMarginFamily(torch.autograd.Function):
    """Per-pixel margin-family losses of `(N, C, h, w)` logits upsampled to `(H, W)`, one block of rows at a time.

    Outputs `(per_pixel, kept, label_error)` like [`FusedMarginFamily`], for the `N * H * W` pixels. Saves the
    low-resolution logits, the labels and two numbers per pixel.
    """

    @staticmethod
    def forward(ctx, logits, labels, size, margins, margin, ignore_index, threshold, mean_above_zero, backend, chunk):
        batch, classes = logits.shape[:2]
        upsampler = BlockUpsampler(logits, size, _compute_dtype(logits))
        pixels = labels.view(batch, *size)
        per_pixel = torch.empty((batch, *size), dtype=upsampler.compute_dtype, device=logits.device)
        tau = torch.empty_like(per_pixel)
        kept = torch.empty((batch, *size), dtype=torch.int32, device=logits.device)
        label_error = torch.zeros(1, dtype=torch.int32, device=logits.device)
        for start, stop in row_blocks(logits, size, chunk):
            grouped = upsampler.block(start, stop).view(batch, classes, -1)
            block_labels = pixels[:, start:stop].reshape(-1)
            inputs = KernelInputs(grouped, block_labels, margins, margin, ignore_index)
            block_loss, block_tau, block_kept, block_error = backend_forward(
                backend, inputs, threshold, mean_above_zero
            )
            per_pixel[:, start:stop] = block_loss.view(batch, stop - start, -1)
            tau[:, start:stop] = block_tau.view(batch, stop - start, -1)
            kept[:, start:stop] = block_kept.view(batch, stop - start, -1)
            label_error += block_error.to(label_error.device)
        ctx.save_for_backward(logits, labels, margins, tau, kept)
        ctx.size, ctx.chunk, ctx.backend = size, chunk, backend
        ctx.margin, ctx.ignore_index, ctx.mean_above_zero = margin, ignore_index, mean_above_zero
        ctx.mark_non_differentiable(kept, label_error)
        return per_pixel.view(-1), kept.view(-1), label_error

    @staticmethod
    def backward(ctx, grad_per_pixel, _grad_kept, _grad_label_error):
        logits, labels, margins, tau, kept = ctx.saved_tensors
        batch, classes = logits.shape[:2]
        size = ctx.size
        upsampler = BlockUpsampler(logits, size, _compute_dtype(logits))
        weight = kept_error_weight(grad_per_pixel, tau.view(-1), kept.view(-1), classes, ctx.mean_above_zero)
        weight = weight.view(batch, *size)
        pixels = labels.view(batch, *size)
        grad_logits = torch.zeros(logits.shape, dtype=upsampler.compute_dtype, device=logits.device)
        for start, stop in row_blocks(logits, size, ctx.chunk):
            grouped = upsampler.block(start, stop).view(batch, classes, -1)
            inputs = KernelInputs(grouped, pixels[:, start:stop].reshape(-1), margins, ctx.margin, ctx.ignore_index)
            grad_block = backend_backward(
                ctx.backend,
                inputs,
                tau[:, start:stop].reshape(-1),
                kept[:, start:stop].reshape(-1),
                weight[:, start:stop].reshape(-1),
            )
            upsampler.add_transpose(grad_block.view(batch, classes, stop - start, -1), start, stop, grad_logits)
        return grad_logits.to(logits.dtype), None, None, None, None, None, None, None, None, None


def upsampled_margin_family_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin: float | torch.Tensor,
    *,
    threshold: bool,
    mean_above_zero: bool,
    ignore_index: int = -100,
    reduction: str = "mean",
    implementation: str = "auto",
    chunk_elements: int | None = None,
) -> torch.Tensor:
    """A margin-family loss of `(N, C, h, w)` logits bilinearly upsampled to the `(N, H, W)` label size.

    Equals the loss of `F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)` (the
    upsampling of SegFormer's own loss) to rounding, without ever holding the upsampled logits: blocks of output
    rows are upsampled, scored and dropped. Half-precision logits are upsampled in float32 (the reference upsamples
    in their own precision).

    Args:
        logits (`torch.Tensor`): `(N, C, h, w)` unnormalised scores.
        labels (`torch.Tensor`): `(N, H, W)` class indices or `ignore_index`.
        margin, threshold, mean_above_zero, ignore_index, reduction, implementation: as
            [`fused_margin_family_loss`]; `implementation="reference"` upsamples with `F.interpolate` and uses the
            reference loss.
        chunk_elements (`int`, *optional*): elements of one block of upsampled logits (default: about 8 MiB of
            float32 on CPU, 256 MiB on a GPU).

    Returns:
        `torch.Tensor`: the reduced loss, or `(N, H, W)` per-pixel losses for `reduction="none"`.
    """
    check_reduction(reduction)
    if not (torch.is_tensor(logits) and torch.is_floating_point(logits) and logits.dim() == 4):
        raise ValueError(
            f"upsampled logits must be a floating point tensor of shape (N, C, h, w), got "
            f"{type(logits).__name__} of shape {tuple(getattr(logits, 'shape', ()))}."
        )
    if not (torch.is_tensor(labels) and labels.dim() == 3 and labels.shape[0] == logits.shape[0]):
        raise ValueError(
            f"labels must have shape (N, H, W) with N={logits.shape[0]} to upsample logits of shape "
            f"{tuple(logits.shape)} to, got {tuple(getattr(labels, 'shape', ()))}."
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}.")
    num_classes = logits.shape[1]
    margin = check_margin(margin, num_classes)
    size = (int(labels.shape[1]), int(labels.shape[2]))
    backend = resolve_implementation(logits, margin, implementation)
    if backend == "reference" or labels.numel() == 0:
        upsampled = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return _margin_family_loss_reference(
            upsampled,
            labels,
            margin,
            threshold=threshold,
            mean_above_zero=mean_above_zero,
            ignore_index=ignore_index,
            reduction=reduction,
        )
    compute = _compute_dtype(logits)
    check_backend(backend, logits.device, compute)  # the kernels see blocks of upsampled logits in `compute`
    flat_labels, margins, scalar_margin = kernel_labels_and_margins(labels, margin, logits.device, compute)
    per_pixel, kept, label_error = FusedUpsampledMarginFamily.apply(
        logits,
        flat_labels,
        size,
        margins,
        scalar_margin,
        ignore_index,
        threshold,
        mean_above_zero,
        backend,
        chunk_elements,
    )
    check_label_flag(label_error, flat_labels, num_classes, ignore_index)
    return reduce_kernel_output(per_pixel, kept, flat_labels, labels.shape, ignore_index, mean_above_zero, reduction)
