"""Fused kernels (C++ on CPU, chunked torch, Triton) against the reference implementation of the margin family."""

import importlib
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_hem import hem_loss, mm_loss, mm_maz_loss, mm_thres_loss
from hf_hem.losses import kernels
from hf_hem.losses.hem import _margin_family_loss_reference
from hf_hem.losses.kernels import _function


FUNCTIONS = {"hem": hem_loss, "mm": mm_loss, "mm+maz": mm_maz_loss, "mm+thres": mm_thres_loss}
CPU_BACKENDS = ["torch"] + (["cpu"] if kernels.cpu_kernel.load() is not None else [])
SHAPES = {
    "rows": (37, 10),
    "imagenet-like rows": (8, 1000),
    "sequence": (3, 7, 11),
    "image": (2, 5, 6, 7),
    "volume": (2, 4, 3, 2, 5),
}


def make_inputs(shape, *, seed=0, quantized=True, ignore="some", ignore_index=-100, dtype=torch.float32):
    """Random logits and labels. Quantized logits (multiples of 1/32) make every margin error and every sum exact,
    so that the reference and a fused kernel keep exactly the same classes even on ties with the threshold."""
    generator = torch.Generator().manual_seed(seed)
    num_classes = shape[1]
    if quantized:
        logits = torch.randint(-48, 48, shape, generator=generator).to(torch.float64) / 32
    else:
        logits = torch.randn(shape, generator=generator, dtype=torch.float64) * 1.5
    labels = torch.randint(0, num_classes, (shape[0], *shape[2:]), generator=generator)
    if ignore == "some":
        labels = torch.where(torch.rand(labels.shape, generator=generator) < 0.25, ignore_index, labels)
    elif ignore == "all":
        labels = torch.full_like(labels, ignore_index)
    return logits.to(dtype), labels


def make_margin(kind, num_classes, dtype=torch.float32):
    if kind == "scalar":
        return 0.25
    # Per-class margins (HEM+), multiples of 1/16 so that errors stay exact.
    return (torch.arange(num_classes, dtype=dtype) % 7 + 1) / 16


def loss_and_grad(function, logits, labels, margin, reduction, implementation, ignore_index=-100, weights=None):
    leaf = logits.detach().clone().requires_grad_()
    loss = function(
        leaf, labels, margin, ignore_index=ignore_index, reduction=reduction, implementation=implementation
    )
    scalar = loss if weights is None else (loss * weights).sum()
    if reduction == "none" and weights is None:
        scalar = loss.sum()
    scalar.backward()
    return loss.detach(), leaf.grad


def assert_same(fused, reference, atol=1e-6, rtol=1e-6):
    (fused_loss, fused_grad), (reference_loss, reference_grad) = fused, reference
    assert fused_loss.dtype == reference_loss.dtype and fused_loss.shape == reference_loss.shape
    assert fused_grad.dtype == reference_grad.dtype and fused_grad.shape == reference_grad.shape
    torch.testing.assert_close(fused_loss, reference_loss, atol=atol, rtol=rtol)
    torch.testing.assert_close(fused_grad, reference_grad, atol=atol, rtol=rtol)


# ---------------------------------------------------------------- agreement with the reference (float32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("margin_kind", ["scalar", "per-class"])
@pytest.mark.parametrize("ignore", ["none", "some", "all"])
def test_fused_equals_reference(backend, name, shape_name, margin_kind, ignore):
    shape = SHAPES[shape_name]
    seed = 3 * list(SHAPES).index(shape_name) + ["none", "some", "all"].index(ignore)
    logits, labels = make_inputs(shape, seed=seed, ignore=ignore)
    margin = make_margin(margin_kind, shape[1])
    for reduction in ("mean", "sum", "none"):
        fused = loss_and_grad(FUNCTIONS[name], logits, labels, margin, reduction, backend)
        reference = loss_and_grad(FUNCTIONS[name], logits, labels, margin, reduction, "reference")
        assert_same(fused, reference)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(64, 1000), (2, 150, 24, 20)])
