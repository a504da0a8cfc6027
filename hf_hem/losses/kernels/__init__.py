"""Fused kernels for HEM and the multi-class margin family: loss and sparse gradient without an autograd graph.

Backends (picked by [`resolve_implementation`] with `implementation="auto"`):

- `"triton"`: Triton kernels for CUDA tensors (float32, bfloat16, float16) when `triton` is installed.
- `"cpu"`: a small C++ library (`hem_cpu.cpp`) built with the system compiler on first use and cached.
- `"torch"`: chunked torch operations, any device and dtype; the fallback.
- `"reference"`: the plain autograd implementation (`hf_hem.losses._reference`), kept as the definition.

[`upsampled_margin_family_loss`] scores `(N, C, h, w)` logits bilinearly upsampled to the label size a block of
rows at a time; [`BlockUpsampler`] and [`row_blocks`] are its pieces, for callers that walk the same blocks.
"""

from . import _cpu as cpu_kernel
from ._function import (
    IMPLEMENTATIONS,
    FusedMarginFamily,
    fused_margin_family_loss,
    group_logits,
    resolve_implementation,
    triton_available,
)
from ._upsample import BlockUpsampler, row_blocks, upsampled_margin_family_loss


__all__ = [
    "IMPLEMENTATIONS",
    "BlockUpsampler",
    "FusedMarginFamily",
    "cpu_kernel",
    "fused_margin_family_loss",
    "group_logits",
    "resolve_implementation",
    "row_blocks",
    "triton_available",
    "upsampled_margin_family_loss",
]
