"""Fused kernels (C++ on CPU, chunked torch, Triton) against the reference implementation of the margin family."""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_hem import hem_loss
from hf_hem.losses import kernels
from hf_hem.losses.hem import _margin_family_loss_reference
from hf_hem.losses.kernels import _function, _portable
from hf_hem.losses.kernels._inputs import KernelInputs


try:  # tests/ may or may not become a package
    from .helpers import (
        MARGIN_LOSSES,
        gradcheck_inputs,
        method_page_batch,
        requires_cuda,
        requires_triton,
        requires_triton_interpreter,
    )
except ImportError:
    from helpers import (
        MARGIN_LOSSES,
        gradcheck_inputs,
        method_page_batch,
        requires_cuda,
        requires_triton,
        requires_triton_interpreter,
    )


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


def loss_and_grad(
    function, logits, labels, margin, reduction, implementation, ignore_index=-100, weights=None, **kwargs
):
    leaf = logits.detach().clone().requires_grad_()
    loss = function(
        leaf, labels, margin, ignore_index=ignore_index, reduction=reduction, implementation=implementation, **kwargs
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
@pytest.mark.parametrize("name", list(MARGIN_LOSSES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("margin_kind", ["scalar", "per-class"])
@pytest.mark.parametrize("ignore", ["none", "some", "all"])
def test_fused_equals_reference(backend, name, shape_name, margin_kind, ignore):
    shape = SHAPES[shape_name]
    seed = 3 * list(SHAPES).index(shape_name) + ["none", "some", "all"].index(ignore)
    logits, labels = make_inputs(shape, seed=seed, ignore=ignore)
    margin = make_margin(margin_kind, shape[1])
    for reduction in ("mean", "sum", "none"):
        fused = loss_and_grad(MARGIN_LOSSES[name], logits, labels, margin, reduction, backend)
        reference = loss_and_grad(MARGIN_LOSSES[name], logits, labels, margin, reduction, "reference")
        assert_same(fused, reference)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(64, 1000), (2, 150, 24, 20)])
def test_fused_equals_reference_on_continuous_logits(backend, shape):
    logits, labels = make_inputs(shape, seed=5, quantized=False, ignore="some", ignore_index=255)
    for name in ("hem", "mm+maz"):
        fused = loss_and_grad(MARGIN_LOSSES[name], logits, labels, 0.1, "mean", backend, ignore_index=255)
        reference = loss_and_grad(MARGIN_LOSSES[name], logits, labels, 0.1, "mean", "reference", ignore_index=255)
        assert_same(fused, reference)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_per_sample_grad_output_for_reduction_none(backend):
    # A caller may weight the per-sample losses arbitrarily (the trainer sums and divides them itself).
    logits, labels = make_inputs((4, 6, 5, 3), seed=11)
    weights = torch.randn(labels.shape, generator=torch.Generator().manual_seed(2))
    for function in MARGIN_LOSSES.values():
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
@pytest.mark.parametrize("name", list(MARGIN_LOSSES))
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64(backend, name, reduction):
    logits, labels, margin = gradcheck_inputs()

    def function(x):
        return MARGIN_LOSSES[name](x, labels, margin, reduction=reduction, implementation=backend)

    assert torch.autograd.gradcheck(function, (logits,), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_all_ignored_and_empty_batches_give_zero_and_zero_gradient(backend):
    for shape in ((4, 3), (2, 3, 4, 4), (0, 3)):
        logits, labels = make_inputs(shape, ignore="all")
        for name, function in MARGIN_LOSSES.items():
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
    logits, labels = method_page_batch()
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
    for function in MARGIN_LOSSES.values():
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
    name=st.sampled_from(list(MARGIN_LOSSES)),
)
def test_random_shapes_agree(seed, num_classes, spatial, batch, name):
    logits, labels = make_inputs((batch, num_classes, *spatial), seed=seed)
    for backend in CPU_BACKENDS:
        fused = loss_and_grad(MARGIN_LOSSES[name], logits, labels, 0.25, "mean", backend)
        reference = loss_and_grad(MARGIN_LOSSES[name], logits, labels, 0.25, "mean", "reference")
        assert_same(fused, reference)


def test_reference_function_is_the_definition():
    logits, labels = make_inputs((5, 4), seed=1)
    torch.testing.assert_close(
        _margin_family_loss_reference(
            logits, labels, 0.25, threshold=True, mean_above_zero=True, ignore_index=-100, reduction="mean"
        ),
        hem_loss(logits, labels, 0.25, implementation="reference"),
    )


# ---------------------------------------------------------------- classes last (class_dim=-1, token classification)


def classes_last_inputs(shape, seed=0, **kwargs):
    """Contiguous `(N, d1, ..., C)` logits (as a token classification head gives them) and `(N, d1, ...)` labels,
    with some `-100` labels."""
    num_classes = shape[-1]
    logits, labels = make_inputs((shape[0], num_classes, *shape[1:-1]), seed=seed, **kwargs)
    labels.view(-1)[0] = -100  # at least one ignored position, whatever the draw
    return logits.movedim(1, -1).contiguous(), labels


def same_layout(tensor, other):
    """Same strides in every dimension that has more than one element (the stride of a size-1 one is arbitrary)."""
    return tensor.shape == other.shape and all(
        size == 1 or a == b for size, a, b in zip(tensor.shape, tensor.stride(), other.stride())
    )


def assert_classes_last_equals_classes_first(function, logits, labels, margin, backend, atol=1e-6, rtol=1e-6):
    """`class_dim=-1` (and its positive spelling) on `logits` equals `class_dim=1` on the moved, contiguous logits,
    for every reduction; the gradient has the input's layout."""
    classes_first = logits.movedim(-1, 1).contiguous()
    for class_dim in (-1, logits.dim() - 1):
        for reduction in ("none", "mean", "sum"):
            last = loss_and_grad(function, logits, labels, margin, reduction, backend, class_dim=class_dim)
            first = loss_and_grad(function, classes_first, labels, margin, reduction, backend)
            assert_same(last, (first[0], first[1].movedim(1, -1)), atol=atol, rtol=rtol)
            assert same_layout(last[1], logits)
            if reduction == "none":
                assert last[0].shape == labels.shape


CLASSES_LAST_SHAPES = {"tokens": (3, 11, 7), "one token": (5, 1, 1000), "image": (2, 6, 3, 4)}


@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS])
@pytest.mark.parametrize("name", list(MARGIN_LOSSES))
@pytest.mark.parametrize("shape_name", list(CLASSES_LAST_SHAPES))
@pytest.mark.parametrize("margin_kind", ["scalar", "per-class"])
def test_classes_last_equals_classes_first(backend, name, shape_name, margin_kind):
    shape = CLASSES_LAST_SHAPES[shape_name]
    logits, labels = classes_last_inputs(shape, seed=list(CLASSES_LAST_SHAPES).index(shape_name))
    assert (labels == -100).any() and (labels != -100).any()
    margin = make_margin(margin_kind, shape[-1])
    assert_classes_last_equals_classes_first(MARGIN_LOSSES[name], logits, labels, margin, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_classes_last_on_continuous_logits_equals_reference(backend):
    logits, labels = classes_last_inputs((4, 33, 150), seed=14, quantized=False)
    for name in ("hem", "mm+maz"):
        for reduction in ("none", "mean"):
            fused = loss_and_grad(MARGIN_LOSSES[name], logits, labels, 0.1, reduction, backend, class_dim=-1)
            reference = loss_and_grad(MARGIN_LOSSES[name], logits, labels, 0.1, reduction, "reference", class_dim=-1)
            assert_same(fused, reference)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["transposed view", "sliced", "bfloat16"])
