"""The loss library against the method page's test vectors, properties and bad inputs."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_hem
from hf_hem import get_loss, hem_loss, margins_from_counts, mm_loss
from hf_hem.losses import (
    LOSS_NAMES,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    HEMLoss,
    LogitAdjustedLoss,
    LogitNormLoss,
    MMLoss,
    MMMazLoss,
    MMThresLoss,
    cross_entropy_loss,
    dice_loss,
    focal_loss,
    logit_adjusted_loss,
    logitnorm_loss,
)


try:  # tests/ may or may not become a package
    from .helpers import MARGIN_LOSSES, gradcheck_inputs, method_page_batch
except ImportError:
    from helpers import MARGIN_LOSSES, gradcheck_inputs, method_page_batch


# ---------------------------------------------------------------- test vectors of the method page


def test_single_sample_vector():
    logits = torch.tensor([[2.0, 1.9, 2.3, 0.0]], requires_grad=True)
    loss = hem_loss(logits, torch.tensor([0]), margin=0.2)
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(0.5), atol=1e-6, rtol=0)
    torch.testing.assert_close(logits.grad, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


def test_batch_vector():
    logits, labels = method_page_batch()
    logits.requires_grad_()
    per_sample = hem_loss(logits, labels, margin=0.2, reduction="none")
    torch.testing.assert_close(per_sample, torch.tensor([0.5, 0.0, 0.1]), atol=1e-6, rtol=0)
    loss = hem_loss(logits, labels, margin=0.2)
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(0.3), atol=1e-6, rtol=0)
    expected = torch.tensor([[-0.5, 0, 0.5, 0], [0, 0, 0, 0], [0.5, -0.5, 0, 0]])
    torch.testing.assert_close(logits.grad, expected, atol=1e-6, rtol=0)


def _logits_for_errors(errors, margin=0.2):
    """Logits of a sample with target 0 whose margin errors are `errors` (entry 0 is the target's 0)."""
    errors = torch.tensor(errors, dtype=torch.float64)
    return (errors - margin).unsqueeze(0), torch.tensor([0])


@pytest.mark.parametrize(
    "errors, expected",
    [
        ([0, 0, 0.5, 0.3], {"mm": 0.2, "hem": 0.4}),
        ([0, 0.1, 0.5, 0.3], {"mm": 0.225, "hem": 0.4, "mm+maz": 0.3, "mm+thres": 0.2}),
    ],
)
def test_error_level_vectors(errors, expected):
    logits, labels = _logits_for_errors(errors)
    # Errors of exactly 0 sit on the hinge; nudge them below so that they are clearly satisfied.
    logits = torch.where(torch.tensor(errors) == 0, logits - 1e-3, logits)
    logits[0, 0] = 0.0
    for name, value in expected.items():
        assert MARGIN_LOSSES[name](logits, labels, margin=0.2).item() == pytest.approx(value, abs=1e-9), name


def test_batch_of_errors_vector():
    # Three samples whose single error is 0.2, 0.3 and 0.25 → HEM is their mean, 0.25.
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.1], [0.0, 0.05]], dtype=torch.float64)
    assert hem_loss(logits, torch.tensor([0, 0, 0]), margin=0.2).item() == pytest.approx(0.25, abs=1e-12)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("function", list(MARGIN_LOSSES.values()))
@pytest.mark.parametrize("per_class", [False, True])
def test_gradcheck_margin_family(function, per_class):
    logits, labels, margins = gradcheck_inputs()
    margin = margins if per_class else 0.5
    assert torch.autograd.gradcheck(lambda x: function(x, labels, margin), (logits,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["ce", "logitnorm", "la", "focal", "dice"])
def test_gradcheck_baselines(name):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, 2, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (4, 2, 2), generator=generator)
    labels[1, 0, 0] = -100
    criterion = get_loss(name, class_counts=[5, 3, 2]) if name == "la" else get_loss(name)
    assert torch.autograd.gradcheck(lambda x: criterion(x, labels), (logits,), eps=1e-6, atol=1e-5)


