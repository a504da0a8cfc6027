"""An LM head's loss, forward+backward: the fused linear HEM head against the head's matmul + a loss on the logits.

    python benchmarks/fused_linear_bench.py [--tokens 4096] [--hidden 1024] [--vocab 32000] [--threads 2]
                                            [--repeats 3] [--quick] [--device cpu|cuda] [--json FILE]

Methods, each one forward+backward from the `(N, H)` hidden states and the `(V, H)` head weight to their gradients
(returned by `torch.autograd.grad`, so that every method allocates them afresh), float32:

* `matmul + F.cross_entropy` — `F.cross_entropy(hidden @ W.T, labels)`: what a causal LM computes (the baseline of
  every ratio);
* `matmul + hem_loss` — `hem_loss(hidden @ W.T, labels, class_dim=-1)` with hf_hem's fused kernel;
* `fused linear HEM` — `fused_linear_hem_loss(hidden, W, labels)`, which never holds the `(N, V)` logits;
* `fused linear HEM, loss only` — the same under `torch.no_grad()`: the head's forward matmul and the kernel, no
  gradient. The fused head computes its gradients inside its forward pass, so its "backward time" is its
  forward+backward time minus this.

The violating fraction (the share of tokens that miss their margin, margin 1) is set by the hidden states: the
states of the tokens that are to meet the margin get `10 * W[t] / |W[t]|^2` added, which raises their target
logit by 10 and any other logit by about `10 / sqrt(H)`. The fraction each case reaches is measured (the loss's
violating count) and printed. HEM's methods run at 100%, 10% and 1%; cross-entropy does not depend on it.

Times are medians of `--repeats` rounds in which every method runs once, in an order rotated from round to round
(`loss_bench.interleaved_medians`), so that load from other processes falls on all methods alike. "Extra peak" is
the peak memory of one forward+backward above what was allocated before it (inputs, weight), the gradients
included: on CPU the process's peak resident set (`loss_bench.CpuPeakMemory`: Linux `VmHWM` reset before each
call, glibc's mmap threshold fixed so freed tensors leave the process), on CUDA the allocator's peak. Memory is
measured after all timings (fixing glibc's threshold slows every large allocation) and is the median of
`--memory-repeats` calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


sys.path.insert(0, str(Path(__file__).resolve().parent))
from loss_bench import MIB, CpuPeakMemory, cpu_name, cuda_peak, interleaved_medians, release  # noqa: E402

from hf_hem import fused_linear_hem_loss, hem_loss  # noqa: E402
from hf_hem.losses import kernels  # noqa: E402
from hf_hem.losses.fused_linear import default_chunk_size  # noqa: E402


BASELINE = "matmul + F.cross_entropy"
MARGIN = 1.0
BOOST = 10.0  # target-logit raise of the tokens that are to meet the margin (see the module docstring)


def make_inputs(tokens, hidden_size, vocab, device, seed=0):
    """Hidden states `(N, H)` with entries N(0, 1), a head `(V, H)` scaled as at initialisation (logits ~ N(0, 1)),
    uniform random labels."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, hidden_size, generator=generator)
    weight = torch.randn(vocab, hidden_size, generator=generator) / hidden_size**0.5
    labels = torch.randint(0, vocab, (tokens,), generator=generator)
    return hidden.to(device), weight.to(device).requires_grad_(), labels.to(device)