def test_fused_equals_reference_on_continuous_logits(backend, shape):
    logits, labels = make_inputs(shape, seed=5, quantized=False, ignore="some", ignore_index=255)
    for name in ("hem", "mm+maz"):
        fused = loss_and_grad(FUNCTIONS[name], logits, labels, 0.1, "mean", backend, ignore_index=255)
        reference = loss_and_grad(FUNCTIONS[name], logits, labels, 0.1, "mean", "reference", ignore_index=255)
        assert_same(fused, reference)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_per_sample_grad_output_for_reduction_none(backend):
    # A caller may weight the per-sample losses arbitrarily (the trainer sums and divides them itself).
    logits, labels = make_inputs((4, 6, 5, 3), seed=11)
    weights = torch.randn(labels.shape, generator=torch.Generator().manual_seed(2))
    for function in FUNCTIONS.values():
        fused = loss_and_grad(function, logits, labels, 0.25, "none", backend, weights=weights)
        reference = loss_and_grad(function, logits, labels, 0.25, "none", "reference", weights=weights)
        assert_same(fused, reference)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_non_contiguous_logits(backend, layout):
    logits, labels = make_inputs((3, 5, 4, 6), seed=3)
    if layout == "channels_last":
        logits = logits.to(memory_format=torch.channels_last)
    elif layout == "transposed":
        logits = logits.transpose(2, 3).contiguous().transpose(2, 3)
    else:
        logits = torch.cat([logits, logits], dim=1)[:, ::2]
    fused = loss_and_grad(hem_loss, logits, labels, 0.25, "mean", backend)
    reference = loss_and_grad(hem_loss, logits.contiguous(), labels, 0.25, "mean", "reference")
    assert_same(fused, reference)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_computed_in_float32_with_gradient_in_logits_dtype(backend, dtype):
    logits, labels = make_inputs((6, 9, 5, 4), seed=4, quantized=False, dtype=dtype)
    for reduction in ("mean", "none"):
        fused = loss_and_grad(hem_loss, logits, labels, 0.3, reduction, backend)
        reference = loss_and_grad(hem_loss, logits, labels, 0.3, reduction, "reference")
        assert fused[0].dtype == torch.float32 and fused[1].dtype == dtype
        # The gradient's values are +-1/(k N) rounded once to the logits' dtype; allow one rounding step.
        assert_same(fused, reference, atol=1e-6, rtol=8e-3)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64(backend, name, reduction):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (6, 3), generator=generator)
    labels[0, 0] = -100
    margin = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)

    def function(x):
        return FUNCTIONS[name](x, labels, margin, reduction=reduction, implementation=backend)

    assert torch.autograd.gradcheck(function, (logits,), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_all_ignored_and_empty_batches_give_zero_and_zero_gradient(backend):
    for shape in ((4, 3), (2, 3, 4, 4), (0, 3)):
        logits, labels = make_inputs(shape, ignore="all")
        for name, function in FUNCTIONS.items():
            loss, grad = loss_and_grad(function, logits, labels, 0.5, "mean", backend)
            assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0, (shape, name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_satisfied_margins_give_zero_gradient(backend):
    labels = torch.tensor([0, 2, 1, 1])
    logits = torch.nn.functional.one_hot(labels, 3).float() * 5.0
    loss, grad = loss_and_grad(hem_loss, logits, labels, 0.5, "mean", backend)
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_method_page_vector(backend):
    logits = torch.tensor([[2.0, 1.9, 2.3, 0.0], [3, 0, 0, 0], [1.0, 1.1, 0.5, 0.8]])
    labels = torch.tensor([0, 0, 1])
    per_sample, _ = loss_and_grad(hem_loss, logits, labels, 0.2, "none", backend)
    loss, grad = loss_and_grad(hem_loss, logits, labels, 0.2, "mean", backend)
    torch.testing.assert_close(per_sample, torch.tensor([0.5, 0.0, 0.1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(loss, torch.tensor(0.3), atol=1e-6, rtol=0)
    expected = torch.tensor([[-0.5, 0, 0.5, 0], [0, 0, 0, 0], [0.5, -0.5, 0, 0]])
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_logit_poisons_its_sample_as_in_the_reference(backend):
    logits, labels = make_inputs((4, 5), ignore="none")
    logits[1, (labels[1] + 1) % 5] = float("nan")
    for function in FUNCTIONS.values():
        fused = function(logits, labels, 0.25, reduction="none", implementation=backend)
        reference = function(logits, labels, 0.25, reduction="none", implementation="reference")
        torch.testing.assert_close(fused, reference, equal_nan=True)
        assert torch.isnan(fused[1]) and not torch.isnan(fused[[0, 2, 3]]).any()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backward_twice_with_retained_graph(backend):
    logits, labels = make_inputs((5, 4, 3), seed=6)
    leaf = logits.clone().requires_grad_()
    loss = hem_loss(leaf, labels, 0.25, implementation=backend)
    loss.backward(retain_graph=True)
    first = leaf.grad.clone()
    loss.backward()
    torch.testing.assert_close(leaf.grad, 2 * first)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_out_of_range_labels_raise_the_reference_error(backend):
    for logits, labels in (
        (torch.randn(4, 3), torch.tensor([0, 3, 7, -100])),
        (torch.randn(2, 3, 2, 2), torch.tensor([[[0, 1], [2, -1]], [[0, 0], [0, 0]]])),
    ):
        with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
            hem_loss(logits, labels, implementation=backend)


def test_bad_implementation_name():
    with pytest.raises(ValueError, match="implementation='fast'"):
        hem_loss(torch.randn(2, 3), torch.tensor([0, 1]), implementation="fast")


def test_auto_dispatch():
    logits = torch.randn(4, 3)
    expected = "cpu" if "cpu" in CPU_BACKENDS else "torch"
    assert kernels.resolve_implementation(logits, 0.2) == expected
    # A margin that needs a gradient stays on the reference, which propagates it.
    assert kernels.resolve_implementation(logits, torch.ones(3, requires_grad=True)) == "reference"
    assert kernels.resolve_implementation(logits, 0.2, "torch") == "torch"


def test_default_path_is_fused_and_equals_reference():
    logits, labels = make_inputs((3, 150, 8, 8), seed=9, ignore="some", ignore_index=255)
    default = loss_and_grad(hem_loss, logits, labels, 0.0395, "mean", "auto", ignore_index=255)
    reference = loss_and_grad(hem_loss, logits, labels, 0.0395, "mean", "reference", ignore_index=255)
    assert_same(default, reference)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    num_classes=st.integers(2, 40),
    spatial=st.lists(st.integers(1, 5), max_size=2),
    batch=st.integers(1, 6),
    name=st.sampled_from(list(FUNCTIONS)),
)
def test_random_shapes_agree(seed, num_classes, spatial, batch, name):
    logits, labels = make_inputs((batch, num_classes, *spatial), seed=seed)
    for backend in CPU_BACKENDS:
        fused = loss_and_grad(FUNCTIONS[name], logits, labels, 0.25, "mean", backend)
        reference = loss_and_grad(FUNCTIONS[name], logits, labels, 0.25, "mean", "reference")
        assert_same(fused, reference)


def test_reference_function_is_the_definition():
    logits, labels = make_inputs((5, 4), seed=1)
    torch.testing.assert_close(
        _margin_family_loss_reference(
            logits, labels, 0.25, threshold=True, mean_above_zero=True, ignore_index=-100, reduction="mean"
        ),
        hem_loss(logits, labels, 0.25, implementation="reference"),
    )


# ---------------------------------------------------------------- Triton (interpreter on CPU, real kernel on CUDA)

triton_missing = pytest.mark.skipif(
    not kernels.triton_available(), reason="triton is not installed (pip install triton to run these tests)"
)


interpreter_off = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="the Triton interpreter is off (tests/conftest.py turns it on without a GPU)",
)


@pytest.fixture
def interpreted_triton(monkeypatch):
    """The Triton module, imported while TRITON_INTERPRET=1 (set for the session by tests/conftest.py without a GPU)."""
    module = importlib.import_module("hf_hem.losses.kernels._triton")
    monkeypatch.setattr(_function, "_triton_module", module)
    return module


@triton_missing
@interpreter_off
@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("shape_name", ["rows", "imagenet-like rows", "image", "volume"])
@pytest.mark.parametrize("margin_kind", ["scalar", "per-class"])
def test_triton_interpreted_equals_reference(interpreted_triton, name, shape_name, margin_kind):
    shape = SHAPES[shape_name]
    logits, labels = make_inputs(shape, seed=7, ignore="some")
    margin = make_margin(margin_kind, shape[1])
    for reduction in ("mean", "none"):
        fused = loss_and_grad(FUNCTIONS[name], logits, labels, margin, reduction, "triton")
        reference = loss_and_grad(FUNCTIONS[name], logits, labels, margin, reduction, "reference")
        assert_same(fused, reference)


@triton_missing
@interpreter_off
def test_triton_interpreted_edge_cases(interpreted_triton):
    # Several program blocks along samples and classes, bfloat16 input, all-ignored rows, bad labels.
    logits, labels = make_inputs((2, 37, 13, 11), seed=8, quantized=False, ignore="some", ignore_index=255)
    fused = loss_and_grad(hem_loss, logits, labels, 0.1, "mean", "triton", ignore_index=255)
    reference = loss_and_grad(hem_loss, logits, labels, 0.1, "mean", "reference", ignore_index=255)
    assert_same(fused, reference)
    half, half_labels = make_inputs((5, 9, 4), seed=2, quantized=False, dtype=torch.bfloat16)
    fused = loss_and_grad(hem_loss, half, half_labels, 0.3, "mean", "triton")
    reference = loss_and_grad(hem_loss, half, half_labels, 0.3, "mean", "reference")
    assert fused[1].dtype == torch.bfloat16
    assert_same(fused, reference, atol=1e-6, rtol=8e-3)
    loss, grad = loss_and_grad(hem_loss, *make_inputs((3, 4, 5), ignore="all"), 0.5, "mean", "triton")
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0
    with pytest.raises(ValueError, match=r"\[3\]"):
        hem_loss(torch.randn(2, 3), torch.tensor([0, 3]), implementation="triton")


def test_triton_requires_cuda_or_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="implementation='triton' needs"):
        hem_loss(torch.randn(2, 3), torch.tensor([0, 1]), implementation="triton")


cuda_missing = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda_missing
@triton_missing
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 1000), (2, 150, 64, 48), (3, 19, 33, 17)])
def test_triton_cuda_equals_reference(dtype, shape):
    logits, labels = make_inputs(shape, seed=1, ignore="some", ignore_index=255, dtype=dtype)
    logits, labels = logits.cuda(), labels.cuda()
    assert kernels.resolve_implementation(logits, 0.2) == "triton"
    for function in FUNCTIONS.values():
        for reduction in ("mean", "none"):
            fused = loss_and_grad(function, logits, labels, 0.25, reduction, "auto", ignore_index=255)
            reference = loss_and_grad(function, logits, labels, 0.25, reduction, "reference", ignore_index=255)
            rtol = 1e-6 if dtype == torch.float32 else 8e-3
            assert_same(fused, reference, atol=1e-6, rtol=rtol)


