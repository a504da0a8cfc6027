#!/usr/bin/env bash
# One short GPU check for the fused HEM kernels (issue 7): Triton correctness tests (interpreter, then CUDA, in
# separate processes), the loss benchmark, every Triton block configuration timed alone with its effective bandwidth,
# the loss with upsampling inside it (SegFormer's quarter-resolution logits), the train-step benchmark, and HEMTrainer
# under FSDP (issue 19: skip_zero_loss refused, the weights of the unsharded trainer; one process, as one GPU allows).
#
#     bash benchmarks/gpu_check.sh            # logs and JSON go to $OUT (default: ./gpu_check_out)
#
# Needs torch with CUDA, triton and transformers (no network, nothing downloaded). About three minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PYTHON=${PYTHON:-python3}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PYTHON" -c "import sys, numpy, torch, triton, transformers; print(sys.version.split()[0], 'numpy', numpy.__version__, 'torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/environment.txt"

{
  timeout 90 "$PYTHON" -m pytest tests/test_kernels.py -q -p no:cacheprovider -k "triton and not cuda" 2>&1 | tail -n 40
  timeout 150 "$PYTHON" -m pytest tests/test_kernels.py -q -p no:cacheprovider -k "cuda" 2>&1 | tail -n 60
  timeout 60 "$PYTHON" -m pytest tests/test_upsampled_loss.py -q -p no:cacheprovider 2>&1 | tail -n 20
  timeout 90 "$PYTHON" -m pytest tests/test_fused_linear.py -q -p no:cacheprovider -k "cuda or triton" 2>&1 | tail -n 20
} | tee "$OUT/tests.txt"

# The fused linear HEM head (issue 21) on the GPU: Triton per-chunk kernel, 8,192 tokens x 4,096 x 128,256.
timeout 120 "$PYTHON" benchmarks/fused_linear_bench.py --device cuda --tokens 8192 --hidden 4096 --vocab 128256 \
  --repeats 5 --warmup 2 --json "$OUT/fused_linear_bench.json" 2>&1 | tee "$OUT/fused_linear_bench.txt"

timeout 150 "$PYTHON" benchmarks/loss_bench.py --device cuda --repeats 20 --json "$OUT/loss_bench.json" 2>&1 \
  | tee "$OUT/loss_bench.txt"

timeout 90 "$PYTHON" benchmarks/upsampled_loss_bench.py --device cuda --repeats 20 2>&1 \
  | tee "$OUT/upsampled_loss_bench.txt"

timeout 90 "$PYTHON" - <<'PY' 2>&1 | tee "$OUT/triton_sweep.txt"
# Forward and backward kernels alone on 8x150x512x512, for every candidate block configuration, against a copy.
import torch
from triton.testing import do_bench

from hf_hem.losses.kernels import _triton
from hf_hem.losses.kernels._inputs import KernelInputs

for dtype in (torch.float32, torch.bfloat16):
    x = torch.randn(8, 150, 512 * 512, device="cuda").to(dtype)
    labels = torch.randint(0, 150, (8 * 512 * 512,), device="cuda")
    size_gb = x.numel() * x.element_size() / 1e9
    copy_ms = do_bench(lambda: x.clone())
    print(f"{dtype}: logits {size_gb:.2f} GB, clone {copy_ms:.3f} ms ({2 * size_gb / copy_ms:.2f} TB/s read+write)")
    inputs = KernelInputs(x, labels, None, 0.04, -100)
    outputs = _triton.forward(inputs, True, True)  # autotuned
    weight = torch.rand(labels.shape, device="cuda")
    _triton.backward(inputs, outputs[1], outputs[2], weight)
    print("  chosen:", {key[0]: value for key, value in _triton.tuned_configs().items() if key[3] == dtype and key[1] == 150})
    for config in _triton.candidates(150, 512 * 512):
        try:
            forward_ms = do_bench(lambda: _triton.forward(inputs, True, True, config))
            backward_ms = do_bench(
                lambda: _triton.backward(inputs, outputs[1], outputs[2], weight, config)
            )
        except Exception as error:  # a configuration the compiler rejects is reported, not fatal
            print(f"  {config}: failed ({type(error).__name__}: {str(error)[:120]})")
            continue
        print(
            f"  BLOCK_S, BLOCK_C, warps = {config}: forward {forward_ms:.3f} ms ({size_gb / forward_ms:.2f} TB/s), "
            f"backward {backward_ms:.3f} ms ({2 * size_gb / backward_ms:.2f} TB/s)"
        )
    del x, labels, outputs, weight
    torch.cuda.empty_cache()
PY

timeout 150 "$PYTHON" benchmarks/train_step_bench.py --device cuda --json "$OUT/train_step.json" 2>&1 \
  | tee "$OUT/train_step.txt"

# FSDP is enabled by accelerate only on accelerators: HEMTrainer's FSDP path (each micro-batch normalised before its
# backward, skip_zero_loss refused) is checked here. One process (NCCL takes one rank per GPU).
timeout 150 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/sharded_engine_check.py 2>&1 \
  | grep -v "^{" | tee "$OUT/sharded_engine_check.txt"

# Issue 22: the violating samples of an accumulation window backpropagated per micro-batch or gathered into full
# chunks (skip_gather_window), against the step without skipping; ConvNeXt (16 px) and a ViT-S-sized encoder.
timeout 150 "$PYTHON" benchmarks/window_gather_bench.py --device cuda --repeats 10 --json "$OUT/window_gather.json" 2>&1 \
  | tee "$OUT/window_gather.txt"