def test_classes_last_non_contiguous_and_half_logits(backend, layout):
    tokens, labels = classes_last_inputs((3, 9, 6), seed=15)
    if layout == "transposed view":
        # Strides of a contiguous (N, C, L) tensor: read in place as (N, C, L) tiles.
        leaf = tokens.movedim(-1, 1).contiguous().movedim(1, -1).requires_grad_()
        logits = leaf
    elif layout == "sliced":
        # Every other class of a wider tensor: no layout the kernels read, so one contiguous copy is made.
        leaf = torch.stack([tokens, torch.zeros_like(tokens)], dim=-1).flatten(-2).requires_grad_()
        logits = leaf[..., ::2]
    else:
        leaf = tokens.to(torch.bfloat16).requires_grad_()
        logits = leaf
    rtol = 8e-3 if layout == "bfloat16" else 1e-6  # one rounding of the gradient to bfloat16
    for reduction in ("none", "mean"):
        leaf.grad = None
        loss = hem_loss(logits, labels, 0.25, reduction=reduction, implementation=backend, class_dim=-1)
        loss.sum().backward()
        grad = leaf.grad[..., ::2] if layout == "sliced" else leaf.grad
        assert grad.dtype == logits.dtype and loss.dtype == torch.float32
        if layout != "sliced":
            assert same_layout(grad, logits)
        expected = loss_and_grad(hem_loss, logits, labels, 0.25, reduction, "reference", class_dim=-1)
        assert_same((loss.detach(), grad), expected, rtol=rtol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_classes_last_gradcheck_float64(backend, reduction):
    logits, labels, margin = gradcheck_inputs()
    tokens = logits.detach().movedim(1, -1).contiguous().requires_grad_()  # (N, L, C)

    def function(x):
        return hem_loss(x, labels, margin, reduction=reduction, implementation=backend, class_dim=-1)

    assert torch.autograd.gradcheck(function, (tokens,), eps=1e-6, atol=1e-5)


def test_group_logits_views_classes_last_logits_as_rows():
    tokens = torch.randn(3, 11, 7)
    grouped = kernels.group_logits(tokens, class_dim=-1)
    assert grouped.shape == (33, 7, 1) and grouped.data_ptr() == tokens.data_ptr() and grouped.is_contiguous()
    torch.testing.assert_close(grouped[:, :, 0], tokens.reshape(-1, 7), rtol=0, atol=0)
    # Classes-last strides over a contiguous (N, C, L) tensor: (N, C, L) tiles of the same storage.
    transposed = torch.randn(3, 7, 11).movedim(1, -1)
    grouped = kernels.group_logits(transposed, class_dim=2)
    assert grouped.shape == (3, 7, 11) and grouped.data_ptr() == transposed.data_ptr()
    with pytest.raises(ValueError, match="class_dim=0 is not supported"):
        kernels.group_logits(tokens, class_dim=0)


def test_resolve_implementation_reads_the_class_dimension():
    expected = "cpu" if "cpu" in CPU_BACKENDS else "torch"
    assert kernels.resolve_implementation(torch.randn(2, 5, 3), 0.2, class_dim=-1) == expected
    # No classes: the reference handles the degenerate case; an unsupported class_dim is left to it to report.
    assert kernels.resolve_implementation(torch.randn(2, 5, 0), 0.2, class_dim=-1) == "reference"
    assert kernels.resolve_implementation(torch.randn(2, 5, 3, 4), 0.2, class_dim=2) == "reference"


# The no-copy checks: what the kernels get must be a view of the caller's logits. Each detector is also shown to fire
# on a path that does copy (a `group_logits` that makes the transposed copy), so the checks can fail.


def record_backend_inputs(monkeypatch, module):
    """Wraps `module.forward` / `module.backward` (a backend of `hf_hem.losses.kernels`) to record the logits each
    receives."""
    seen = {}
    for step in ("forward", "backward"):
        original = getattr(module, step)

        def wrapper(inputs, *args, _original=original, _step=step, **kwargs):
            seen[_step] = inputs.grouped
            return _original(inputs, *args, **kwargs)

        monkeypatch.setattr(module, step, wrapper)
    return seen


def shares_memory(view, tensor):
    return view.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()


def copy_in_group_logits(monkeypatch):
    """Makes `group_logits` build the transposed contiguous copy a naive implementation would."""
    original = _function.group_logits

    def copying(logits, class_dim=1):
        return original(logits.movedim(class_dim, 1).contiguous())

    monkeypatch.setattr(_function, "group_logits", copying)


def backend_module(backend, triton_module=None):
    return {"cpu": kernels.cpu_kernel, "torch": _portable}.get(backend, triton_module)


def check_backends_see_the_input(backend, monkeypatch, triton_module=None, copy=False):
    if copy:
        copy_in_group_logits(monkeypatch)
    seen = record_backend_inputs(monkeypatch, backend_module(backend, triton_module))
    tokens, labels = classes_last_inputs((3, 11, 7), seed=16)
    leaf = tokens.clone().requires_grad_()
    weights = torch.rand(labels.shape, generator=torch.Generator().manual_seed(3))
    (hem_loss(leaf, labels, 0.25, reduction="none", implementation=backend, class_dim=-1) * weights).sum().backward()
    assert set(seen) == {"forward", "backward"}
    assert same_layout(leaf.grad, leaf)
    return [shares_memory(grouped, leaf) and grouped.data_ptr() == leaf.data_ptr() for grouped in seen.values()]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_classes_last_logits_reach_the_kernels_without_a_copy(backend, monkeypatch):
    assert check_backends_see_the_input(backend, monkeypatch) == [True, True]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_the_storage_check_sees_a_transposed_copy(backend, monkeypatch):
    assert check_backends_see_the_input(backend, monkeypatch, copy=True) == [False, False]


class FullSizeAllocations(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every operation whose output holds at least `numel` elements in memory of its own (not a view or an
    in-place update of an input): the copies and buffers of the logits' size that a call makes."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.operations = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        inputs = torch.utils._pytree.tree_flatten((args, kwargs))[0]
        storages = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        for tensor in torch.utils._pytree.tree_flatten(output)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.numel() >= self.numel:
                if tensor.untyped_storage().data_ptr() not in storages:
                    self.operations.append(str(func))
        return output


def full_size_allocations(backend, monkeypatch, copy=False):
    """Full-size allocations of forward and of backward of HEM on contiguous (N, L, C) logits with class_dim=-1."""
    # Chunks smaller than the logits, so that the portable backend's per-chunk buffers are not counted.
    monkeypatch.setitem(_portable.CHUNK_ELEMENTS, "cpu", 64)
    if copy:
        copy_in_group_logits(monkeypatch)
    tokens, labels = classes_last_inputs((3, 11, 7), seed=16)
    leaf = tokens.clone().requires_grad_()
    with FullSizeAllocations(tokens.numel()) as forward:
        loss = hem_loss(leaf, labels, 0.25, implementation=backend, class_dim=-1)
    with FullSizeAllocations(tokens.numel()) as backward:
        loss.backward()
    return forward.operations, backward.operations


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_classes_last_makes_no_full_size_copy(backend, monkeypatch):
    forward, backward = full_size_allocations(backend, monkeypatch)
    # Forward allocates nothing of the logits' size; backward only the gradient itself, already in the input layout.
    assert forward == [] and len(backward) == 1, (forward, backward)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_the_allocation_check_sees_a_transposed_copy(backend, monkeypatch):
    forward, _ = full_size_allocations(backend, monkeypatch, copy=True)
    assert forward != []


# ---------------------------------------------------------------- Triton (interpreter on CPU, real kernel on CUDA)

# The `interpreted_triton` fixture is in tests/conftest.py.


@requires_triton
@requires_triton_interpreter
@pytest.mark.parametrize("name", list(MARGIN_LOSSES))
@pytest.mark.parametrize("shape_name", ["rows", "imagenet-like rows", "image", "volume"])
@pytest.mark.parametrize("margin_kind", ["scalar", "per-class"])
def test_triton_interpreted_equals_reference(interpreted_triton, name, shape_name, margin_kind):
    shape = SHAPES[shape_name]
    logits, labels = make_inputs(shape, seed=7, ignore="some")
    margin = make_margin(margin_kind, shape[1])
    for reduction in ("mean", "none"):
        fused = loss_and_grad(MARGIN_LOSSES[name], logits, labels, margin, reduction, "triton")
        reference = loss_and_grad(MARGIN_LOSSES[name], logits, labels, margin, reduction, "reference")
        assert_same(fused, reference)


@requires_triton
@requires_triton_interpreter
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


@requires_triton
@requires_triton_interpreter
@pytest.mark.parametrize("name", list(MARGIN_LOSSES))
@pytest.mark.parametrize("shape_name", ["tokens", "image"])
def test_triton_interpreted_classes_last_equals_classes_first(interpreted_triton, name, shape_name):
    shape = CLASSES_LAST_SHAPES[shape_name]
    logits, labels = classes_last_inputs(shape, seed=17)
    assert (labels == -100).any()
    assert_classes_last_equals_classes_first(MARGIN_LOSSES[name], logits, labels, 0.25, "triton")
    reference = loss_and_grad(MARGIN_LOSSES[name], logits, labels, 0.25, "none", "reference", class_dim=-1)
    assert_same(loss_and_grad(MARGIN_LOSSES[name], logits, labels, 0.25, "none", "triton", class_dim=-1), reference)


@requires_triton
@requires_triton_interpreter
def test_triton_interpreted_classes_last_without_a_copy(interpreted_triton, monkeypatch):
    assert check_backends_see_the_input("triton", monkeypatch, interpreted_triton) == [True, True]
    assert check_backends_see_the_input("triton", monkeypatch, interpreted_triton, copy=True) == [False, False]


def test_triton_requires_cuda_or_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="implementation='triton' needs"):
        hem_loss(torch.randn(2, 3), torch.tensor([0, 1]), implementation="triton")


@requires_cuda
@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 1000), (2, 150, 64, 48), (3, 19, 33, 17)])
def test_triton_cuda_equals_reference(dtype, shape):
    logits, labels = make_inputs(shape, seed=1, ignore="some", ignore_index=255, dtype=dtype)
    logits, labels = logits.cuda(), labels.cuda()
    assert kernels.resolve_implementation(logits, 0.2) == "triton"
    for function in MARGIN_LOSSES.values():
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
        inputs = KernelInputs(logits, labels, margins, 0.0, -100)
        expected = _portable.forward(inputs, threshold, mean_above_zero)
        arguments = (inputs, expected[1], expected[2], weight)
        expected_grad = _portable.backward(*arguments)
        for config in configs:
            actual = triton_module.forward(inputs, threshold, mean_above_zero, config)
            for got, want in zip(actual[:3], expected[:3]):
                torch.testing.assert_close(got, want, atol=atol, rtol=1e-6, msg=lambda m, c=config: f"{c}: {m}")
            got_grad = triton_module.backward(*arguments, config=config)
            torch.testing.assert_close(
                got_grad, expected_grad, atol=atol, rtol=8e-3 if logits.dtype != torch.float32 else 1e-6
            )


