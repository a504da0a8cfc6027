"""Triton kernels for the margin family on CUDA: one read of the logits forward, one read and one write backward.

A program owns a block of samples and walks over the classes in blocks, so it reads `(N, C, d1, ...)` segmentation
logits in place (samples contiguous, classes strided) as well as `(N, C)` rows (classes contiguous), which include
`(N, L, C)` token logits with `class_dim=-1`, grouped as `(N * L, C)` rows without a copy. Forward writes
per-sample loss, threshold and kept count; backward recomputes which classes are kept and writes the sparse
gradient. Under `TRITON_INTERPRET=1` the same kernels run on CPU tensors, which is how the tests check them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._inputs import KernelInputs


# CUDA limits the second grid dimension (one program row per group of samples).
MAX_GRID_GROUPS = 65535


@triton.jit
def _sample_block(
    x_ptr, labels_ptr, margins_ptr, group_offset, S, stride_g, stride_s, stride_c, margin, ignore_index,
    C: tl.constexpr, HAS_MARGINS: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    # The program's block: samples along grid axis 0, groups along axis 1 (see `_launch`).
    group = tl.program_id(1).to(tl.int64) + group_offset
    s = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    in_bounds = s < S
    sample = group * S + s
    base = group * stride_g + s * stride_s
    label = tl.load(labels_ptr + sample, mask=in_bounds, other=ignore_index)
    valid = in_bounds & (label != ignore_index)
    bad = valid & ((label < 0) | (label >= C))
    active = valid & (label >= 0) & (label < C)
    target = tl.where(active, label, -1)
    safe_label = tl.where(active, label, 0)
    target_logit = tl.load(x_ptr + base + safe_label * stride_c, mask=active, other=0.0).to(tl.float32)
    if HAS_MARGINS:
        sample_margin = tl.load(margins_ptr + safe_label, mask=active, other=0.0).to(tl.float32)
    else:
        sample_margin = tl.zeros([BLOCK_S], dtype=tl.float32) + margin
    return s, in_bounds, sample, base, bad, active, target, target_logit, sample_margin


@triton.jit
def _class_block(x_ptr, base, c_start, stride_c, in_bounds, target_logit, sample_margin, target,
                 C: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    c = c_start + tl.arange(0, BLOCK_C)
    c_in = c < C
    offsets = base[None, :] + c[:, None].to(tl.int64) * stride_c
    mask = c_in[:, None] & in_bounds[None, :]
    y = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    errors = (y - target_logit[None, :]) + sample_margin[None, :]
    errors = tl.where(errors < 0.0, 0.0, errors)  # keeps NaN, like clamp_min
    other_class = mask & (c[:, None] != target[None, :])
    return offsets, mask, errors, other_class


@triton.jit
def _forward_kernel(
    x_ptr, labels_ptr, margins_ptr, loss_ptr, tau_ptr, kept_ptr, error_ptr,
    group_offset, S, stride_g, stride_s, stride_c, margin, ignore_index,
    C: tl.constexpr, HAS_MARGINS: tl.constexpr, THRESHOLD: tl.constexpr, MEAN_ABOVE_ZERO: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ONE_PASS: tl.constexpr,
):  # fmt: skip
    s, in_bounds, sample, base, bad, active, target, target_logit, sample_margin = _sample_block(
        x_ptr, labels_ptr, margins_ptr, group_offset, S, stride_g, stride_s, stride_c, margin, ignore_index,
        C, HAS_MARGINS, BLOCK_S,
    )  # fmt: skip
    if tl.max(bad.to(tl.int32), axis=0) > 0:  # only on bad labels: one atomic per program would serialise
        tl.atomic_max(error_ptr, 1)

    if ONE_PASS:
        # All classes fit in one block: the errors stay in registers between the threshold and the kept sums.
        offsets, mask, errors, other_class = _class_block(
            x_ptr, base, 0, stride_c, in_bounds, target_logit, sample_margin, target, C, BLOCK_C
        )
        if THRESHOLD:
            tau = tl.sum(tl.where(other_class, errors, 0.0), axis=0) / C  # the target's 0 counts in the mean
        else:
            tau = tl.zeros([BLOCK_S], dtype=tl.float32)
        tau = tl.where(active, tau, float("inf"))
        keep = other_class & (errors > 0.0) & (errors >= tau[None, :])
        # errors * 0 rather than 0 for the dropped entries: a NaN error stays visible, as in the reference.
        dropped = tl.where(other_class & active[None, :], errors * 0.0, 0.0)
        kept_sum = tl.sum(tl.where(keep, errors, dropped), axis=0)
        kept_count = tl.sum(keep.to(tl.int32), axis=0)
    else:
        # Accumulate elementwise over class blocks and reduce across classes once at the end: a reduction per
        # block would move data between threads on every iteration.
        if THRESHOLD:
            totals = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
            for c_start in range(0, C, BLOCK_C):
                offsets, mask, errors, other_class = _class_block(
                    x_ptr, base, c_start, stride_c, in_bounds, target_logit, sample_margin, target, C, BLOCK_C
                )
                totals += tl.where(other_class, errors, 0.0)
            tau = tl.sum(totals, axis=0) / C
        else:
            tau = tl.zeros([BLOCK_S], dtype=tl.float32)
        tau = tl.where(active, tau, float("inf"))
        sums = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
        counts = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.int32)
        for c_start in range(0, C, BLOCK_C):
            offsets, mask, errors, other_class = _class_block(
                x_ptr, base, c_start, stride_c, in_bounds, target_logit, sample_margin, target, C, BLOCK_C
            )
            keep = other_class & (errors > 0.0) & (errors >= tau[None, :])
            dropped = tl.where(other_class & active[None, :], errors * 0.0, 0.0)
            sums += tl.where(keep, errors, dropped)
            counts += keep.to(tl.int32)
        kept_sum = tl.sum(sums, axis=0)
        kept_count = tl.sum(counts, axis=0)

    if MEAN_ABOVE_ZERO:
        loss = kept_sum / tl.maximum(kept_count, 1).to(tl.float32)
    else:
        loss = kept_sum / C
    tl.store(loss_ptr + sample, loss, mask=in_bounds)
    tl.store(tau_ptr + sample, tau, mask=in_bounds)
    tl.store(kept_ptr + sample, kept_count, mask=in_bounds)


@triton.jit
def _backward_kernel(
    x_ptr, labels_ptr, margins_ptr, tau_ptr, kept_ptr, weight_ptr, grad_ptr,
    group_offset, S, stride_g, stride_s, stride_c, margin, ignore_index,
    C: tl.constexpr, HAS_MARGINS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    s, in_bounds, sample, base, bad, active, target, target_logit, sample_margin = _sample_block(
        x_ptr, labels_ptr, margins_ptr, group_offset, S, stride_g, stride_s, stride_c, margin, ignore_index,
        C, HAS_MARGINS, BLOCK_S,
    )  # fmt: skip
    tau = tl.load(tau_ptr + sample, mask=in_bounds, other=0.0)
    kept_count = tl.load(kept_ptr + sample, mask=in_bounds, other=0)
    weight = tl.load(weight_ptr + sample, mask=in_bounds, other=0.0)
    active = active & (kept_count > 0)
    kept_value = tl.where(active, weight, 0.0)
    target_value = tl.where(active, -kept_count.to(tl.float32) * weight, 0.0)
    for c_start in range(0, C, BLOCK_C):
        offsets, mask, errors, other_class = _class_block(
            x_ptr, base, c_start, stride_c, in_bounds, target_logit, sample_margin, target, C, BLOCK_C
        )
        keep = other_class & (errors > 0.0) & (errors >= tau[None, :])
        grad = tl.where(keep, kept_value[None, :], 0.0)
        is_target = c_start + tl.arange(0, BLOCK_C)[:, None] == target[None, :]
        grad = tl.where(is_target, target_value[None, :], grad)
        tl.store(grad_ptr + offsets, grad.to(grad_ptr.dtype.element_ty), mask=mask)


def interpreting() -> bool:
    """Whether Triton runs its kernels on the CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _layout(grouped: torch.Tensor) -> tuple[int, int, int, int, int]:
    """`(groups, samples per group, group stride, sample stride, class stride)` of contiguous `(B, C, I)` logits."""
    num_groups, num_classes, inner = grouped.shape
    if inner == 1:
        # Rows: one group of B samples, classes contiguous.
        return 1, num_groups, 0, num_classes, 1
    return num_groups, inner, num_classes * inner, 1, inner


