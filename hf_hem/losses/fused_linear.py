"""Fused linear HEM head: HEM on `hidden @ weight.T + bias` without ever holding the `(tokens, vocabulary)` logits.

A causal LM's loss at 8k tokens and a 128k vocabulary needs 4 GiB of float32 logits, and as much again for their
gradient. Here the tokens are walked in chunks: each chunk's logits are computed, scored by hf_hem's fused HEM
kernels (the C++ kernel on CPU, Triton on CUDA, chunked torch elsewhere), and turned at once into the gradients of
the hidden states, the weight and the bias, so that no chunk's logits outlive it. Backward then only hands the
stored gradients to autograd.

Two properties of HEM make this cheap:

* A token that meets its margin has loss 0 and a zero gradient row: the gradient matmuls (`g @ W` and `g.T @ h`)
  only take the violating tokens' rows, so the head's backward work falls with the violating fraction.
* The batch loss divides by the number of violating tokens, known only after the last chunk; but the gradient is
  linear in that `1 / count`, so the chunks accumulate the gradients of the unnormalised sum and one rescale at the
  end gives the mean's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_label_range, check_margin
from .kernels import _function as kernel_dispatch
from .kernels._inputs import KernelInputs


FUSED_REDUCTIONS = ("mean", "sum")
FUSED_IMPLEMENTATIONS = ("auto", "cpu", "triton", "torch")
# Chunks get at least this many tokens: thinner matmuls run well below the speed of one large one (on two CPU
# cores, chunks of about 130 tokens made a 1,024 x 32,000 head's matmuls markedly slower than chunks of 256 or more;
# `benchmarks/fused_linear_bench.py --chunk-size` compares).
MIN_CHUNK_TOKENS = 256


def default_chunk_size(num_tokens: int, hidden_size: int, vocab_size: int) -> int:
    """Tokens per chunk: the chunk's `(chunk, V)` logits take about as much memory as the `(N, H)` hidden states.

    The fused head then needs, beyond the gradients it returns, about two to three times the hidden states' memory
    (the chunk's logits, its violating rows and their gradient), however large the vocabulary. At least
    `MIN_CHUNK_TOKENS` tokens per chunk, at most `num_tokens`.
    """
    rows = -(-num_tokens * hidden_size // max(vocab_size, 1))
    return max(1, min(num_tokens, max(rows, MIN_CHUNK_TOKENS)))


def _check_inputs(hidden, weight, labels, bias, margin, reduction, chunk_size):
    """Checks every argument without touching tensor data; returns the checked margin."""
    if not torch.is_tensor(hidden) or not torch.is_floating_point(hidden) or hidden.dim() < 2:
        raise ValueError(
            "hidden must be a floating point tensor of shape (N, H) (or (B, L, H)), got "
            f"{type(hidden).__name__} {getattr(hidden, 'dtype', '')} of shape {tuple(getattr(hidden, 'shape', ()))}."
        )
    if not torch.is_tensor(weight) or weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must be the head's (V, H) matrix with H = {hidden.shape[-1]} (hidden's last dimension), got "
            f"shape {tuple(getattr(weight, 'shape', ()))}."
        )
    if weight.dtype != hidden.dtype or weight.device != hidden.device:
        raise ValueError(
            f"weight ({weight.dtype}, {weight.device}) must have hidden's dtype and device ({hidden.dtype}, "
            f"{hidden.device}), as F.linear needs."
        )
    if bias is not None and (
        not torch.is_tensor(bias)
        or tuple(bias.shape) != (weight.shape[0],)
        or bias.dtype != hidden.dtype
        or bias.device != hidden.device
    ):
        raise ValueError(
            f"bias must be None or a ({weight.shape[0]},) tensor of dtype {hidden.dtype} on {hidden.device}, got "
            f"{getattr(bias, 'dtype', type(bias).__name__)} of shape {tuple(getattr(bias, 'shape', ()))}."
        )
    if (
        not torch.is_tensor(labels)
        or labels.dtype.is_floating_point
        or labels.dtype.is_complex
        or labels.dtype == torch.bool
    ):
        raise ValueError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}.")
    if labels.device != hidden.device:
        raise ValueError(f"labels are on {labels.device} but hidden is on {hidden.device}; expected the same device.")
    if tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match hidden shape {tuple(hidden.shape)}: expected "
            f"{tuple(hidden.shape[:-1])} (one label per hidden state)."
        )
    if reduction not in FUSED_REDUCTIONS:
        raise ValueError(
            f"reduction={reduction!r} is not supported by the fused linear HEM head; expected one of "
            f"{FUSED_REDUCTIONS} (per-token losses need the logits: use the head and hf_hem.hem_loss instead)."
        )
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}.")
    if torch.is_tensor(margin) and margin.requires_grad:
        raise ValueError(
            "margin requires a gradient, which the fused linear HEM head does not compute; pass margin.detach(), "
            "or use the head and hf_hem.hem_loss(..., implementation='reference')."
        )
    return check_margin(margin, weight.shape[0])


def _backend(hidden: torch.Tensor, vocab_size: int, margin, implementation: str) -> str:
    """The fused kernel that scores each chunk's logits (see `hf_hem.losses.kernels.resolve_implementation`)."""
    if implementation not in FUSED_IMPLEMENTATIONS:
        raise ValueError(
            f"implementation={implementation!r} is not supported by the fused linear HEM head; expected one of "
            f"{FUSED_IMPLEMENTATIONS}."
        )
    probe = hidden.new_empty(0, vocab_size)
    backend = kernel_dispatch.resolve_implementation(probe, margin, implementation)
    if backend == "reference":
        # `auto` keeps the reference under torch.compile or on the meta device; the chunked torch kernel computes
        # the same function and its gradient.
        backend = "torch"
    kernel_dispatch.check_backend(backend, hidden.device, hidden.dtype)
    return backend


class FusedLinearHEMFunction(torch.autograd.Function):
    """HEM of `F.linear(hidden, weight, bias)` over `(N, H)` hidden states; the gradients are computed in forward.

    Outputs `(loss, loss_sum, violating_count)`: the loss (`"mean"` or `"sum"`), the unnormalised sum of per-token
    losses and the number of violating tokens (both non-differentiable). The gradients wait as attributes of `ctx`
    (not saved tensors) so that backward hands them on without a copy and frees them.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, margins, margin, ignore_index, mean, chunk_size, backend, needs):
        needs_hidden, needs_weight, needs_bias = needs
        num_tokens, hidden_size = hidden.shape
        vocab_size = weight.shape[0]
        # Gradients and the loss accumulate in float32 (float64 for float64 inputs) whatever the input dtype.
        accumulate = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        device = hidden.device
        grad_hidden = torch.zeros(num_tokens, hidden_size, dtype=accumulate, device=device) if needs_hidden else None
        grad_weight = torch.zeros(vocab_size, hidden_size, dtype=accumulate, device=device) if needs_weight else None
        grad_bias = torch.zeros(vocab_size, dtype=accumulate, device=device) if needs_bias else None
        needs_any = needs_hidden or needs_weight or needs_bias
        loss_sum = torch.zeros((), dtype=accumulate, device=device)
        violating_count = torch.zeros((), dtype=torch.int64, device=device)

        labelled = labels != ignore_index
        all_labelled = bool(labelled.all())
        # Ignored tokens take no part: their rows are never multiplied by the weight.
        token_index = None if all_labelled else labelled.nonzero().squeeze(1)
        num_labelled = num_tokens if all_labelled else token_index.numel()
        for start in range(0, num_labelled, chunk_size):
            stop = min(start + chunk_size, num_labelled)
            if all_labelled:
                rows = None
                chunk_hidden, chunk_labels = hidden[start:stop], labels[start:stop]
            else:
                rows = token_index[start:stop]
                chunk_hidden, chunk_labels = hidden.index_select(0, rows), labels.index_select(0, rows)
            logits = F.linear(chunk_hidden, weight, bias)
            inputs = KernelInputs(
                logits.view(stop - start, vocab_size, 1), chunk_labels, margins, margin, ignore_index
            )
            per_token, tau, kept, _ = kernel_dispatch.backend_forward(backend, inputs, True, True)
            del inputs  # holds a view of the logits, which are replaced below by their violating rows
            loss_sum += per_token.sum()
            violating = kept > 0
            violating_count += violating.sum()
            if not needs_any:
                continue
            # Only the violating tokens have a gradient: gather their rows (no copy when every token violates).
            violating_rows = violating.nonzero().squeeze(1)
            num_violating = violating_rows.numel()
            if num_violating == 0:
                continue
            if num_violating < stop - start:
                logits = logits.index_select(0, violating_rows)
                chunk_hidden = chunk_hidden.index_select(0, violating_rows)
                chunk_labels = chunk_labels.index_select(0, violating_rows)
                tau, kept = tau.index_select(0, violating_rows), kept.index_select(0, violating_rows)
            # The gradient of the sum of per-token losses: each kept class weighs 1/k, the target -1.
            kept_weight = kept.to(tau.dtype).reciprocal()
            inputs = KernelInputs(
                logits.view(num_violating, vocab_size, 1), chunk_labels, margins, margin, ignore_index
            )
            grad_logits = kernel_dispatch.backend_backward(backend, inputs, tau, kept, kept_weight)
            grad_logits = grad_logits.view(num_violating, vocab_size)
            del logits
            if needs_hidden:
                if rows is None:
                    target_rows = violating_rows + start
                else:
                    target_rows = rows.index_select(0, violating_rows)
                grad_hidden.index_copy_(0, target_rows, (grad_logits @ weight).to(accumulate))
            if needs_weight:
                if grad_logits.dtype == accumulate:
                    grad_weight.addmm_(grad_logits.t(), chunk_hidden)
                else:
                    # bf16/fp16: the matmul accumulates in float32 inside, each chunk's product adds in float32.
                    grad_weight += grad_logits.t() @ chunk_hidden
            if needs_bias:
                grad_bias += grad_logits.sum(0, dtype=accumulate)

        divisor = violating_count.clamp_min(1).to(accumulate) if mean else None
        loss = loss_sum / divisor if mean else loss_sum.clone()
        grads = []
        for grad, like in ((grad_hidden, hidden), (grad_weight, weight), (grad_bias, bias)):
            if grad is not None:
                if mean:
                    grad /= divisor  # the gradient is linear in 1 / count: one rescale after the last chunk
                grad = grad.to(like.dtype)
            grads.append(grad)
        ctx.gradients = grads
        ctx.mark_non_differentiable(loss_sum, violating_count)
        return loss, loss_sum, violating_count

    @staticmethod
    def backward(ctx, grad_loss, _grad_sum, _grad_count):
        gradients = ctx.gradients
        if gradients is None:
            raise RuntimeError(
                "fused_linear_hem_loss: backward ran twice through the same call (retain_graph=True); its "
                "gradients were computed in forward and handed on once. Call fused_linear_hem_loss again."
            )
        ctx.gradients = None  # handed on without a copy, and freed with autograd's references
        scale = None if bool(grad_loss == 1) else grad_loss
        results = []
        for grad in gradients:
            if grad is not None and scale is not None:
                grad.mul_(scale.to(grad.dtype))
            results.append(grad)
        return results[0], results[1], results[2], None, None, None, None, None, None, None, None


def fused_linear_hem_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    margin: float | torch.Tensor = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
    return_stats: bool = False,
    *,
    implementation: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""HEM loss of a linear head (an LM head) computed from its input, without building the full logits.

    Equal in value and gradients to `hem_loss(F.linear(hidden, weight, bias), labels, margin, class_dim=-1)`
    (see [`hem_loss`]), but the logits exist one chunk of tokens at a time: the gradients of `hidden`, `weight` and
    `bias` are computed chunk by chunk in the forward pass, from the violating tokens' rows only, and backward
    returns them. Tensors that need no gradient get none computed (a frozen head under LoRA costs no weight
    gradient; under `torch.no_grad()` only the loss is computed).

    Args:
        hidden (`torch.Tensor`): the head's input, `(N, H)` or `(B, L, H)`; float32, float64, bfloat16 or float16.
            Any strides.
        weight (`torch.Tensor`): the head's `(V, H)` weight (`lm_head.weight`), hidden's dtype and device.
        labels (`torch.Tensor`): `(N,)` or `(B, L)` target indices, already aligned with `hidden` (for a causal LM,
            shifted: the label of position `i` is token `i + 1`); `ignore_index` entries take no part.
        bias (`torch.Tensor`, *optional*): the head's `(V,)` bias.
        margin (`float` or `torch.Tensor`, defaults to 1.0): one margin, or a `(V,)` tensor of margins per target
            class (HEM+). It gets no gradient.
        ignore_index (`int`, defaults to -100): label of tokens that take no part (no loss, no gradient, not
            counted).
        reduction (`str`, defaults to `"mean"`): `"mean"`, HEM's batch loss: the sum of per-token losses over the
            number of violating tokens (0 when every token meets its margin); or `"sum"`, the unnormalised sum, for
            callers that divide by a count gathered over micro-batches or processes. Per-token losses (`"none"`)
            are not offered: they would need the logits.
        chunk_size (`int`, *optional*): tokens per chunk. By default the chunk's logits take about the memory of
            `hidden` (see [`default_chunk_size`]).
        return_stats (`bool`, defaults to `False`): also return the detached sum of per-token losses and the
            number of violating tokens (int64 tensors on hidden's device), for exact accumulation and logging.
        implementation (`str`, defaults to `"auto"`): the kernel that scores each chunk: `"auto"` (Triton on CUDA,
            the C++ kernel on CPU, else chunked torch), `"cpu"`, `"triton"` or `"torch"`.

    Returns:
        `torch.Tensor`: the scalar loss (in float32, float64 for float64 inputs); with `return_stats=True`, the
        tuple `(loss, loss_sum, violating_count)`.

    Precision: bfloat16/float16 inputs give logits in their dtype (as the unfused head does); the loss is computed
    in float32 and the gradients accumulate over chunks in float32 before being cast to the inputs' dtype.

    Example:

    ```python
    >>> hidden = model.model(input_ids).last_hidden_state[:, :-1]  # (B, L - 1, H)
    >>> loss = fused_linear_hem_loss(hidden, model.lm_head.weight, input_ids[:, 1:], margin=1.0)
    >>> loss.backward()
    ```
    """
    margin = _check_inputs(hidden, weight, labels, bias, margin, reduction, chunk_size)
    hidden_size, vocab_size = hidden.shape[-1], weight.shape[0]
    flat_hidden = hidden.reshape(-1, hidden_size)
    flat_labels = labels.reshape(-1)
    if flat_labels.dtype != torch.int64 or not flat_labels.is_contiguous():
        flat_labels = flat_labels.to(torch.int64).contiguous()
    check_label_range(flat_labels, vocab_size, ignore_index)
    backend = _backend(hidden, vocab_size, margin, implementation)
    accumulate = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    margins = (
        margin.detach().to(device=hidden.device, dtype=accumulate).contiguous() if torch.is_tensor(margin) else None
    )
    scalar_margin = 0.0 if torch.is_tensor(margin) else float(margin)
    if chunk_size is None:
        chunk_size = default_chunk_size(flat_hidden.shape[0], hidden_size, vocab_size)
    grad_enabled = torch.is_grad_enabled()
    needs = (
        grad_enabled and hidden.requires_grad,
        grad_enabled and weight.requires_grad,
        grad_enabled and bias is not None and bias.requires_grad,
    )
    loss, loss_sum, violating_count = FusedLinearHEMFunction.apply(
        flat_hidden, weight, bias, flat_labels, margins, scalar_margin, ignore_index, reduction == "mean",
        chunk_size, backend, needs,
    )  # fmt: skip
    if return_stats:
        return loss, loss_sum, violating_count
    return loss


class FusedLinearHEMLoss(nn.Module):
    """Module form of [`fused_linear_hem_loss`]; margins are kept in the `margin` buffer.

    Args:
        margin, ignore_index, reduction, chunk_size, implementation: as [`fused_linear_hem_loss`].

    Shape:
        - hidden: `(N, H)` or `(B, L, H)`; weight: `(V, H)`; labels: `(N,)` or `(B, L)`; bias: `(V,)`
        - Output: scalar.

    Example:

    ```python
    >>> criterion = FusedLinearHEMLoss(margin=1.0)
    >>> loss = criterion(hidden_states, model.lm_head.weight, shifted_labels)
    ```
    """

    def __init__(
        self,
        margin: float | torch.Tensor = 1.0,
        ignore_index: int = -100,
        reduction: str = "mean",
        chunk_size: int | None = None,
        *,
        implementation: str = "auto",
    ):
        super().__init__()
        if reduction not in FUSED_REDUCTIONS:
            raise ValueError(
                f"reduction={reduction!r} is not supported by the fused linear HEM head; expected one of "
                f"{FUSED_REDUCTIONS}."
            )
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}.")
        if implementation not in FUSED_IMPLEMENTATIONS:
            raise ValueError(
                f"implementation={implementation!r} is not supported by the fused linear HEM head; expected one of "
                f"{FUSED_IMPLEMENTATIONS}."
            )
        margin = check_margin(margin)
        # A buffer, so margins follow `.to(device)` and are saved in the state dict.
        self.register_buffer("margin", torch.as_tensor(margin, dtype=torch.float32).clone())
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.chunk_size = chunk_size
        self.implementation = implementation

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        bias: torch.Tensor | None = None,
        return_stats: bool = False,
    ):
        margin = self.margin if self.margin.dim() else float(self.margin)
        return fused_linear_hem_loss(
            hidden,
            weight,
            labels,
            bias,
            margin,
            self.ignore_index,
            self.reduction,
            self.chunk_size,
            return_stats,
            implementation=self.implementation,
        )

    def extra_repr(self) -> str:
        margin = f"{float(self.margin):.4g}" if self.margin.dim() == 0 else f"per-class ({self.margin.numel()})"
        chunk = "" if self.chunk_size is None else f", chunk_size={self.chunk_size}"
        return f"margin={margin}, ignore_index={self.ignore_index}, reduction={self.reduction!r}{chunk}"
