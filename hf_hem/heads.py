"""The model heads hf_hem trains and describes: one table of facts per head, and how a model's head is found.

A head is what a transformers model puts on its backbone for one kind of prediction: `BertForTokenClassification`
is BERT with a token-classification head. Each [`Head`] entry holds everything hf_hem needs to know about one:

* how transformers lists it: the auto-model mapping (`MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES`, model type ->
  head class) and, where the loss is specific to the head, its loss type (`LOSS_MAPPING`);
* the layout the loss reads: where the classes are in the logits, whether the labels are shifted (a causal LM scores
  position `t` against label `t + 1`), what the classes are (`config.num_labels`, the choices, the vocabulary) and
  what one counted label is (an example, a pixel, a token);
* what its model card says: the Hub pipeline tag, the task name, the class of the quick start, the tags, and the
  names of the metrics.

[`find_head`] finds the head of a model from transformers' own facts. [`HEMTrainer`]'s loss set-up and the model
card ([`hf_hem.cards`]) both read this table, so a new head is one entry here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import torch
from transformers.loss.loss_utils import LOSS_MAPPING
from transformers.models.auto import modeling_auto


__all__ = ["FALLBACK_HEAD", "HEADS", "Head", "find_head", "head_named"]


@dataclass(frozen=True, eq=False)
class Head:
    """The facts of one model head.

    Args:
        name (`str`): The head's name, from its transformers mapping: `"token-classification"`, `"causal-lm"`, ...
        mapping (`str`, *optional*): The auto-model mapping that lists the head's classes, as `MODEL_FOR_<mapping>_
            MAPPING_NAMES` in `transformers.models.auto.modeling_auto`.
        loss_type (`str`, *optional*): A key of transformers' `LOSS_MAPPING` whose loss only this head uses; a model
            whose `loss_type` maps to the same loss function has this head. `None` where the loss is shared (image,
            audio and text classification all use `ForSequenceClassificationLoss`).
        class_name_suffixes (`tuple[str, ...]`): Last resort for models transformers does not list (custom
            `nn.Module`s): class-name endings that name this head. Empty where an ending would be ambiguous
            (`ForSequenceClassification` names text and audio classifiers alike).
        class_dim (`int`): The dimension of the logits that holds the classes: 1 for `(N, C)` and `(N, C, H, W)`,
            -1 for `(N, L, C)`.
        label_shift (`int`): How far ahead of its logits a label is: 1 for a causal LM (position `t` predicts
            token `t + 1`, as transformers' `ForCausalLMLoss` shifts), else 0.
        classes (`str`): What the classes are: `"num_labels"` (`config.num_labels`), `"choices"` (the choices of a
            multiple-choice row, dim 1 of its inputs) or `"vocabulary"` (the output embeddings of a language model).
        label_unit (`str`): What one counted label is, for class counts and HEM+ margins: `"example"`, `"pixel"`
            (masks; `S` of the margin rule is still the number of images) or `"token"` (nested per-token labels).
        pipeline_tag (`str`): The Hub pipeline tag of the model card, also its `model-index` task type.
        task_name (`str`): The task in the card's prose and as `model-index` task name.
        auto_model_class (`str`): The class the card's quick start loads the checkpoint with.
        card_kind (`str`): Which quick start the card template shows.
        tags (`tuple[str, ...]`): Hub tags of the card besides hf_hem's own.
        metric_names (`Mapping[str, tuple[str, str]]`): Metric key -> `(model-index type, display name)` where this
            head names a metric differently from the card's defaults.
        entity_metrics (`bool`): Whether `<TYPE>_precision`-style keys are per-entity scores (`seqeval`).
        per_class_metric (`str`): The metric of the card's per-class table.
        ignore_index_fields (`tuple[str, ...]`): Config fields that hold the label value the model's own loss ignores,
            first found wins. Segmenters name it differently: SegFormer, BEiT, DPT and MobileViT
            `semantic_loss_ignore_index`, UperNet `loss_ignore_index`. Empty where labels have no ignore value in
            the config.
    """

    name: str
    mapping: str | None
    loss_type: str | None
    class_name_suffixes: tuple[str, ...]
    class_dim: int
    label_shift: int
    classes: Literal["num_labels", "choices", "vocabulary"]
    label_unit: Literal["example", "pixel", "token"]
    pipeline_tag: str | None
    task_name: str
    auto_model_class: str | None
    card_kind: str | None
    tags: tuple[str, ...] = ()
    metric_names: Mapping[str, tuple[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    entity_metrics: bool = False
    per_class_metric: str = "Accuracy"
    ignore_index_fields: tuple[str, ...] = ()

    def config_ignore_index(self, config) -> int | None:
        """The ignore index the model's config declares for this head (see `ignore_index_fields`), or `None`."""
        for name in self.ignore_index_fields:
            value = getattr(config, name, None)
            if value is not None:
                return int(value)
        return None

    @property
    def nested_labels(self) -> bool:
        """Whether the labels of one example are a sequence, one per token (`class_dim=-1` logits)."""
        return self.label_unit == "token"


#: Every head hf_hem trains and writes the HEM card for. The order matters only for the last-resort suffixes.
HEADS = (
    Head(
        "semantic-segmentation", "SEMANTIC_SEGMENTATION", "ForSemanticSegmentation", ("ForSemanticSegmentation",),
        class_dim=1, label_shift=0, classes="num_labels", label_unit="pixel",
        # The Hub has no "semantic-segmentation" pipeline tag; semantic segmenters use "image-segmentation".
        pipeline_tag="image-segmentation", task_name="semantic segmentation",
        auto_model_class="AutoModelForSemanticSegmentation", card_kind="segmentation",
        tags=("image-segmentation", "vision"), per_class_metric="IoU",
        ignore_index_fields=("semantic_loss_ignore_index", "loss_ignore_index"),
    ),
    Head(
        "image-classification", "IMAGE_CLASSIFICATION", None, ("ForImageClassification",),
        class_dim=1, label_shift=0, classes="num_labels", label_unit="example",
        pipeline_tag="image-classification", task_name="image classification",
        auto_model_class="AutoModelForImageClassification", card_kind="classification",
        tags=("image-classification", "vision"),
    ),
    # transformers names audio classifiers `...ForSequenceClassification` (`Wav2Vec2ForSequenceClassification`);
    # the mappings tell them from text classifiers, as no class is in both.
    Head(
        "audio-classification", "AUDIO_CLASSIFICATION", None, ("ForAudioClassification",),
        class_dim=1, label_shift=0, classes="num_labels", label_unit="example",
        pipeline_tag="audio-classification", task_name="audio classification",
        auto_model_class="AutoModelForAudioClassification", card_kind="audio-classification",
        tags=("audio-classification", "audio"),
    ),
    Head(
        "sequence-classification", "SEQUENCE_CLASSIFICATION", None, (),
        class_dim=1, label_shift=0, classes="num_labels", label_unit="example",
        pipeline_tag="text-classification", task_name="text classification",
        auto_model_class="AutoModelForSequenceClassification", card_kind="text-classification",
        tags=("text-classification", "nlp"),
    ),
    Head(
        "token-classification", "TOKEN_CLASSIFICATION", "ForTokenClassification", ("ForTokenClassification",),
        class_dim=-1, label_shift=0, classes="num_labels", label_unit="token",
        pipeline_tag="token-classification", task_name="token classification",
        auto_model_class="AutoModelForTokenClassification", card_kind="token-classification",
        tags=("token-classification", "nlp"),
        # Token accuracy counts tokens, not pixels; `seqeval`'s `overall_*` scores (as `run_ner.py` with
        # `--return_entity_level_metrics` logs them) are the entity-level ones.
        metric_names=MappingProxyType({
            "accuracy": ("accuracy", "Token accuracy"),
            "overall_accuracy": ("accuracy", "Token accuracy"),
            "overall_precision": ("precision", "Precision"),
            "overall_recall": ("recall", "Recall"),
            "overall_f1": ("f1", "F1"),
        }),
        entity_metrics=True,
    ),
    # A multiple-choice head scores each choice: its classes are the choices, whatever `config.num_labels` says.
    Head(
        "multiple-choice", "MULTIPLE_CHOICE", None, ("ForMultipleChoice",),
        class_dim=1, label_shift=0, classes="choices", label_unit="example",
        pipeline_tag="multiple-choice", task_name="multiple choice",
        auto_model_class="AutoModelForMultipleChoice", card_kind="multiple-choice",
        tags=("multiple-choice", "nlp"),
    ),
    # A decoder-only language model: one HEM sample per predicted token, the vocabulary as classes.
    Head(
        "causal-lm", "CAUSAL_LM", "ForCausalLM", (),
        class_dim=-1, label_shift=1, classes="vocabulary", label_unit="token",
        pipeline_tag="text-generation", task_name="causal language modelling",
        auto_model_class="AutoModelForCausalLM", card_kind="text-generation",
        tags=("text-generation", "nlp"),
    ),
)  # fmt: skip

#: The layout [`HEMTrainer`] assumes for a model [`find_head`] does not recognise (a custom `nn.Module` classifier
#: or segmenter): classes on dim 1 of the logits, `config.num_labels` of them, labels unshifted, counted as they come
#: (one per example, or one per pixel of a mask). It has no card: such models get the stock Trainer card.
FALLBACK_HEAD = Head(
    "classification", None, None, (), class_dim=1, label_shift=0, classes="num_labels", label_unit="example",
    pipeline_tag=None, task_name="classification", auto_model_class=None, card_kind=None,
    # A model of unknown head with SegFormer's field is taken for a segmenter (a custom one built on its config).
    ignore_index_fields=("semantic_loss_ignore_index",),
)  # fmt: skip


@functools.cache
def _heads_by_class_name() -> dict[str, Head]:
    """Head class name -> head, from transformers' auto-model mappings (read once; they are static)."""
    heads: dict[str, Head] = {}
    for head in HEADS:
        for class_names in getattr(modeling_auto, f"MODEL_FOR_{head.mapping}_MAPPING_NAMES", {}).values():
            # A model type may list several heads, e.g. DeiT's classifier with and without the teacher.
            for class_name in (class_names,) if isinstance(class_names, str) else class_names:
                heads.setdefault(class_name, head)
    return heads


def _unwrapped(model):
    """The model under PEFT wrappers (`PeftModel.get_base_model()`) and DDP/accelerate wrappers (`.module`)."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        get_base_model = getattr(model, "get_base_model", None)
        if callable(get_base_model):
            model = get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
    return model


def _loss_type(model) -> str | None:
    try:
        return getattr(model, "loss_type", None)
    except Exception:  # a property that cannot be read on a plain nn.Module subclass
        return None


def find_head(model) -> Head | None:
    """The [`Head`] of a model, or `None` when it is none of [`HEADS`] (e.g. a masked language model).

    Looked up the way transformers defines heads, through PEFT and DDP wrappers:

    1. the model's class and its base classes (a subclass of `BertForTokenClassification` is a token classifier),
       then the class names saved in `config.architectures`, in transformers' auto-model mappings
       (`MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES`, ...);
    2. the model's `loss_type`, where the loss it maps to in transformers' `LOSS_MAPPING` belongs to one head
       (`ForCausalLMLoss`, also the loss of decoder-only `...ForConditionalGeneration` models);
    3. as a last resort, for models transformers does not list (a custom `nn.Module`), the class name's ending
       (`ForTokenClassification`, ...; see [`Head.class_name_suffixes`]).

    A causal-LM head whose config is encoder-decoder is not one: transformers does not shift its decoder labels.
    For the layout of an unrecognised model, see [`FALLBACK_HEAD`].

    Args:
        model: A model (a `PreTrainedModel`, a PEFT- or DDP-wrapped one, or any object with a `config`).

    Returns:
        [`Head`] or `None`.

    Example:

    ```python
    >>> from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification
    >>> find_head(Wav2Vec2ForSequenceClassification(Wav2Vec2Config())).name
    'audio-classification'
    ```
    """
    if model is None:
        return None
    model = _unwrapped(model)
    config = getattr(model, "config", None)

    def fits(head: Head) -> bool:
        return head.label_shift == 0 or not getattr(config, "is_encoder_decoder", False)

    by_class_name = _heads_by_class_name()
    class_names = [cls.__name__ for cls in type(model).__mro__]
    class_names += list(getattr(config, "architectures", None) or [])
    for name in class_names:
        head = by_class_name.get(name)
        if head is not None:
            return head if fits(head) else None
    loss_function = LOSS_MAPPING.get(_loss_type(model))
    for head in HEADS:
        if loss_function is not None and head.loss_type and LOSS_MAPPING[head.loss_type] is loss_function:
            return head if fits(head) else None
    name = type(model).__name__
    return next((head for head in HEADS if any(name.endswith(end) for end in head.class_name_suffixes)), None)


def head_named(name: str) -> Head:
    """The [`Head`] of a head name (`"semantic-segmentation"`) or of a card's pipeline tag (`"image-segmentation"`).

    Raises:
        `ValueError`: the name is neither, listing the names there are.
    """
    for head in HEADS:
        if name in (head.name, head.pipeline_tag):
            return head
    known = sorted({head.name for head in HEADS} | {head.pipeline_tag for head in HEADS})
    raise ValueError(f"no head named {name!r}; expected one of {', '.join(known)}.")
