"""Wall and CPU time of one `hf-hem benchmark` command in two checkouts of hf_hem, interleaved, and whether their numbers
agree.

Each round runs the command once per checkout (the order alternates from round to round, so a machine that gets
busier or quieter favours neither), each into a fresh output folder, with that checkout first on `PYTHONPATH`. The
script then compares every run file of the two checkouts (metrics and learning curves, exactly) and prints the times,
their median ratios and the verdict.

Usage (the refactor of issue 20: `hf_hem.evaluation` -> `hf_hem.experiments`):

```bash
python benchmarks/cli_wall_time_bench.py --old /path/to/main --new . --rounds 2 -- \\
    --task ood --seeds 1 --losses ce,hem
```
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(checkout: Path, arguments: list[str], output_dir: Path) -> tuple[float, float]:
    """`(wall, CPU)` seconds of one `hf-hem benchmark` with `checkout` on `PYTHONPATH` (start-up, training, reports).

    The CPU time (user + system, of the command and its children) is the steadier figure on a shared machine, where
    the wall time also counts the time other processes held the cores."""
    environment = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "hf_hem.cli", "benchmark", *arguments, "--no_progress", "--output_dir"]
    cpu, started = _children_cpu_seconds(), time.perf_counter()
    subprocess.run([*command, str(output_dir)], env=environment, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, _children_cpu_seconds() - cpu


def run_files(output_dir: Path) -> dict[str, dict]:
    """`{task/runs/file name: run JSON}` of one output folder."""
    return {
        str(path.relative_to(output_dir)): json.loads(path.read_text()) for path in output_dir.glob("*/runs/*.json")
    }


def differences(old: dict[str, dict], new: dict[str, dict]) -> list[str]:
    """What differs between the run files of two output folders: missing files, metrics, learning curves."""
    found = [f"{name}: only in one checkout" for name in sorted(set(old) ^ set(new))]
    for name in sorted(set(old) & set(new)):
        for key, value in (("metrics", lambda run: run["metrics"]), ("curves", lambda run: run["details"]["curves"])):
            if value(old[name]) != value(new[name]):
                found.append(f"{name}: {key} differ")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="Checkout of the reference hf_hem.")
    parser.add_argument("--new", type=Path, required=True, help="Checkout of the hf_hem to compare with it.")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds of (old, new) runs (default 2).")
    parser.add_argument("benchmark_args", nargs="+", help="Arguments of `hf-hem benchmark`, after `--`.")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    checkouts = {"old": args.old.resolve(), "new": args.new.resolve()}
    times: dict[str, list[float]] = {"old": [], "new": []}
    cpu_times: dict[str, list[float]] = {"old": [], "new": []}
    problems = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            order = ["old", "new"] if round_index % 2 == 0 else ["new", "old"]
            folders = {}
            for name in order:
                folders[name] = Path(scratch) / f"{name}{round_index}"
                seconds, cpu = run_once(checkouts[name], args.benchmark_args, folders[name])
                times[name].append(seconds)
                cpu_times[name].append(cpu)
                print(f"round {round_index + 1} {name}: {seconds:.1f} s wall, {cpu:.1f} s CPU", flush=True)
            problems += differences(run_files(folders["old"]), run_files(folders["new"]))
            if not run_files(folders["new"]):
                problems.append(f"round {round_index + 1}: no run files were written")
    print(f"command: hf-hem benchmark {' '.join(args.benchmark_args)}")
    for kind, measured in (("wall", times), ("CPU", cpu_times)):
        for name in ("old", "new"):
            print(f"{kind} {name} ({checkouts[name]}): " + ", ".join(f"{t:.1f}" for t in measured[name]) + " s")
        ratio = statistics.median(new / old for old, new in zip(measured["old"], measured["new"]))
        print(f"new / old {kind} time, median over rounds: {ratio:.3f}")
    print("numbers: " + ("identical run files (metrics and learning curves)" if not problems else "; ".join(problems)))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
