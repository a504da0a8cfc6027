"""Session-wide test set-up."""

import os

import torch


# Triton decides at decoration time whether a `@triton.jit` function (its own `tl.zeros` included) runs on the CPU
# interpreter, so the switch must be on before anything imports `triton.language` (transformers and accelerate can).
# Without a GPU the Triton kernels are tested on that interpreter; with one they run for real.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