def test_violating_sample_gradient_is_minus_one_over_n():
    # However small the errors, the target gets -1/N and each kept class +1/(kN).
    logits = torch.tensor([[1.0, 0.99, 0.99, -5.0], [0.0, 1.0, 5.0, 5.0]], requires_grad=True)
    hem_loss(logits, torch.tensor([0, 1]), margin=0.02).backward()
    assert logits.grad[0, 0].item() == pytest.approx(-0.5)
    assert logits.grad[0, 1].item() == pytest.approx(0.25) and logits.grad[0, 2].item() == pytest.approx(0.25)
    assert logits.grad[1, 1].item() == pytest.approx(-0.5)


# ---------------------------------------------------------------- properties


logit_batches = st.integers(min_value=0, max_value=2**31 - 1).map(
    lambda seed: torch.randn(7, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
)


@settings(max_examples=40, deadline=None)
@given(logits=logit_batches, seed=st.integers(0, 1000))
def test_hem_plus_with_uniform_counts_equals_hem(logits, seed):
    labels = torch.randint(0, 4, (7,), generator=torch.Generator().manual_seed(seed))
    margins = margins_from_counts([250, 250, 250, 250], scale=2000.0, max_margin=None)
    expected_margin = math.sqrt(2000.0 / 1000)
    torch.testing.assert_close(margins, torch.full((4,), expected_margin, dtype=torch.float32))
    torch.testing.assert_close(
        hem_loss(logits, labels, margins.double()), hem_loss(logits, labels, expected_margin), atol=1e-6, rtol=1e-6
    )


@settings(max_examples=40, deadline=None)
@given(logits=logit_batches, seed=st.integers(0, 1000))
def test_ignored_positions_do_not_change_the_loss(logits, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (7,), generator=generator)
    extra = torch.randn(3, 4, generator=generator, dtype=torch.float64) * 5
    full_logits = torch.cat([logits, extra])
    full_labels = torch.cat([labels, torch.full((3,), -100)])
    for function in MARGIN_LOSSES.values():
        torch.testing.assert_close(function(full_logits, full_labels, 0.3), function(logits, labels, 0.3))


@settings(max_examples=40, deadline=None)
@given(logits=logit_batches, seed=st.integers(0, 1000), shift=st.floats(-50, 50))
def test_shifting_all_logits_of_a_sample_changes_nothing(logits, seed, shift):
    labels = torch.randint(0, 4, (7,), generator=torch.Generator().manual_seed(seed))
    shifted = logits.clone()
    shifted[seed % 7] += shift
    torch.testing.assert_close(hem_loss(shifted, labels, 0.3), hem_loss(logits, labels, 0.3), atol=1e-9, rtol=1e-9)


@settings(max_examples=40, deadline=None)
@given(logits=logit_batches, seed=st.integers(0, 1000))
def test_permuting_the_batch_changes_nothing(logits, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (7,), generator=generator)
    permutation = torch.randperm(7, generator=generator)
    for name in ("hem", "mm", "ce", "focal", "dice", "logitnorm"):
        criterion = get_loss(name)
        torch.testing.assert_close(criterion(logits[permutation], labels[permutation]), criterion(logits, labels))


@settings(max_examples=40, deadline=None)
@given(logits=logit_batches, seed=st.integers(0, 1000), margin=st.floats(0.0, 3.0))
def test_mm_equals_multi_margin_loss(logits, seed, margin):
    labels = torch.randint(0, 4, (7,), generator=torch.Generator().manual_seed(seed))
    expected = F.multi_margin_loss(logits, labels, p=1, margin=margin)
    torch.testing.assert_close(mm_loss(logits, labels, margin), expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("function", list(MARGIN_LOSSES.values()))
def test_fully_separated_batch_gives_zero_loss_and_gradient(function):
    labels = torch.tensor([0, 1, 2, 1])
    logits = (F.one_hot(labels, 3).double() * 5.0).requires_grad_()
    loss = function(logits, labels, 0.5)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_all_ignored_batch_is_zero_not_nan(name):
    kwargs = {"class_counts": [3, 2, 1]} if name in ("hem+", "la") else {}
    criterion = get_loss(name, **kwargs)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = criterion(logits, torch.full((2, 4, 4), -100))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_spatial_logits_equal_flattened_rows(name):
    kwargs = {"class_counts": [3, 2, 1]} if name in ("hem+", "la") else {}
    criterion = get_loss(name, **kwargs)
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 4, 5), generator=generator)
    labels[0, :2] = -100
    rows = logits.movedim(1, -1).reshape(-1, 3)
    torch.testing.assert_close(criterion(logits, labels), criterion(rows, labels.reshape(-1)))