def with_violating_fraction(hidden, weight, labels, fraction, seed=1):
    """Hidden states whose tokens outside a random `fraction` meet their margin by far (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    meets = torch.rand(labels.shape, generator=generator).to(labels.device) >= fraction
    target_rows = weight.detach()[labels[meets]]
    boosted = hidden.clone()
    boosted[meets] += BOOST * target_rows / target_rows.square().sum(1, keepdim=True)
    return boosted.requires_grad_()


def measured_fraction(hidden, weight, labels, chunk_size) -> float:
    with torch.no_grad():
        _, _, count = fused_linear_hem_loss(
            hidden, weight, labels, margin=MARGIN, chunk_size=chunk_size, return_stats=True
        )
    return int(count) / labels.numel()


def methods(inputs_by_fraction, weight, labels, fractions, chunk_size):
    """The timed functions, by name; each runs one forward+backward and drops the gradients."""

    def cross_entropy(hidden):
        loss = F.cross_entropy(hidden @ weight.t(), labels)
        torch.autograd.grad(loss, (hidden, weight))

    def unfused_hem(hidden):
        loss = hem_loss(hidden @ weight.t(), labels, MARGIN, class_dim=-1)
        torch.autograd.grad(loss, (hidden, weight))

    def fused(hidden):
        loss = fused_linear_hem_loss(hidden, weight, labels, margin=MARGIN, chunk_size=chunk_size)
        torch.autograd.grad(loss, (hidden, weight))

    def fused_loss_only(hidden):
        with torch.no_grad():
            fused_linear_hem_loss(hidden, weight, labels, margin=MARGIN, chunk_size=chunk_size)

    functions = {BASELINE: lambda: cross_entropy(inputs_by_fraction[fractions[0]])}
    for fraction in fractions:
        hidden = inputs_by_fraction[fraction]
        functions[f"matmul + hem_loss @{fraction:.0%}"] = lambda hidden=hidden: unfused_hem(hidden)
        functions[f"fused linear HEM @{fraction:.0%}"] = lambda hidden=hidden: fused(hidden)
    hidden = inputs_by_fraction[fractions[0]]
    functions[f"fused linear HEM, loss only @{fractions[0]:.0%}"] = lambda: fused_loss_only(hidden)
    return functions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--quick", action="store_true", help="1,024 tokens x hidden 256 x vocabulary 8,000")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--memory-repeats", type=int, default=1)
    parser.add_argument("--fractions", default="1,0.1,0.01", help="violating fractions, the first one also for CE")
    parser.add_argument("--chunk-size", type=int, default=None, help="tokens per chunk (default: chosen from memory)")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.hidden, args.vocab = 1024, 256, 8000
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    fractions = [float(value) for value in args.fractions.split(",")]

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
        hardware = f"{cpu_name()}, {torch.get_num_threads()} threads; CPU kernel: {kernels.cpu_kernel.status()}"
    else:
        hardware = torch.cuda.get_device_name()
    chunk_size = args.chunk_size or default_chunk_size(args.tokens, args.hidden, args.vocab)
    hidden, weight, labels = make_inputs(args.tokens, args.hidden, args.vocab, args.device)
    inputs_by_fraction = {
        fraction: with_violating_fraction(hidden, weight, labels, fraction) for fraction in fractions
    }
    del hidden
    reached = {
        fraction: measured_fraction(inputs_by_fraction[fraction], weight, labels, chunk_size) for fraction in fractions
    }
    logits_mib = args.tokens * args.vocab * 4 / MIB
    print(
        f"{args.tokens} tokens x hidden {args.hidden} x vocabulary {args.vocab}, float32, {args.device}: {hardware}, "
        f"torch {torch.__version__}; chunk {chunk_size} tokens; full logits would be {logits_mib:.0f} MiB"
    )
    print("violating fraction reached: " + ", ".join(f"{f:.0%} -> {reached[f]:.2%}" for f in fractions))

    functions = methods(inputs_by_fraction, weight, labels, fractions, chunk_size)
    seconds = interleaved_medians(functions, args.device, args.repeats, warmup=args.warmup)
    release(args.device)

    # Memory: CE, the unfused HEM and the fused head at the first (largest) fraction, and the fused head at the last.
    measure = cuda_peak if args.device == "cuda" else CpuPeakMemory().measure
    memory_names = [
        BASELINE,
        f"matmul + hem_loss @{fractions[0]:.0%}",
        f"fused linear HEM @{fractions[0]:.0%}",
        f"fused linear HEM @{fractions[-1]:.0%}",
        f"fused linear HEM, loss only @{fractions[0]:.0%}",
    ]
    peaks = {}
    for name in dict.fromkeys(memory_names):
        values = []
        for _ in range(args.memory_repeats):
            release(args.device)
            values.append(measure(functions[name]))
        peaks[name] = None if values[0] is None else statistics.median(values)

    loss_only = seconds[f"fused linear HEM, loss only @{fractions[0]:.0%}"]
    rows = []
    print("\n| method | fwd+bwd s | x CE time | extra peak MiB | x CE extra peak | gradient part s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, value in seconds.items():
        peak = peaks.get(name)
        gradient_part = value - loss_only if name.startswith("fused linear HEM @") else None
        row = {
            "method": name,
            "seconds": value,
            "time_vs_ce": value / seconds[BASELINE],
            "extra_peak_mib": None if peak is None else peak / MIB,
            "peak_vs_ce": None if peak is None or peaks[BASELINE] is None else peak / max(peaks[BASELINE], 1.0),
            "gradient_part_seconds": gradient_part,
        }
        rows.append(row)
        print(
            f"| {name} | {value:.3f} | {row['time_vs_ce']:.2f} | "
            + ("n/a" if peak is None else f"{row['extra_peak_mib']:.0f}")
            + " | "
            + ("" if row["peak_vs_ce"] is None else f"{row['peak_vs_ce']:.3f}")
            + " | "
            + ("" if gradient_part is None else f"{gradient_part:.3f}")
            + " |"
        )
    print(
        "\n'gradient part' = fused fwd+bwd minus its loss-only forward: the head's backward work, done inside the fused "
        "forward pass; it should fall with the violating fraction."
    )
    if args.json:
        settings = dict(vars(args), chunk_size=chunk_size, hardware=hardware, reached_fractions=reached)
        with open(args.json, "w") as handle:
            json.dump({"settings": settings, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
