"""The fused linear HEM head against the unfused loss: `F.linear` then `hem_loss` (the reference definition)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

import hf_hem
from hf_hem import FusedLinearHEMLoss, fused_linear_hem_loss, hem_loss
from hf_hem.losses import kernels
from hf_hem.losses.fused_linear import default_chunk_size


try:  # tests/ may or may not become a package
    from .helpers import requires_cuda, requires_triton, requires_triton_interpreter
except ImportError:
    from helpers import requires_cuda, requires_triton, requires_triton_interpreter


pytestmark = pytest.mark.usefixtures("single_torch_thread")

CPU_BACKENDS = ["torch"] + (["cpu"] if kernels.cpu_kernel.load() is not None else [])


def make_head(num_tokens, hidden_size, vocab_size, *, seed=0, dtype=torch.float32, bias=True, quantized=False):
    """Hidden states, head weight and bias. Quantized values (multiples of 1/8, small) make every logit exact in
    float32 whatever the chunking, so ties with the threshold fall the same way in the fused and unfused paths."""
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape):
        if quantized:
            return (torch.randint(-8, 9, shape, generator=generator).to(torch.float64) / 8).to(dtype)
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    hidden = draw(num_tokens, hidden_size).requires_grad_()
    weight = draw(vocab_size, hidden_size).requires_grad_()
    head_bias = draw(vocab_size).requires_grad_() if bias else None
    return hidden, weight, head_bias


def make_labels(num_tokens, vocab_size, *, seed=0, ignored=0.25, ignore_index=-100):
    generator = torch.Generator().manual_seed(seed + 1000)
    labels = torch.randint(0, vocab_size, (num_tokens,), generator=generator)
    return torch.where(torch.rand(num_tokens, generator=generator) < ignored, ignore_index, labels)


def make_margin(kind, vocab_size, dtype=torch.float32):
    if kind == "scalar":
        return 1.0
    return torch.linspace(0.25, 2.0, vocab_size, dtype=dtype)


def inputs_of(hidden, weight, bias):
    return [tensor for tensor in (hidden, weight, bias) if tensor is not None and tensor.requires_grad]


def unfused(hidden, weight, labels, bias=None, margin=1.0, ignore_index=-100, reduction="mean"):
    """The loss the fused head must equal, and its gradients: the head's matmul, then the reference HEM."""
    logits = F.linear(hidden, weight, bias)
    loss = hem_loss(
        logits,
        labels,
        margin,
        ignore_index=ignore_index,
        reduction=reduction,
        class_dim=-1,
        implementation="reference",
    )
    return loss, torch.autograd.grad(loss, inputs_of(hidden, weight, bias), allow_unused=True)


def fused(hidden, weight, labels, bias=None, margin=1.0, **options):
    loss = fused_linear_hem_loss(hidden, weight, labels, bias, margin, **options)
    return loss, torch.autograd.grad(loss, inputs_of(hidden, weight, bias), allow_unused=True)


def assert_close(actual, expected, rtol):
    (loss, grads), (expected_loss, expected_grads) = actual, expected
    torch.testing.assert_close(loss, expected_loss.to(loss.dtype), rtol=rtol, atol=rtol * 1e-2)
    assert len(grads) == len(expected_grads)
    for grad, expected_grad in zip(grads, expected_grads):
        assert grad.dtype == expected_grad.dtype and grad.shape == expected_grad.shape
        # Relative to the gradient's scale: entries that cancel to ~0 differ by rounding only. The floor covers a
        # gradient that cancels everywhere (e.g. 1.5e-8 against an exact 0): the terms it sums are >= ~1e-2 here
        # (quantized inputs, at most a few dozen tokens), so float32 leaves ~1e-8 of them, far below 1e-2 * rtol.
        scale = expected_grad.abs().max().clamp_min(1e-2)
        torch.testing.assert_close(grad / scale, expected_grad / scale, rtol=rtol, atol=rtol)


