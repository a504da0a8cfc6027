"""Causal language models in [`HEMTrainer`]: the head detection, the next-token labels, token counts and margins.

A causal LM predicts token `t + 1` at position `t`. transformers' own loss (`ForCausalLMLoss`) pads the labels with
one ignored position on the right and shifts them left by one, so the `(N, L, V)` logits are scored against
`labels[..., 1:]` with the last position ignored; a collator that already shifted its labels passes them as
`shift_labels` instead, and that loss uses them as they are. HEM does exactly the same: every predicted token whose
shifted label is not `-100` is one HEM sample, with the vocabulary as its classes, so the trainer's per-token
machinery (the token-classification layout, `class_dim=-1`) computes the loss, the violating-token count that
normalises it over the accumulation window and the processes, and the `hem/*` statistics per token.

Packed sequences: padding-free and packing collators (transformers' `DataCollatorWithFlattening`, TRL's
`DataCollatorForLanguageModeling(padding_free=True)`) concatenate sequences into one row and mark the boundaries
with `position_ids` (and `cu_seq_lens_*`); transformers' loss still shifts within the flat row, and those collators
set the label of each sequence's first token to `-100`, so the last token of one sequence never learns to predict
the first token of the next. HEM keeps the same rule (it reads no `position_ids`): a collator that does not mask
the first label of each packed sequence trains those cross-sequence targets under CE and HEM alike.

Margins for tokens: the paper's `mu = sqrt(M / S)` with `S` = number of training tokens gives tiny margins (10^7
tokens: 0.014), so a causal LM takes one fixed margin, `HEMConfig.causal_lm_margin` (default 1.0, see
docs/language_models.md), unless `margin` is given. HEM+ (`loss_name="hem+"`) counts the target tokens of the
training set once (a pass over the collated batches, only when asked for) and gives target token `c` the margin
`mu_c = mu * sqrt(S / (V * s_c))`, `S` counted tokens, `V` the vocabulary size, `s_c` the count of `c`: with every
token equally frequent this is `mu` for every token, as HEM+ equals HEM on balanced classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from ..heads import find_head
from ..losses.fused_linear import fused_linear_hem_loss
from ..losses.terms import BatchTerms, LossTerms, count_dtype
from ..margins import token_margins as token_margins  # the per-token rule lives with the other margin rules
from .sample_skipping import MicroBatchStep


#: Batch key of labels that a collator has already shifted (transformers' loss takes them as they are).
SHIFT_LABELS_KEY = "shift_labels"


def base_model_of(model):
    """The model under PEFT wrappers (`PeftModel.get_base_model()`), DDP/accelerate wrappers (`.module`)."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
    return model


def is_causal_lm(model) -> bool:
    """Whether `model` is a decoder-only causal LM head (`LlamaForCausalLM`, `GPT2LMHeadModel`, ...).

    Read from transformers' own facts by [`hf_hem.heads.find_head`]: the model's class is registered in
    `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`, or its `loss_type` maps to `ForCausalLMLoss` (what the Trainer itself checks
    to count shifted labels); encoder-decoder models (their decoder labels are not shifted by the loss) are not.
    """
    head = find_head(model)
    return head is not None and head.label_shift > 0


def vocabulary_size(model) -> int:
    """The number of classes of a causal LM: the output size of its head (the logits' last dimension)."""
    model = base_model_of(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if torch.is_tensor(weight) and weight.dim() == 2:
        return int(weight.shape[0])
    config = model.config
    size = getattr(config, "vocab_size", None)
    if size is None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "vocab_size", None)
    if size is None:
        raise ValueError(
            f"cannot tell the vocabulary size of {type(model).__name__}: no output embeddings, no vocab_size."
        )
    return int(size)