def block_sizes(num_classes: int, class_stride: int) -> tuple[int, int, int]:
    """Default `(BLOCK_S, BLOCK_C, num_warps)`, used when the configurations are not timed (see [`candidates`]).

    Rows (classes contiguous) hold up to 4096 classes of a few samples in one block, so their logits are read once
    forward. Tiles (samples contiguous, as in segmentation) walk over the classes in blocks of 4 for 512 samples:
    each class row of a block is a 2 KiB contiguous read, and the sums over classes stay within a thread. On an H200
    this was within 3% of the fastest candidate for 8x150x512x512 logits in float32 and bfloat16.
    """
    if class_stride == 1:
        block_c = triton.next_power_of_2(num_classes)
        return (max(1, 4096 // block_c), block_c, 4) if block_c <= 4096 else (1, 4096, 8)
    return 512, 4, 4


def candidates(num_classes: int, class_stride: int) -> list[tuple[int, int, int]]:
    """Configurations timed on first use of a (kernel, class count, layout, dtype, size) on CUDA; the default first."""
    default = block_sizes(num_classes, class_stride)
    block_c = triton.next_power_of_2(num_classes)
    if class_stride == 1:
        options = [default, (1, min(block_c, 4096), 4), (2, min(block_c, 2048), 4), (8, min(block_c, 512), 4)]
    else:
        options = [default, (256, 16, 4), (512, 8, 4), (1024, 4, 8), (256, 8, 4), (128, 32, 4), (128, 16, 4)]
        if block_c <= 256:
            options.append((max(16, 4096 // block_c), block_c, 4))  # every class in registers
    return list(dict.fromkeys(options))


_best_config: dict[tuple, tuple[int, int, int]] = {}


def _tuned_config(key: tuple, options: list[tuple[int, int, int]], run) -> tuple[int, int, int]:
    """The fastest of `options` for `key`, timed once with CUDA events on the call's own inputs.

    Every run writes the same outputs, so the timing runs leave a correct result behind. Timing is skipped (default
    configuration) under the interpreter, during CUDA graph capture, or with `HF_HEM_TRITON_AUTOTUNE=0`.
    """
    if key in _best_config:
        return _best_config[key]
    if (
        interpreting()
        or os.environ.get("HF_HEM_TRITON_AUTOTUNE", "1") == "0"
        or torch.cuda.is_current_stream_capturing()
    ):
        return options[0]
    timings = {}
    for config in options:
        try:
            run(config)  # compiles
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(3):
                run(config)
            end.record()
            end.synchronize()
            timings[config] = start.elapsed_time(end)
        except Exception:  # noqa: BLE001 - a configuration the compiler or the GPU rejects is simply not used
            continue
    _best_config[key] = min(timings, key=timings.get) if timings else options[0]
    return _best_config[key]


def tuned_configs() -> dict[tuple, tuple[int, int, int]]:
    """Configurations chosen so far: `(kernel, C, rows layout, dtype, log2 samples) -> (BLOCK_S, BLOCK_C, warps)`."""
    return dict(_best_config)


def _launch(kernel, grouped: torch.Tensor, config, args_before, args_after, **meta) -> None:
    num_groups, samples, stride_g, stride_s, stride_c = _layout(grouped)
    num_classes = grouped.shape[1]

    def run(chosen):
        block_s, block_c, num_warps = chosen
        if kernel is _forward_kernel:
            meta["ONE_PASS"] = block_c >= num_classes
        for group_offset in range(0, num_groups, MAX_GRID_GROUPS):
            grid = (triton.cdiv(samples, block_s), min(MAX_GRID_GROUPS, num_groups - group_offset))
            kernel[grid](
                *args_before, group_offset, samples, stride_g, stride_s, stride_c, *args_after,
                C=num_classes, BLOCK_S=block_s, BLOCK_C=block_c, num_warps=num_warps, **meta,
            )  # fmt: skip

    if config is None:
        name = "forward" if kernel is _forward_kernel else "backward"
        # Sizes within a factor of two share a choice (a training run usually has one or two).
        size_class = (num_groups * samples).bit_length()
        key = (name, num_classes, stride_c == 1, grouped.dtype, size_class)
        config = _tuned_config(key, candidates(num_classes, stride_c), run)
    run(config)


def forward(
    inputs: KernelInputs, threshold: bool, mean_above_zero: bool, config: tuple[int, int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample loss, tau and kept count of contiguous `(B, C, I)` logits (float32/bfloat16/float16).

    Args:
        config (`tuple`, *optional*): `(BLOCK_S, BLOCK_C, num_warps)`; by default the fastest of [`candidates`].

    Returns:
        `(per_sample, tau, kept, label_error)`; `label_error` is a one-element int32 tensor, non-zero when a label
        outside `[0, C)` is not `ignore_index` (left on the device so that the caller decides when to synchronise).
    """
    grouped, labels, margins, margin, ignore_index = inputs
    num_groups, _, inner = grouped.shape
    per_sample = torch.empty(num_groups * inner, dtype=torch.float32, device=grouped.device)
    tau = torch.empty_like(per_sample)
    kept = torch.empty(num_groups * inner, dtype=torch.int32, device=grouped.device)
    label_error = torch.zeros(1, dtype=torch.int32, device=grouped.device)
    if per_sample.numel() == 0:
        return per_sample, tau, kept, label_error
    margins_arg = margins if margins is not None else per_sample  # any pointer; not read without HAS_MARGINS
    _launch(
        _forward_kernel, grouped, config,
        (grouped, labels, margins_arg, per_sample, tau, kept, label_error),
        (float(margin), int(ignore_index)),
        HAS_MARGINS=margins is not None, THRESHOLD=bool(threshold), MEAN_ABOVE_ZERO=bool(mean_above_zero),
    )  # fmt: skip
    return per_sample, tau, kept, label_error


def backward(
    inputs: KernelInputs,
    tau: torch.Tensor,
    kept: torch.Tensor,
    weight: torch.Tensor,
    config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Gradient of `sum(weight * per_sample)` with respect to the `(B, C, I)` logits, in their dtype."""
    grouped, labels, margins, margin, ignore_index = inputs
    grad = torch.empty_like(grouped, memory_format=torch.contiguous_format)
    if grad.numel() == 0:
        return grad
    margins_arg = margins if margins is not None else weight
    _launch(
        _backward_kernel, grouped, config,
        (grouped, labels, margins_arg, tau, kept, weight, grad),
        (float(margin), int(ignore_index)),
        HAS_MARGINS=margins is not None,
    )  # fmt: skip
    return grad
