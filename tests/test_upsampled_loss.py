"""Margin-family losses on bilinearly upsampled logits (`upsample_logits=True`), against the reference."""

import pytest
import torch
import torch.nn.functional as F

from hf_hem import HEMLoss, HEMTrainer, hem_loss
from hf_hem.losses import kernels
from hf_hem.losses.hem import needs_upsampling
from hf_hem.losses.kernels import row_blocks, upsampled_margin_family_loss
from hf_hem.losses.kernels._upsample import bilinear_axis


try:  # tests/ may or may not become a package
    from .helpers import (
        MARGIN_LOSSES,
        hem_args,
        requires_cuda,
        requires_triton,
        requires_triton_interpreter,
        tiny_segformer,
    )
except ImportError:
    from helpers import (
        MARGIN_LOSSES,
        hem_args,
        requires_cuda,
        requires_triton,
        requires_triton_interpreter,
        tiny_segformer,
    )


# (logits (N, C, h, w), labels (H, W)): SegFormer's 4x, odd ratios, a downsampling axis, one source row.
SHAPES = {
    "quarter": ((2, 5, 4, 6), (16, 24)),
    "odd": ((3, 7, 5, 6), (19, 23)),
    "mixed": ((2, 4, 7, 3), (3, 11)),
    "one-row": ((1, 6, 1, 5), (9, 7)),
}


def upsampled_reference(function, logits, labels, margin, reduction, ignore_index=255):
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return function(
        upsampled, labels, margin, ignore_index=ignore_index, reduction=reduction, implementation="reference"
    )


def make_inputs(shape, label_size, dtype=torch.float64, ignore=0.2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, shape[1], (shape[0], *label_size), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < ignore] = 255
    return logits, labels


def loss_and_grad(function, logits, labels, margin, reduction, **kwargs):
    logits = logits.detach().clone().requires_grad_()
    loss = function(logits, labels, margin, ignore_index=255, reduction=reduction, **kwargs)
    weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).view(loss.shape)
    (loss * weights).sum().backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("size", [(4, 16), (5, 17), (16, 16), (7, 3), (128, 512), (1, 5), (3, 1)])