def compare_configs_with_portable(triton_module, logits, labels, configs, atol=1e-6):
    """Every block configuration of the Triton kernels against the portable backend, forward and backward."""
    from hf_hem.losses.kernels import _portable

    margins = make_margin("per-class", logits.shape[1]).to(logits.device)
    generator = torch.Generator().manual_seed(0)
    weight = torch.rand(labels.shape, generator=generator).to(logits.device)
    for threshold, mean_above_zero in ((True, True), (False, False)):
        expected = _portable.forward(logits, labels, margins, 0.0, -100, threshold, mean_above_zero)
        arguments = (logits, labels, margins, 0.0, -100, expected[1], expected[2], weight)
        expected_grad = _portable.backward(*arguments)
        for config in configs:
            actual = triton_module.forward(logits, labels, margins, 0.0, -100, threshold, mean_above_zero, config)
            for got, want in zip(actual[:3], expected[:3]):
                torch.testing.assert_close(got, want, atol=atol, rtol=1e-6, msg=lambda m, c=config: f"{c}: {m}")
            got_grad = triton_module.backward(*arguments, config=config)
            torch.testing.assert_close(
                got_grad, expected_grad, atol=atol, rtol=8e-3 if logits.dtype != torch.float32 else 1e-6
            )


@triton_missing
@interpreter_off
@pytest.mark.parametrize("shape", [(5, 37, 1), (2, 37, 45)])
def test_triton_interpreted_every_block_configuration(interpreted_triton, shape):
    # Blocks smaller than the class count use the class loop; the autotuner may pick any of these on CUDA.
    logits, labels = make_inputs(shape, seed=12, quantized=False)
    class_stride = 1 if shape[2] == 1 else shape[2]
    configs = interpreted_triton.candidates(shape[1], class_stride) + [(4, 8, 4), (16, 8, 4)]
    compare_configs_with_portable(interpreted_triton, logits, labels.reshape(-1), configs)