@requires_triton
@requires_triton_interpreter
@pytest.mark.parametrize("shape", [(5, 37, 1), pytest.param((2, 37, 45), marks=pytest.mark.slow)])
def test_triton_interpreted_every_block_configuration(interpreted_triton, shape):
    # Blocks smaller than the class count use the class loop; the autotuner may pick any of these on CUDA.
    logits, labels = make_inputs(shape, seed=12, quantized=False)
    class_stride = 1 if shape[2] == 1 else shape[2]
    configs = interpreted_triton.candidates(shape[1], class_stride) + [(4, 8, 4), (16, 8, 4)]
    compare_configs_with_portable(interpreted_triton, logits, labels.reshape(-1), configs)


@requires_cuda
@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(300, 1000, 1), (2, 150, 1000), (3, 19, 561)])
def test_triton_cuda_every_block_configuration(dtype, shape):
    from hf_hem.losses.kernels import _triton

    logits, labels = make_inputs(shape, seed=13, dtype=dtype)  # quantized values are exact in bfloat16 too
    class_stride = 1 if shape[2] == 1 else shape[2]
    compare_configs_with_portable(
        _triton, logits.cuda(), labels.reshape(-1).cuda(), _triton.candidates(shape[1], class_stride)
    )


@requires_cuda
@requires_triton
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
