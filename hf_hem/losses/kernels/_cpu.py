"""Builds `hem_cpu.cpp` with the system C++ compiler on first use and calls it through ctypes.

The library needs no Python or torch headers, so building it takes about as long as compiling one small C++ file
(a few seconds on two cores). It is cached under `$HF_HEM_KERNEL_CACHE`, else `$XDG_CACHE_HOME/hf_hem/kernels`,
else `~/.cache/hf_hem/kernels`, keyed by a hash of the source, the compiler and its flags. Without a compiler, or
with `HF_HEM_CPU_KERNEL=0`, the portable torch implementation is used instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

from ._inputs import KernelInputs


SOURCE = Path(__file__).with_name("hem_cpu.cpp")
# -fno-trapping-math lets the compiler turn the kept/not-kept selections into vector blends (it changes no result);
# -ffp-contract=off keeps a*b+c as two roundings, like torch.
COMPILE_FLAGS = ("-O3", "-fno-trapping-math", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC", "-pthread")
# Wider vectors roughly halve the time of these compute-bound loops; the cache key includes the CPU's feature list, so
# a library built for one processor is never loaded on another. OpenMP makes the kernel share torch's OpenMP threads
# (a pool of its own would compete with torch's spinning workers for the cores). Each is dropped if the compiler
# refuses it.
ARCH_FLAGS = ("-march=native",)
OPENMP_FLAGS = ("-fopenmp",)
# Element types the library reads; the numbers are the `Format` enum of hem_cpu.cpp.
FORMATS = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
# Below this many logits per thread, starting a thread costs more than it saves.
MIN_ELEMENTS_PER_THREAD = 1 << 16

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_status: str | None = None


def cache_dir() -> Path:
    """Folder where the compiled library is kept."""
    if os.environ.get("HF_HEM_KERNEL_CACHE"):
        return Path(os.environ["HF_HEM_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hf_hem" / "kernels"


def _find_compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _compiler_identity(compiler: str) -> str:
    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
        return result.stdout.splitlines()[0] if result.stdout else compiler
    except (OSError, subprocess.SubprocessError):
        return compiler


def _cpu_identity() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features", "isa")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build under a private name, then rename: processes that start together (DDP ranks) never load a half-written
    # library, they only compile it once each.
    handle, temporary = tempfile.mkstemp(suffix=".so", prefix=target.stem + ".", dir=target.parent)
    os.close(handle)
    try:
        for optional_flags in (ARCH_FLAGS + OPENMP_FLAGS, OPENMP_FLAGS, ARCH_FLAGS, ()):
            command = [compiler, *COMPILE_FLAGS, *optional_flags, str(SOURCE), "-o", temporary]
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if result.returncode == 0:
                break
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed with exit code {result.returncode}:\n{result.stderr[-2000:]}")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _configure(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, int64, int32, double = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    library.hem_forward.restype = int32
    library.hem_forward.argtypes = [int32, pointer, pointer, int64, int64, int64, pointer, double, int64, int32,
                                    int32, pointer, pointer, pointer, int32]  # fmt: skip
    library.hem_backward.restype = int32
    library.hem_backward.argtypes = [int32, pointer, pointer, int64, int64, int64, pointer, double, int64, pointer,
                                     pointer, pointer, pointer, int32]  # fmt: skip
    return library


def load() -> ctypes.CDLL | None:
    """Returns the compiled library, building it on first use; `None` if it cannot be built (see [`status`])."""
    global _library, _status
    if _status is not None:
        return _library
    with _lock:
        if _status is not None:
            return _library
        if os.environ.get("HF_HEM_CPU_KERNEL", "1") == "0":
            _status = "disabled by HF_HEM_CPU_KERNEL=0"
            return None
        compiler = _find_compiler()
        if compiler is None:
            _status = "no C++ compiler found (set CXX or install g++)"
            return None
        key = hashlib.sha256()
        identity = (" ".join(COMPILE_FLAGS + ARCH_FLAGS + OPENMP_FLAGS), _compiler_identity(compiler), _cpu_identity())
        key.update(SOURCE.read_bytes())
        for part in identity:
            key.update(part.encode())
        target = cache_dir() / f"hem_cpu_{key.hexdigest()[:16]}.so"
        try:
            if target.exists():
                _library = _configure(ctypes.CDLL(str(target)))
                _status = f"loaded {target}"
            else:
                start = time.perf_counter()
                _build(compiler, target)
                _library = _configure(ctypes.CDLL(str(target)))
                _status = f"compiled {target} in {time.perf_counter() - start:.1f} s"
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _status = f"build failed: {error}"
            warnings.warn(
                f"hf_hem: the fused CPU kernel could not be built ({error}); using the slower portable implementation.",
                RuntimeWarning,
                stacklevel=3,
            )
            _library = None
        return _library


def status() -> str:
    """How the CPU kernel was obtained, or why it is unavailable (builds it if that was not tried yet)."""
    load()
    return _status or "not loaded"


def _threads(num_elements: int) -> int:
    return max(1, min(torch.get_num_threads(), num_elements // MIN_ELEMENTS_PER_THREAD))


def _problem_arguments(inputs: KernelInputs) -> tuple:
    """The leading arguments of `hem_forward` and `hem_backward`: the problem both describe the same way."""
    grouped = inputs.grouped
    margins = None if inputs.margins is None else inputs.margins.data_ptr()
    return (
        FORMATS[grouped.dtype], grouped.data_ptr(), inputs.labels.data_ptr(), *grouped.shape,
        margins, float(inputs.margin), int(inputs.ignore_index),
    )  # fmt: skip


def forward(
    inputs: KernelInputs, threshold: bool, mean_above_zero: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample loss, threshold and kept count of contiguous `(B, C, I)` logits and `(B*I,)` int64 labels.

    Returns:
        `(per_sample, tau, kept, label_error)`; `label_error` is a one-element int32 tensor, 1 when a label outside
        `[0, C)` is not ignore_index.
    """
    library = load()
    num_groups, _, inner = inputs.grouped.shape
    accumulate = torch.float64 if inputs.grouped.dtype == torch.float64 else torch.float32
    per_sample = torch.empty(num_groups * inner, dtype=accumulate)
    tau = torch.empty_like(per_sample)
    kept = torch.empty(num_groups * inner, dtype=torch.int32)
    code = library.hem_forward(
        *_problem_arguments(inputs), int(threshold), int(mean_above_zero),
        per_sample.data_ptr(), tau.data_ptr(), kept.data_ptr(), _threads(inputs.grouped.numel()),
    )  # fmt: skip
    if code == 2:
        raise RuntimeError("hf_hem: the fused CPU kernel failed (internal error).")
    return per_sample, tau, kept, torch.tensor([0 if code == 0 else 1], dtype=torch.int32)


def backward(inputs: KernelInputs, tau: torch.Tensor, kept: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Gradient of `sum(weight * per_sample)` with respect to the `(B, C, I)` logits, in their dtype."""
    library = load()
    grad = torch.empty_like(inputs.grouped, memory_format=torch.contiguous_format)
    code = library.hem_backward(
        *_problem_arguments(inputs), tau.data_ptr(), kept.data_ptr(), weight.data_ptr(), grad.data_ptr(),
        _threads(inputs.grouped.numel()),
    )  # fmt: skip
    if code != 0:
        raise RuntimeError("hf_hem: the fused CPU kernel failed (internal error).")
    return grad