@cuda_missing
@triton_missing
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(300, 1000, 1), (2, 150, 1000), (3, 19, 561)])
def test_triton_cuda_every_block_configuration(dtype, shape):
    from hf_hem.losses.kernels import _triton

    logits, labels = make_inputs(shape, seed=13, dtype=dtype)  # quantized values are exact in bfloat16 too
    class_stride = 1 if shape[2] == 1 else shape[2]
    compare_configs_with_portable(
        _triton, logits.cuda(), labels.reshape(-1).cuda(), _triton.candidates(shape[1], class_stride)
    )


@cuda_missing
@triton_missing
def test_triton_cuda_label_checks(monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("HF_HEM_CUDA_LABEL_CHECK", "sync")
    with pytest.raises(ValueError, match=r"\[7\]"):
        hem_loss(torch.randn(3, 5, device="cuda"), torch.tensor([0, 7, -100], device="cuda"))
    # The default is a device-side assertion (no host synchronisation), which ends the CUDA context: run it apart.
    program = (
        "import torch; from hf_hem import hem_loss; "
        "hem_loss(torch.randn(3, 5, device='cuda'), torch.tensor([0, 7, -100], device='cuda')); "
        "torch.cuda.synchronize()"
    )
    environment = {key: value for key, value in os.environ.items() if key != "HF_HEM_CUDA_LABEL_CHECK"}
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=environment)
    output = result.stderr + result.stdout
    assert result.returncode != 0 and ("outside [0, 5)" in output or "device-side assert" in output), output[-2000:]