def test_reduction_none_has_label_shape_and_zero_at_ignored():
    logits = torch.randn(2, 3, 4, 5)
    labels = torch.randint(0, 3, (2, 4, 5))
    labels[1, 2, 3] = 255
    per_sample = hem_loss(logits, labels, 1.0, ignore_index=255, reduction="none")
    assert per_sample.shape == labels.shape
    assert per_sample[1, 2, 3] == 0
    assert hem_loss(logits, labels, 1.0, ignore_index=255, reduction="sum") == pytest.approx(per_sample.sum().item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    generator = torch.Generator().manual_seed(4)
    logits32 = torch.randn(16, 10, generator=generator)
    labels = torch.randint(0, 10, (16,), generator=generator)
    half = logits32.to(dtype).requires_grad_()
    loss = hem_loss(half, labels, 0.3)
    loss.backward()
    assert loss.dtype == torch.float32 and half.grad.dtype == dtype
    torch.testing.assert_close(loss, hem_loss(half.detach().float(), labels, 0.3))


def test_module_keeps_margins_as_buffer():
    criterion = hf_hem.HEMLoss.from_label_counts([100, 10, 1], scale=2000.0)
    assert "margin" in dict(criterion.named_buffers())
    torch.testing.assert_close(criterion.margin, margins_from_counts([100, 10, 1]))
    assert "margin" in criterion.state_dict()


# ---------------------------------------------------------------- margins


def test_margins_match_the_paper():
    assert margins_from_counts([5000] * 10, per_class=False)[0].item() == pytest.approx(0.2)
    # Below S = 2000 the default caps the rule (tests/test_margins.py); max_margin=None is the paper's rule.
    hem_plus = margins_from_counts([1000, 10], max_margin=None)
    assert hem_plus.tolist() == pytest.approx([math.sqrt(2000 / (2 * 1000)), math.sqrt(2000 / (2 * 10))])
    # Segmentation: S is the number of images, HEM+ uses pixel frequencies.
    seg = margins_from_counts([300, 100], num_samples=20, max_margin=None)
    assert seg.tolist() == pytest.approx([math.sqrt(2000 / (2 * 20 * 0.75)), math.sqrt(2000 / (2 * 20 * 0.25))])


def test_zero_count_class_warns_and_gets_largest_finite_margin():
    with pytest.warns(UserWarning, match=r"classes \[1\]"):
        margins = margins_from_counts([100, 0, 10])
    assert torch.isfinite(margins).all()
    assert margins[1] == margins.max() == margins[2]


# ---------------------------------------------------------------- bad input


def test_label_out_of_range_names_the_values():
    with pytest.raises(ValueError, match=r"\[3, 7\].*\[0, 3\)"):
        hem_loss(torch.randn(4, 3), torch.tensor([0, 3, 7, -100]))


def test_negative_label_that_is_not_ignore_index():
    with pytest.raises(ValueError, match=r"\[-1\]"):
        hem_loss(torch.randn(2, 3), torch.tensor([0, -1]))


def test_shape_mismatch_shows_both_shapes():
    with pytest.raises(ValueError, match=r"labels shape \(5, 4\).*logits shape \(4, 3, 5\)"):
        hem_loss(torch.randn(4, 3, 5), torch.zeros(5, 4, dtype=torch.long))


def test_shape_mismatch_simple():
    with pytest.raises(ValueError, match=r"labels shape \(3,\).*logits shape \(4, 3\)"):
        hem_loss(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))


def test_margin_tensor_of_wrong_length():
    with pytest.raises(ValueError, match="2 entries but the logits have 3 classes"):
        hem_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("margin", [-0.1, float("nan"), float("inf"), torch.tensor([0.1, -1.0, 0.2])])
def test_negative_or_non_finite_margin(margin):
    with pytest.raises(ValueError, match="finite and >= 0"):
        hem_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), margin)
    with pytest.raises(ValueError, match="finite and >= 0"):
        hf_hem.HEMLoss(margin)


