"""Session-wide test set-up, and the fixtures the test files share (the shared plain functions are in helpers.py)."""

import importlib
import os

import pytest
import torch


# Triton decides at decoration time whether a `@triton.jit` function (its own `tl.zeros` included) runs on the CPU
# interpreter, so the switch must be on before anything imports `triton.language` (transformers and accelerate can).
# Without a GPU the Triton kernels are tested on that interpreter; with one they run for real.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def single_torch_thread():
    """One intra-op thread for the test: tiny models run faster on one, and far steadier when other jobs share the
    cores. Opt in per file with `pytestmark = pytest.mark.usefixtures("single_torch_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def interpreted_triton(monkeypatch):
    """The Triton backend module, imported while TRITON_INTERPRET=1 (set above without a GPU), installed as the
    kernels' Triton module for the duration of the test."""
    from hf_hem.losses.kernels import _function

    module = importlib.import_module("hf_hem.losses.kernels._triton")
    monkeypatch.setattr(_function, "_triton_module", module)
    return module


@pytest.fixture
def hub_reachable(monkeypatch):
    """Lets this process's huggingface_hub talk to a loopback Hub. Test modules set `HF_HUB_OFFLINE=1` when they are
    collected, and huggingface_hub reads it once, at import: whichever test imported it first decides for the whole
    session, so an in-process Hub test turns the switch off itself (the environment included, for `datasets`)."""
    import huggingface_hub

    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