def satisfied_head(num_tokens, vocab_size, *, margin=1.0, satisfied=None, seed=0):
    """A head whose tokens in `satisfied` (default: all) meet the margin with room to spare: the weight is the
    identity times 3 and those tokens' hidden states are one-hot on their label (target logit 3, others 0)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab_size, (num_tokens,), generator=generator)
    hidden = torch.randn(num_tokens, vocab_size, generator=generator) * 0.1
    satisfied = torch.ones(num_tokens, dtype=torch.bool) if satisfied is None else satisfied
    hidden[satisfied] = F.one_hot(labels[satisfied], vocab_size).float()
    weight = 3 * margin * torch.eye(vocab_size)
    return hidden.requires_grad_(), weight.requires_grad_(), labels


# ------------------------------------------------------------------------------------------------ equality


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("margin_kind", ["scalar", "per-class"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_equals_unfused(backend, dtype, bias, margin_kind, reduction):
    hidden, weight, head_bias = make_head(53, 24, 97, seed=3, dtype=dtype, bias=bias)
    labels = make_labels(53, 97, seed=3)
    margin = make_margin(margin_kind, 97, dtype)
    expected = unfused(hidden, weight, labels, head_bias, margin, reduction=reduction)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    # Chunks of 1 token, chunks that do not divide N, one chunk larger than N, and the default.
    for chunk_size in (1, 8, 17, 64, None):
        actual = fused(
            hidden,
            weight,
            labels,
            head_bias,
            margin,
            reduction=reduction,
            chunk_size=chunk_size,
            implementation=backend,
        )
        assert_close(actual, expected, rtol)


@settings(max_examples=40, deadline=None)
@given(
    num_tokens=st.integers(1, 40),
    hidden_size=st.integers(1, 9),
    vocab_size=st.integers(2, 30),
    chunk_size=st.integers(1, 45),
    ignored=st.sampled_from([0.0, 0.3, 1.0]),
    per_class=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
# Found by CI: the weight gradient cancels to an exact 0 (fused) against 1.5e-8 (float32 rounding, unfused).
@example(num_tokens=7, hidden_size=1, vocab_size=2, chunk_size=1, ignored=0.0, per_class=False, bias=False, seed=0)
def test_equals_unfused_on_random_shapes(
    num_tokens, hidden_size, vocab_size, chunk_size, ignored, per_class, bias, seed
):
    # Quantized inputs: exact logits, so even ties with the threshold must fall the same way.
    hidden, weight, head_bias = make_head(num_tokens, hidden_size, vocab_size, seed=seed, bias=bias, quantized=True)
    labels = make_labels(num_tokens, vocab_size, seed=seed, ignored=ignored)
    margin = torch.arange(vocab_size, dtype=torch.float32) % 4 / 4 if per_class else 0.5
    expected = unfused(hidden, weight, labels, head_bias, margin)
    actual = fused(hidden, weight, labels, head_bias, margin, chunk_size=chunk_size)
    assert_close(actual, expected, 1e-5)


def test_method_page_vectors_through_an_identity_head():
    # With the identity as the head, the logits are the hidden states: the method page's test vectors.
    logits = torch.tensor([[2.0, 1.9, 2.3, 0.0], [3, 0, 0, 0], [1.0, 1.1, 0.5, 0.8]], requires_grad=True)
    loss = fused_linear_hem_loss(logits, torch.eye(4), torch.tensor([0, 0, 1]), margin=0.2, chunk_size=2)
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(loss, torch.tensor(0.3))
    torch.testing.assert_close(grad, torch.tensor([[-0.5, 0, 0.5, 0], [0, 0, 0, 0], [0.5, -0.5, 0, 0]]))


def test_float64_directional_derivatives_match_finite_differences():
    # gradcheck-style, on the fused function alone: <gradient, d> against central differences along random d.
    # (torch.autograd.gradcheck itself calls backward once per output through one graph, which the fused head
    # does not allow: its gradients are handed on, not kept.)
    hidden, weight, head_bias = make_head(9, 4, 6, seed=5, dtype=torch.float64)
    labels = make_labels(9, 6, seed=5)
    margin = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    tensors = (hidden, weight, head_bias)
    loss = fused_linear_hem_loss(hidden, weight, labels, head_bias, margin, chunk_size=4)
    grads = torch.autograd.grad(loss, tensors)
    generator = torch.Generator().manual_seed(0)
    epsilon = 1e-6
    for _ in range(5):
        directions = [torch.randn(t.shape, generator=generator, dtype=torch.float64) for t in tensors]
        with torch.no_grad():
            ahead, behind = (
                fused_linear_hem_loss(*(t + sign * epsilon * d for t, d in zip(tensors[:2], directions[:2])), labels,
                                      head_bias + sign * epsilon * directions[2], margin, chunk_size=4)
                for sign in (1, -1)
            )  # fmt: skip
        numerical = (ahead - behind) / (2 * epsilon)
        analytical = sum((g * d).sum() for g, d in zip(grads, directions))
        torch.testing.assert_close(analytical, numerical, rtol=1e-6, atol=1e-8)


def test_batched_and_non_contiguous_hidden_states():
    # (B, L, H) states seen through a transpose (strides of a (L, B, H) tensor), labels (B, L).
    base, weight, head_bias = make_head(5 * 3, 8, 21, seed=9)
    hidden = base.detach().reshape(5, 3, 8).transpose(0, 1).requires_grad_()
    assert not hidden.is_contiguous()
    labels = make_labels(15, 21, seed=9).reshape(3, 5)
    expected = unfused(hidden, weight, labels, head_bias, 0.7)
    assert_close(fused(hidden, weight, labels, head_bias, 0.7, chunk_size=4), expected, 1e-5)


@pytest.mark.parametrize("ignore_index", [-100, 7])
def test_ignore_index(ignore_index):
    hidden, weight, head_bias = make_head(30, 6, 12, seed=2)
    labels = make_labels(30, 12, seed=2, ignored=0.4, ignore_index=ignore_index)
    expected = unfused(hidden, weight, labels, head_bias, ignore_index=ignore_index)
    actual = fused(hidden, weight, labels, head_bias, ignore_index=ignore_index, chunk_size=7)
    assert_close(actual, expected, 1e-5)
    ignored = labels == ignore_index
    assert ignored.any() and torch.count_nonzero(actual[1][0][ignored]) == 0


def test_mixed_satisfied_and_violating_tokens_in_one_chunk():
    # Every other token meets its margin: chunks hold both, and only the violating rows get a gradient.
    satisfied = torch.arange(24) % 2 == 0
    hidden, weight, labels = satisfied_head(24, 10, satisfied=satisfied)
    expected = unfused(hidden, weight, labels)
    loss, violating_sum, count = fused_linear_hem_loss(hidden, weight, labels, chunk_size=5, return_stats=True)
    actual = (loss, torch.autograd.grad(loss, (hidden, weight)))
    assert_close(actual, expected, 1e-5)
    assert int(count) == 12
    assert torch.count_nonzero(actual[1][0][satisfied]) == 0 and torch.count_nonzero(actual[1][0][~satisfied]) > 0


@pytest.mark.parametrize("labels_kind", ["all satisfied", "all ignored", "no tokens"])
def test_nothing_to_learn_gives_zero_loss_and_zero_gradients(labels_kind):
    hidden, weight, labels = satisfied_head(16, 8)
    head_bias = torch.zeros(8, requires_grad=True)
    if labels_kind == "all ignored":
        labels = torch.full_like(labels, -100)
    elif labels_kind == "no tokens":
        hidden, labels = hidden[:0].detach().requires_grad_(), labels[:0]
    loss, loss_sum, count = fused_linear_hem_loss(hidden, weight, labels, head_bias, return_stats=True)
    grads = torch.autograd.grad(loss, (hidden, weight, head_bias))
    assert loss.item() == 0.0 and loss_sum.item() == 0.0 and int(count) == 0
    for grad in grads:
        assert torch.isfinite(grad).all() and torch.count_nonzero(grad) == 0


# ------------------------------------------------------------------------------------------------ accumulation


def test_sum_over_micro_batches_divided_by_the_global_count_equals_the_mean():
    # What a trainer does under gradient accumulation: "sum" per micro-batch, one division by the total count.
    hidden, weight, head_bias = make_head(40, 8, 15, seed=4)
    labels = make_labels(40, 15, seed=4)
    expected = unfused(hidden, weight, labels, head_bias, 0.8)
    total, total_count = 0.0, 0
    grads = [torch.zeros_like(tensor) for tensor in (hidden, weight, head_bias)]
    for part in torch.arange(40).chunk(4):
        loss, loss_sum, count = fused_linear_hem_loss(
            hidden[part], weight, labels[part], head_bias, 0.8, reduction="sum", return_stats=True
        )
        torch.testing.assert_close(loss.detach(), loss_sum)
        for accumulated, grad in zip(grads, torch.autograd.grad(loss, (hidden, weight, head_bias))):
            accumulated += grad
        total, total_count = total + loss_sum, total_count + int(count)
    actual = (total / total_count, [grad / total_count for grad in grads])
    assert_close(actual, expected, 1e-5)


def test_upstream_gradient_scales_the_gradients():
    hidden, weight, head_bias = make_head(20, 5, 9, seed=6)
    labels = make_labels(20, 9, seed=6)
    _, expected_grads = unfused(hidden, weight, labels, head_bias)
    loss = fused_linear_hem_loss(hidden, weight, labels, head_bias)
    grads = torch.autograd.grad(loss * 0.25, (hidden, weight, head_bias))
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad * 0.25, rtol=1e-5, atol=1e-7)


def test_only_the_gradients_asked_for_are_computed():
    hidden, weight, head_bias = make_head(20, 5, 9, seed=8)
    labels = make_labels(20, 9, seed=8)
    frozen_weight = weight.detach()  # a frozen head, as under LoRA
    expected = unfused(hidden, frozen_weight, labels, head_bias)
    assert_close(fused(hidden, frozen_weight, labels, head_bias), expected, 1e-5)
    with torch.no_grad():
        loss = fused_linear_hem_loss(hidden, weight, labels, head_bias)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, expected[0])


def test_second_backward_through_one_call_raises():
    hidden, weight, head_bias = make_head(6, 3, 5, seed=1)
    loss = fused_linear_hem_loss(hidden, weight, make_labels(6, 5, ignored=0.0), head_bias)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


# ------------------------------------------------------------------------------------------------ precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    hidden, weight, head_bias = make_head(33, 16, 40, seed=11, dtype=dtype)
    labels = make_labels(33, 40, seed=11)
    expected = unfused(hidden, weight, labels, head_bias)
    loss, grads = fused(hidden, weight, labels, head_bias, chunk_size=8)
    assert loss.dtype == torch.float32
    assert [grad.dtype for grad in grads] == [dtype] * 3
    # Same logits (computed in the inputs' dtype), loss in float32; the gradients differ by the rounding of each
    # chunk's product (float32 accumulation here, one half-precision matmul for the whole weight gradient unfused).
    assert_close((loss, grads), expected, 2e-2)
    float_expected = unfused(
        *(t.detach().float().requires_grad_() for t in (hidden, weight)), labels, head_bias.float()
    )
    torch.testing.assert_close(loss, float_expected[0], rtol=2e-2, atol=1e-3)


def test_under_autocast_equals_the_unfused_head_under_autocast():
    # Mixed precision as a trainer runs it: float32 parameters, bfloat16 logits; gradients come back in float32.
    hidden, weight, head_bias = make_head(29, 16, 45, seed=15)
    labels = make_labels(29, 45, seed=15)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = unfused(hidden, weight, labels, head_bias)
        actual = fused(hidden, weight, labels, head_bias, chunk_size=8)
    assert [grad.dtype for grad in actual[1]] == [torch.float32] * 3
    assert_close(actual, expected, 2e-2)


# ------------------------------------------------------------------------------------------------ module, chunking


def test_module_matches_the_function_and_keeps_margins_in_a_buffer():
    margin = torch.linspace(0.5, 1.5, 11)
    criterion = FusedLinearHEMLoss(margin, chunk_size=4)
    assert torch.equal(criterion.state_dict()["margin"], margin)
    assert "per-class (11)" in repr(criterion) and "chunk_size=4" in repr(criterion)
    hidden, weight, head_bias = make_head(18, 7, 11, seed=12)
    labels = make_labels(18, 11, seed=12)
    loss, loss_sum, count = criterion(hidden, weight, labels, head_bias, return_stats=True)
    torch.testing.assert_close(loss, fused_linear_hem_loss(hidden, weight, labels, head_bias, margin))
    torch.testing.assert_close(loss, loss_sum / count)
    torch.testing.assert_close(
        FusedLinearHEMLoss(0.3)(hidden, weight, labels), unfused(hidden, weight, labels, None, 0.3)[0]
    )


def test_exported_from_the_package():
    assert "fused_linear_hem_loss" in hf_hem.__all__ and "FusedLinearHEMLoss" in hf_hem.__all__
    assert hf_hem.losses.fused_linear_hem_loss is fused_linear_hem_loss


def test_default_chunk_keeps_the_logits_chunk_near_the_hidden_states_size():
    # 8,192 tokens x 4,096 hidden x 128,256 vocabulary (a Llama-3 head): 262 rows of logits hold the hidden states'
    # 32 Mi elements.
    assert default_chunk_size(8192, 4096, 128256) == 262
    assert 261 * 128256 < 8192 * 4096 <= 262 * 128256
    assert default_chunk_size(4096, 1024, 32000) == 256  # never thinner than MIN_CHUNK_TOKENS
    assert default_chunk_size(3, 8, 50) == 3  # never more rows than tokens


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(reduction="none"), "reduction='none'"),
        (dict(chunk_size=0), "chunk_size must be"),
        (dict(labels=torch.tensor([0, 1, 9, -100])), r"\[9\] outside \[0, 5\)"),
        (dict(labels=torch.tensor([0, 1, 2])), r"labels shape \(3,\)"),
        (dict(labels=torch.zeros(4)), "integer tensor"),
        (dict(labels=torch.tensor([0, 1, 2, -100], device="meta")), "labels are on meta"),
        (dict(weight=torch.randn(5, 4)), r"\(V, H\) matrix with H = 3"),
        (dict(weight=torch.randn(5, 3, dtype=torch.float64)), "must have hidden's dtype"),
        (dict(bias=torch.randn(4)), r"bias must be None or a \(5,\)"),
        (dict(margin=torch.ones(4)), "4 entries but the logits have 5 classes"),
        (dict(margin=-1.0), "finite and >= 0"),
        (dict(margin=torch.ones(5, requires_grad=True)), "margin requires a gradient"),
        (dict(implementation="reference"), "fused"),
    ],
)
def test_bad_input_is_named(change, message):
    arguments = dict(hidden=torch.randn(4, 3), weight=torch.randn(5, 3), labels=torch.tensor([0, 1, 2, -100]))
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        fused_linear_hem_loss(**arguments)


# ------------------------------------------------------------------------------------------------ Triton


@requires_triton
@requires_triton_interpreter
def test_triton_interpreted_equals_unfused(interpreted_triton):
    hidden, weight, head_bias = make_head(19, 6, 37, seed=13)
    labels = make_labels(19, 37, seed=13)
    margin = make_margin("per-class", 37)
    expected = unfused(hidden, weight, labels, head_bias, margin)
    assert_close(
        fused(hidden, weight, labels, head_bias, margin, chunk_size=6, implementation="triton"), expected, 1e-5
    )


@requires_cuda
@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_equals_unfused(dtype):
    hidden, weight, head_bias = make_head(1000, 64, 3001, seed=14, dtype=dtype)
    hidden, weight, head_bias = (tensor.detach().cuda().requires_grad_() for tensor in (hidden, weight, head_bias))
    labels = make_labels(1000, 3001, seed=14).cuda()
    margin = make_margin("per-class", 3001).cuda()
    expected = unfused(hidden, weight, labels, head_bias, margin)
    # TF32 is off by default for matmuls, so float32 chunks compute the same logits as the whole matmul.
    actual = fused(hidden, weight, labels, head_bias, margin, chunk_size=96)
    assert_close(actual, expected, 1e-5 if dtype == torch.float32 else 2e-2)