def test_margin_values_are_checked_once_per_tensor_version(monkeypatch):
    from hf_hem.losses import _common

    checks = []
    original = _common._check_margin_values
    monkeypatch.setattr(_common, "_check_margin_values", lambda margin: (checks.append(1), original(margin)))
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    margins = torch.tensor([0.1, 0.2, 0.3])
    for _ in range(3):
        hem_loss(logits, labels, margins)
    # One check for the tensor (a trainer passes the same buffer every step: no per-step host sync on a GPU) ...
    assert len(checks) == 1
    # ... until it changes in place, and a fresh tensor with the same values is checked too.
    margins[1] = -1.0
    with pytest.raises(ValueError, match="finite and >= 0"):
        hem_loss(logits, labels, margins)
    margins[1] = float("nan")
    with pytest.raises(ValueError, match="finite and >= 0"):
        hf_hem.HEMLoss(margins)
    hem_loss(logits, labels, torch.tensor([0.1, 0.2, 0.3]))
    assert len(checks) == 4


def test_counts_of_wrong_length():
    with pytest.raises(ValueError, match="3 entries but num_classes=4"):
        margins_from_counts([1, 2, 3], num_classes=4)


def test_unknown_loss_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names are: ce, hem, hem\\+, mm"):
        get_loss("hinge")


def test_bad_reduction():
    with pytest.raises(ValueError, match="reduction='avg'"):
        hem_loss(torch.randn(2, 3), torch.tensor([0, 1]), reduction="avg")


def test_float_labels_are_rejected():
    with pytest.raises(ValueError, match="integer tensor"):
        hem_loss(torch.randn(2, 3), torch.tensor([0.0, 1.0]))


# ---------------------------------------------------------------- classes last (class_dim=-1, token classification)
# The margin losses on every backend are checked in test_kernels.py; here the baselines, the modules and the errors.

BASELINES = {
    "ce": cross_entropy_loss,
    "logitnorm": logitnorm_loss,
    "la": lambda logits, labels, **kwargs: logit_adjusted_loss(logits, labels, [5, 1, 3, 2, 4], **kwargs),
    "focal": focal_loss,
    "dice": dice_loss,
}


