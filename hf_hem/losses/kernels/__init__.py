"""Fused kernels for HEM and the multi-class margin family: loss and sparse gradient without an autograd graph.

Backends (picked by [`resolve_implementation`] with `implementation="auto"`):

- `"triton"`: Triton kernels for CUDA tensors (float32, bfloat16, float16) when `triton` is installed.
- `"cpu"`: a small C++ library (`hem_cpu.cpp`) built with the system compiler on first use and cached.
- `"torch"`: chunked torch operations, any device and dtype; the fallback.
- `"reference"`: the plain autograd implementation in `hf_hem.losses.hem`, kept as the definition.
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


__all__ = [
    "IMPLEMENTATIONS",
    "FusedMarginFamily",
    "cpu_kernel",
    "fused_margin_family_loss",
    "group_logits",
    "resolve_implementation",
    "triton_available",
]