def shift_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token labels as transformers' causal-LM loss makes them: `labels[..., 1:]`, the last position ignored.

    The result has the labels' shape, so it lines up with the `(N, L, V)` logits without slicing (copying) them.
    """
    if not torch.is_tensor(labels) or labels.dim() < 1:
        raise ValueError(f"causal LM labels must be a (N, L) integer tensor, got {getattr(labels, 'shape', labels)}.")
    return torch.nn.functional.pad(labels[..., 1:], (0, 1), value=ignore_index)


def pop_next_token_labels(inputs: dict, ignore_index: int = -100) -> torch.Tensor:
    """Removes the labels from a causal-LM batch (so the model's own loss never runs) and returns them shifted.

    `shift_labels` (already shifted by the collator) win over `labels`, as in transformers' loss.
    """
    labels = inputs.pop("labels", None)
    shifted = inputs.pop(SHIFT_LABELS_KEY, None)
    if shifted is not None:
        return shifted
    if labels is None:
        raise ValueError(
            f"a causal LM batch needs 'labels' (or 'shift_labels'); batch keys: {list(inputs.keys())}. Use a "
            "collator that makes them, e.g. DataCollatorForLanguageModeling(tokenizer, mlm=False)."
        )
    return shift_labels(labels, ignore_index)


def count_target_tokens(batches: Iterable, vocab_size: int, ignore_index: int = -100) -> tuple[np.ndarray, int]:
    """Target tokens per vocabulary entry over collated causal-LM batches (after the shift), and the rows seen."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    rows = 0
    for batch in batches:
        if not isinstance(batch, Mapping):
            raise ValueError(f"causal LM training batches must be mappings, got {type(batch).__name__}.")
        batch = dict(batch)
        targets = pop_next_token_labels(batch, ignore_index)
        rows += int(targets.shape[0])
        values = targets[targets != ignore_index].reshape(-1).cpu()
        if values.numel():
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= vocab_size:
                raise ValueError(
                    f"causal LM labels must be token ids in [0, {vocab_size}) or {ignore_index}, found "
                    f"{low if low < 0 else high}."
                )
            counts += np.bincount(values.numpy(), minlength=vocab_size)
    return counts, rows


# ---- the fused LM head: HEM from the last hidden states, never the (tokens, vocabulary) logits ----

#: Config attributes of heads whose logits are not just `lm_head(hidden)` (soft-capping, scaling): no fused head.
_LOGIT_TRANSFORM_ATTRIBUTES = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def fused_head_unsupported(model) -> str | None:
    """Why the fused HEM head cannot score `model` (a reason to log), or `None` when it can.

    The fused head replaces `lm_head(hidden)` with [`fused_linear_hem_loss`]; it needs a plain `nn.Linear` head and
    no transformation of its logits afterwards (Gemma-2's soft-capping, Cohere's logit scale, Granite's scaling).
    """
    base = base_model_of(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        return f"its output embeddings are {type(head).__name__}, not an nn.Linear"
    config = base.config
    configs = [config] + ([config.get_text_config()] if hasattr(config, "get_text_config") else [])
    for attribute in _LOGIT_TRANSFORM_ATTRIBUTES:
        value = next(
            (getattr(c, attribute) for c in configs if getattr(c, attribute, None) not in (None, 1, 1.0)), None
        )
        if value is not None:
            return f"its config sets {attribute}={value} (the logits are transformed after the head)"
    return None


def fused_micro_batch(
    model: torch.nn.Module, terms: LossTerms, inputs: Mapping, labels: torch.Tensor
) -> MicroBatchStep:
    """One training micro-batch of a causal LM through the fused HEM head.

    The model runs as usual (through its DDP/PEFT wrappers, so gradients are synchronised as always), except that a
    forward pre-hook on its output embeddings keeps their input, the last hidden states, and hands the head an empty
    slice of it: the `(N, L, V)` logits are never built. [`fused_linear_hem_loss`] then scores the hidden states with
    the head's weight and bias against the next-token `labels` (`reduction="sum"`; the trainer divides by the
    violating tokens of the whole window). The statistics are those of `LossTerms.stats` except the accuracy, which
    needs the logits (NaN: `hem/accuracy` is not logged for fused steps); they come with the step (`stats`), as no
    logits are there to compute them from.
    """
    head = base_model_of(model).get_output_embeddings()
    captured = []

    def keep_hidden(module, args):
        captured.append(args[0])
        return (args[0][..., :0, :],)

    handle = head.register_forward_pre_hook(keep_hidden)
    try:
        model(**inputs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(
            f"the fused HEM head expected one call of the model's output embeddings, saw {len(captured)}."
        )
    hidden = captured[0]
    terms.follow_device(hidden.device)
    loss_sum, _, violating = fused_linear_hem_loss(
        hidden,
        head.weight,
        labels.to(hidden.device),
        bias=head.bias,
        margin=terms.margin_set.argument(hidden.device),
        ignore_index=terms.ignore_index,
        reduction="sum",
        return_stats=True,
    )
    dtype = count_dtype(hidden.device)
    valid = labels != terms.ignore_index
    count = violating.to(dtype)
    stats = terms.pack_stats(
        dtype,
        labelled=valid.sum(),
        correct=torch.tensor(float("nan"), dtype=dtype, device=hidden.device),  # needs the logits
        violating=count,
        violation_sum=loss_sum.detach(),
        margin_sum=terms.margin_sum(labels, valid, hidden.device),
    )
    batch = BatchTerms(loss_sum, count, None)
    has_loss = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
    return MicroBatchStep(loss_sum, None, labels, batch, has_loss, int(labels.shape[0]), stats=stats)