def token_batch(shape=(3, 7, 5), seed=0, dtype=torch.float64):
    """`(N, L, C)` logits as a token classification head gives them and `(N, L)` labels with `-100` padding."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator, dtype=dtype) * 2
    labels = torch.randint(0, shape[-1], shape[:-1], generator=generator)
    labels[0, -2:] = -100
    labels[1, 0] = -100
    return logits, labels


def loss_and_grad(function, logits, labels, reduction, **kwargs):
    leaf = logits.detach().clone().requires_grad_()
    loss = function(leaf, labels, reduction=reduction, **kwargs)
    weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).view(loss.shape)
    (loss * weights).sum().backward()
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("name", list(BASELINES) + list(MARGIN_LOSSES))
@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_classes_last_equals_classes_first(name, shape, reduction):
    function = BASELINES.get(name) or MARGIN_LOSSES[name]
    logits, labels = token_batch(shape)
    last_loss, last_grad = loss_and_grad(function, logits, labels, reduction, class_dim=-1)
    first_loss, first_grad = loss_and_grad(function, logits.movedim(-1, 1).contiguous(), labels, reduction)
    torch.testing.assert_close(last_loss, first_loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(last_grad, first_grad.movedim(1, -1), atol=1e-6, rtol=1e-6)
    assert last_grad.is_contiguous()
    if reduction == "none":
        assert last_loss.shape == ((shape[0],) if name == "dice" else labels.shape)
    # The positive spelling of the last dimension is the same.
    positive, _ = loss_and_grad(function, logits, labels, reduction, class_dim=len(shape) - 1)
    torch.testing.assert_close(positive, last_loss, atol=0, rtol=0)


def test_classes_last_two_dim_logits_are_the_default():
    # For (N, C) logits the last dimension is dimension 1.
    logits, labels = token_batch()
    logits, labels = logits[:, 0], labels[:, 0]
    assert (labels == -100).any()
    for function in (*BASELINES.values(), *MARGIN_LOSSES.values()):
        torch.testing.assert_close(function(logits, labels, class_dim=-1), function(logits, labels))


MODULES = {
    "ce": lambda **kwargs: CrossEntropyLoss(**kwargs),
    "logitnorm": lambda **kwargs: LogitNormLoss(0.5, **kwargs),
    "la": lambda **kwargs: LogitAdjustedLoss([5, 1, 3, 2, 4], **kwargs),
    "focal": lambda **kwargs: FocalLoss(1.5, **kwargs),
    "dice": lambda **kwargs: DiceLoss(**kwargs),
    "hem": lambda **kwargs: HEMLoss(0.3, **kwargs),
    "hem+": lambda **kwargs: HEMLoss.from_label_counts([50, 10, 30, 20, 40], **kwargs),
    "mm": lambda **kwargs: MMLoss(0.3, **kwargs),
    "mm+maz": lambda **kwargs: MMMazLoss(0.3, **kwargs),
    "mm+thres": lambda **kwargs: MMThresLoss(0.3, **kwargs),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_modules_take_class_dim(name):
    logits, labels = token_batch()
    last = MODULES[name](class_dim=-1, reduction="none")
    first = MODULES[name](reduction="none")
    assert last.class_dim == -1 and first.class_dim == 1
    torch.testing.assert_close(last(logits, labels), first(logits.movedim(-1, 1), labels))
    # Shown only when it is not the default.
    assert "class_dim=-1" in repr(last) and "class_dim" not in repr(first)


@pytest.mark.parametrize("class_dim", [0, 2, -2, -4])
def test_unsupported_class_dim_is_named(class_dim):
    logits, labels = torch.randn(2, 3, 4, 5), torch.zeros(2, 3, 4, dtype=torch.long)
    for function in (*BASELINES.values(), *MARGIN_LOSSES.values()):
        with pytest.raises(ValueError, match=rf"class_dim={class_dim} is not supported.*expected 1 .*last"):
            function(logits, labels, class_dim=class_dim)
    for implementation in ("reference", "torch"):
        with pytest.raises(ValueError, match=rf"class_dim={class_dim} is not supported"):
            hem_loss(logits, labels, class_dim=class_dim, implementation=implementation)


@pytest.mark.parametrize("class_dim", [1.0, True, "last", None])
def test_class_dim_must_be_an_int(class_dim):
    with pytest.raises(ValueError, match="class_dim must be an int"):
        hem_loss(torch.randn(2, 3), torch.tensor([0, 1]), class_dim=class_dim)
    with pytest.raises(ValueError, match="class_dim must be an int"):
        cross_entropy_loss(torch.randn(2, 3), torch.tensor([0, 1]), class_dim=class_dim)


@pytest.mark.parametrize("name", list(MODULES))
def test_modules_reject_class_dim_zero_when_built(name):
    with pytest.raises(ValueError, match="class_dim=0 is not supported"):
        MODULES[name](class_dim=0)
    with pytest.raises(ValueError, match="class_dim must be an int"):
        MODULES[name](class_dim=-1.0)


def test_classes_last_shape_mismatch_names_both_shapes_and_class_dim():
    logits = torch.randn(3, 7, 5)
    # (N, C) labels for (N, L, C) logits: the mistake of forgetting the class dimension is last.
    for labels, class_dim in ((torch.zeros(3, 5, dtype=torch.long), -1), (torch.zeros(3, 7, dtype=torch.long), 1)):
        for function in (*BASELINES.values(), *MARGIN_LOSSES.values()):
            pattern = (
                rf"labels shape {re_shape(labels.shape)} does not match logits shape \(3, 7, 5\) with "
                rf"class_dim={class_dim}: expected labels of shape {re_shape((3, 7) if class_dim == -1 else (3, 5))}"
            )
            with pytest.raises(ValueError, match=pattern):
                function(logits, labels, class_dim=class_dim)


def re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def test_classes_last_label_checks_still_apply():
    logits = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"\[3\].*\[0, 3\)"):
        hem_loss(logits, torch.tensor([[0, 1, 3, -100], [0, 0, 0, 0]]), class_dim=-1)
    with pytest.raises(ValueError, match="integer tensor"):
        hem_loss(logits, torch.zeros(2, 4), class_dim=-1)