def test_bilinear_axis_is_f_interpolate(size):
    source, target = size
    values = torch.randn(1, 1, source, 1, dtype=torch.float64)
    index0, index1, weight0, weight1 = bilinear_axis(source, target, values.device, torch.float64)
    ours = values[0, 0, index0, 0] * weight0 + values[0, 0, index1, 0] * weight1
    theirs = F.interpolate(values, size=(target, 1), mode="bilinear", align_corners=False)[0, 0, :, 0]
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("name", list(MARGIN_LOSSES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("margin_kind", ["scalar", "per-class"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_upsampled_equals_reference_float64(backend, name, shape_name, margin_kind, reduction):
    if backend == "cpu" and kernels.cpu_kernel.load() is None:
        pytest.skip("no C++ compiler for the CPU kernel")
    shape, label_size = SHAPES[shape_name]
    logits, labels = make_inputs(shape, label_size, seed=len(shape_name))
    margin = 0.3 if margin_kind == "scalar" else torch.linspace(0.1, 0.9, shape[1], dtype=torch.float64)
    function = MARGIN_LOSSES[name]
    # A small block forces several blocks of rows, each with its own source rows.
    fused = loss_and_grad(
        lambda *a, **k: upsampled_margin_family_loss(
            *a, threshold=name in ("hem", "mm+thres"), mean_above_zero=name in ("hem", "mm+maz"), **k
        ),
        logits,
        labels,
        margin,
        reduction,
        implementation=backend,
        chunk_elements=2 * shape[1] * label_size[1],
    )
    reference = loss_and_grad(
        lambda x, y, m, **k: upsampled_reference(function, x, y, m, k["reduction"]), logits, labels, margin, reduction
    )
    torch.testing.assert_close(fused, reference, atol=1e-10, rtol=0)
    # Through the public function too, with the default block size.
    public = loss_and_grad(function, logits, labels, margin, reduction, upsample_logits=True)
    torch.testing.assert_close(public, reference, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", list(MARGIN_LOSSES))
def test_upsampled_float32_and_bfloat16(name):
    function = MARGIN_LOSSES[name]
    logits, labels = make_inputs((2, 9, 8, 8), (32, 32), dtype=torch.float32, seed=3)
    fused = loss_and_grad(function, logits, labels, 0.2, "mean", upsample_logits=True)
    reference = loss_and_grad(
        lambda x, y, m, **k: upsampled_reference(function, x, y, m, "mean"), logits, labels, 0.2, "mean"
    )
    torch.testing.assert_close(fused, reference, atol=1e-6, rtol=1e-5)
    # bfloat16 logits are upsampled in float32 (the reference rounds the upsampled logits to bfloat16 first).
    loss, grad = loss_and_grad(function, logits.bfloat16(), labels, 0.2, "mean", upsample_logits=True)
    assert grad.dtype == torch.bfloat16
    expected = loss_and_grad(function, logits.bfloat16().float(), labels, 0.2, "mean", upsample_logits=True)
    torch.testing.assert_close((loss, grad.float()), expected, atol=1e-6, rtol=1e-2)


def test_upsampled_logits_are_never_held():
    """Nothing of the upsampled size is saved for backward: only the small logits and a few numbers per pixel."""
    logits, labels = make_inputs((2, 50, 8, 8), (64, 64), dtype=torch.float32)
    logits.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor.numel()) or tensor, lambda t: t):
        loss = hem_loss(logits, labels, 0.2, ignore_index=255, upsample_logits=True)
    pixels = labels.numel()
    assert max(saved) <= max(logits.numel(), pixels), saved
    assert max(saved) < 50 * pixels / 10
    loss.backward()
    assert logits.grad.shape == logits.shape


def test_row_blocks_cover_every_row_once():
    logits = torch.zeros(2, 3, 4, 5)
    for chunk in (1, 7, 30, 10**9):
        blocks = list(row_blocks(logits, (13, 10), chunk))
        assert [row for start, stop in blocks for row in range(start, stop)] == list(range(13))


def test_same_size_and_module_forms():
    logits, labels = make_inputs((2, 5, 6, 6), (6, 6), dtype=torch.float32)
    # Same size: nothing to upsample, the flag changes nothing.
    torch.testing.assert_close(
        hem_loss(logits, labels, 0.2, ignore_index=255, upsample_logits=True),
        hem_loss(logits, labels, 0.2, ignore_index=255),
    )
    small, big_labels = make_inputs((2, 5, 3, 3), (12, 12), dtype=torch.float32)
    module = HEMLoss(torch.linspace(0.1, 0.5, 5), ignore_index=255, upsample_logits=True)
    assert "upsample_logits=True" in repr(module)
    expected = upsampled_reference(hem_loss, small, big_labels, torch.linspace(0.1, 0.5, 5), "mean")
    torch.testing.assert_close(module(small, big_labels), expected, atol=1e-6, rtol=1e-5)
    counted = HEMLoss.from_label_counts([10, 20, 30, 40, 50], ignore_index=255, upsample_logits=True)
    assert counted.upsample_logits


def test_scalar_margin_is_read_once_per_buffer_version(monkeypatch):
    module = HEMLoss(0.25)
    reads = []
    original = torch.Tensor.__float__
    monkeypatch.setattr(torch.Tensor, "__float__", lambda self: reads.append(1) or original(self))
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    for _ in range(3):
        module(logits, labels)
    assert len(reads) == 1
    module.load_state_dict({"margin": torch.tensor(0.5)})
    torch.testing.assert_close(module(logits, labels), hem_loss(logits, labels, 0.5))
    assert len(reads) == 2


def test_bad_input_is_named():
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, 1, 2] = 7
    labels[1, 0, 0] = -3
    with pytest.raises(ValueError, match=r"\[-3, 7\] outside \[0, 3\)"):
        hem_loss(logits, labels, 0.2, ignore_index=255, upsample_logits=True)
    with pytest.raises(ValueError, match=r"labels must have shape \(N, H, W\) with N=2"):
        upsampled_margin_family_loss(
            logits, torch.zeros(3, 8, 8, dtype=torch.long), 0.2, threshold=True, mean_above_zero=True
        )
    with pytest.raises(ValueError, match="integer tensor"):
        upsampled_margin_family_loss(logits, torch.zeros(2, 8, 8), 0.2, threshold=True, mean_above_zero=True)
    everything_ignored = torch.full((2, 8, 8), 255)
    loss, grad = loss_and_grad(hem_loss, logits, everything_ignored, 0.2, "mean", upsample_logits=True)
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("class_dim", [-1, 3, 2])
def test_upsampling_needs_class_dim_one(class_dim):
    # Only (N, C, h, w) logits are upsampled: any other class dimension is an error, not a silent no-op.
    logits, labels = torch.randn(2, 4, 4, 3), torch.zeros(2, 8, 8, dtype=torch.long)
    for function in MARGIN_LOSSES.values():
        with pytest.raises(ValueError, match=rf"upsample_logits=True .*class_dim=1 only, got class_dim={class_dim}"):
            function(logits, labels, 0.2, upsample_logits=True, class_dim=class_dim)
    with pytest.raises(ValueError, match=rf"upsample_logits=True .*got class_dim={class_dim}"):
        HEMLoss(0.2, upsample_logits=True, class_dim=class_dim)
    with pytest.raises(ValueError, match=rf"upsample_logits=True .*got class_dim={class_dim}"):
        HEMLoss.from_label_counts([1, 2, 3], upsample_logits=True, class_dim=class_dim)
    assert not needs_upsampling(logits, labels, class_dim=class_dim)
    # Classes last without upsampling is an ordinary per-pixel loss of matching shapes.
    same_size = torch.randint(0, 3, (2, 4, 4))
    torch.testing.assert_close(
        hem_loss(logits, same_size, 0.2, class_dim=-1), hem_loss(logits.movedim(-1, 1), same_size, 0.2)
    )


@requires_triton
@requires_triton_interpreter
def test_triton_interpreted_upsampled_equals_reference(interpreted_triton):
    logits, labels = make_inputs((2, 6, 5, 4), (13, 9), dtype=torch.float32, seed=5)
    fused = loss_and_grad(hem_loss, logits, labels, 0.3, "mean", upsample_logits=True, implementation="triton")
    reference = loss_and_grad(
        lambda x, y, m, **k: upsampled_reference(hem_loss, x, y, m, "mean"), logits, labels, 0.3, "mean"
    )
    torch.testing.assert_close(fused, reference, atol=1e-6, rtol=1e-5)


def test_hem_trainer_upsampling_in_the_loss_changes_nothing_but_memory(tmp_path):
    # SegFormer's own first stage (7x7 patches, stride 4): logits at a quarter of the label size, as in real models.
    model = tiny_segformer(num_labels=4, patch_sizes=[7, 3], strides=[4, 2], semantic_loss_ignore_index=255)
    pixel_values = torch.randn(3, 3, 32, 32)
    labels = torch.randint(0, 4, (3, 32, 32))
    labels[:, :4] = 255
    results = []
    for fused in (False, True):
        args = hem_args(
            tmp_path / f"out-{fused}",
            loss_name="hem+",
            class_counts=[100, 200, 300, 400],
            num_margin_samples=50,
            upsample_logits_in_loss=fused,
        )
        trainer = HEMTrainer(model=model, args=args)
        model.zero_grad()
        loss = trainer.compute_loss(model, {"pixel_values": pixel_values, "labels": labels})
        loss.backward()
        # A training micro-batch adds its count, loss sum and statistics to the accumulation window, and returns the
        # unnormalised sum: the step divides the gradients by the window's count.
        window, trainer._window = trainer._window, None
        count = float(window.count)
        grads = [parameter.grad / count for parameter in model.parameters() if parameter.grad is not None]
        results.append((loss.detach() / count, grads, window.pack()))
    (loss_a, grads_a, stats_a), (loss_b, grads_b, stats_b) = results
    torch.testing.assert_close(loss_b, loss_a, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(stats_b, stats_a, atol=1e-3, rtol=1e-6)
    for grad_a, grad_b in zip(grads_a, grads_b):
        torch.testing.assert_close(grad_b, grad_a, atol=1e-6, rtol=1e-4)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_upsampled_equals_reference(dtype):
    logits, labels = make_inputs((2, 19, 16, 16), (64, 64), dtype=torch.float32, seed=9)
    logits, labels = logits.cuda(), labels.cuda()
    fused = loss_and_grad(hem_loss, logits.to(dtype), labels, 0.2, "mean", upsample_logits=True)
    # The reference on the float32 values of the same logits (the fused path upsamples half precision in float32).
    reference = loss_and_grad(
        lambda x, y, m, **k: upsampled_reference(hem_loss, x, y, m, "mean"),
        logits.to(dtype).float(),
        labels,
        0.2,
        "mean",
    )
    assert fused[1].dtype == dtype
    torch.testing.assert_close(
        (fused[0], fused[1].float()), reference, atol=1e-6, rtol=1e-5 if dtype == torch.float32 else 1e-2
    )
