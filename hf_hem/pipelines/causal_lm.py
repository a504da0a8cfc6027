"""Causal language modelling with HEM: the logic behind `scripts/run_clm.py` and `benchmarks/lm_compare.py`.

* Data: local text files (`--train_file`/`--validation_file`: txt, csv, json(l), parquet), a Hub dataset
  (`--dataset_name`), or, with neither, an embedded text of short English sentences generated from templates
  ([`load_embedded_lm_dataset`], offline).
* Tokenizer: a checkpoint's, or a word-level tokenizer built from the training texts ([`build_word_tokenizer`]:
  the vocabulary from sorted word counts, so every process builds the same one).
* Model: a checkpoint (`AutoModelForCausalLM`), or a small Llama or GPT-2 from its config.
* Training: [`HEMTrainer`] with one HEM sample per predicted token (see `hf_hem.trainer.causal_lm`); each text is one
  sequence (truncated to `--max_seq_length`), padded per batch, its labels made by
  `DataCollatorForLanguageModeling(mlm=False)`.
* Evaluation: next-token top-1 / top-5 accuracy and the calibration error (ECE) of the softmax on held-out text,
  computed from the top-5 ids and the top-1 probability (the `(tokens, vocabulary)` logits are never gathered).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from ..data.embedded_text import load_embedded_ner_dataset, load_embedded_sentiment_dataset
from ._common import (
    PipelineRun,
    check_data_source,
    check_integer,
    check_model_type,
    check_split_arguments,
    parse_pipeline_args,
    pipeline_card_kwargs,
    train_and_validation,
    truncate,
)
from ._text_common import TextData, TextDataArguments, TextModelArguments, load_text_data, tokenize_splits


logger = logging.getLogger(__name__)

__all__ = [
    "CausalLMDataArguments",
    "CausalLMModelArguments",
    "build_word_tokenizer",
    "load_embedded_lm_dataset",
    "next_token_metrics",
    "parse_clm_args",
    "run_clm",
    "scratch_causal_lm",
]

#: Name of the embedded text in cards and reports.
EMBEDDED_LM_DATASET_NAME = "hf_hem embedded sentences (film reviews and news templates)"
#: Special tokens of a built word-level tokenizer, in id order.
WORD_SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
#: Evaluation metrics the model card shows (next-token accuracy, calibration).
_CARD_METRIC_KEYS = ("accuracy", "top5_accuracy", "ece")
#: Model types a run can build from a config.
CLM_SCRATCH_MODEL_TYPES = ("llama", "gpt2")
#: Training defaults for the embedded text and a model from config (anything given on the command line wins).
EMBEDDED_LM_TRAINING_DEFAULTS = {
    "num_train_epochs": 8.0,
    "learning_rate": 3e-3,
    "weight_decay": 0.01,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "logging_steps": 20,
    "report_to": "none",
}


# --------------------------------------------------------------------------------------------------------------------
# Data and tokenizer


def load_embedded_lm_dataset(num_train: int = 2000, num_validation: int = 400, seed: int = 0) -> DatasetDict:
    """Short English sentences for a tiny causal LM, built in memory (one `text` column).

    Half are film-review sentences ("the script is really dull and tedious"), half news sentences ("John Smith works
    for Acme Corp in New York ."), generated from the templates of [`~hf_hem.data.embedded_text`] with a seeded
    generator; the validation split comes from another seed and holds no training sentence. Much of
    each sentence is predictable from its start (template words, the polarity of a second adjective, multi-word
    names); the rest (which adjective, which name) is a free choice, so next-token accuracy stays well below 1.

    Args:
        num_train (`int`, defaults to 2000): training sentences.
        num_validation (`int`, defaults to 400): validation sentences.
        seed (`int`, defaults to 0): seed of the training sentences (validation: `seed + 1000`).

    Returns:
        `datasets.DatasetDict` with splits `train` and `validation`, column `text`.
    """

    def sentences(count: int, split_seed: int, exclude: frozenset = frozenset()) -> list[str]:
        # Three times as many as needed, so that enough remain after leaving out the excluded sentences.
        reviews = load_embedded_sentiment_dataset(num_train=max(3 * count // 2, 2), num_validation=2, seed=split_seed)
        news = load_embedded_ner_dataset(num_train=max(3 * count // 2, 1), num_validation=1, seed=split_seed)
        texts = list(reviews["train"]["sentence"]) + [" ".join(words) for words in news["train"]["tokens"]]
        texts = [texts[index] for index in np.random.default_rng(split_seed).permutation(len(texts))]
        kept = [text for text in texts if text not in exclude][:count]
        if len(kept) < count:
            raise ValueError(f"the templates give only {len(kept)} new sentences, {count} asked for.")
        return kept

    train = sentences(num_train, seed)
    return DatasetDict(
        {
            "train": Dataset.from_dict({"text": train}),
            # Held out: no validation sentence occurs in the training text (the templates repeat short sentences).
            "validation": Dataset.from_dict({"text": sentences(num_validation, seed + 1000, frozenset(train))}),
        }
    )


def build_word_tokenizer(texts: Iterable[str], max_vocab_size: int = 5000, model_max_length: int = 128):
    """A word-level fast tokenizer whose vocabulary is built from `texts`, the same in every process.

    Words are split at whitespace and punctuation; the vocabulary is [`WORD_SPECIAL_TOKENS`] (`<pad>` = 0, `<unk>`,
    `<bos>`, `<eos>`) followed by the words sorted by count, ties by spelling, up to `max_vocab_size`. No special
    token is added when encoding: the caller appends `<eos>` (TRL's `SFTTrainer` does it itself), so a prompt's ids
    are a prefix of its prompt+completion ids, as completion-only training needs.

    Returns:
        `transformers.PreTrainedTokenizerFast` (saved with `save_pretrained`, it loads back with `AutoTokenizer`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre_tokenizer = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(text))
    words = [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    vocabulary = [*WORD_SPECIAL_TOKENS, *words[: max(max_vocab_size - len(WORD_SPECIAL_TOKENS), 0)]]
    tokenizer = Tokenizer(
        models.WordLevel({token: index for index, token in enumerate(vocabulary)}, unk_token="<unk>")
    )
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, " ." -> "."
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


def scratch_causal_lm(
    tokenizer, model_type: str = "llama", max_length: int = 128, hidden_size: int = 64, num_layers: int = 2, seed=None
):
    """A small causal LM from its config (random weights, no dropout), its vocabulary fitted to `tokenizer`."""
    if seed is not None:
        torch.manual_seed(seed)
    special = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if model_type == "llama":
        config = LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=max_length,
            tie_word_embeddings=True,
            **special,
        )
        return LlamaForCausalLM(config)
    if model_type == "gpt2":
        config = GPT2Config(
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=4,
            n_positions=max_length,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **special,
        )
        return GPT2LMHeadModel(config)
    raise ValueError(
        f"model_type={model_type!r} cannot be built from a config; expected one of {CLM_SCRATCH_MODEL_TYPES}."
    )


# --------------------------------------------------------------------------------------------------------------------
# Metrics: next-token accuracy and calibration


def top_predictions(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """`preprocess_logits_for_metrics` of a causal LM: per position the top-5 token ids, the top-1 softmax
    probability and the log-probability the softmax gives the next token (0 where it is ignored or unknown),
    `(N, L, 7)` float32, instead of the `(N, L, V)` logits (which the Trainer would gather over the whole set)."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    logits = logits.float()
    k = min(5, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    if k < 5:
        top = torch.cat([top, top[..., -1:].expand(*top.shape[:-1], 5 - k)], dim=-1)
    log_probabilities = logits.log_softmax(dim=-1)
    confidence = log_probabilities.amax(dim=-1, keepdim=True).exp()
    target_log_probability = torch.zeros_like(confidence)
    if labels is not None:
        targets = torch.nn.functional.pad(labels[..., 1:], (0, 1), value=-100).to(logits.device)
        valid = targets != -100
        gathered = log_probabilities.gather(-1, targets.clamp_min(0).unsqueeze(-1))
        target_log_probability = torch.where(valid.unsqueeze(-1), gathered, target_log_probability)
    return torch.cat([top.float(), confidence, target_log_probability], dim=-1)


def confidence_ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE from top-1 confidences and correctness: `sum_b (n_b / N) |accuracy_b - confidence_b|`, equal-width bins
    `(lo, hi]` (the binning of [`hf_hem.metrics.expected_calibration_error`], without the full probabilities)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    total = 0.0
    for index in np.unique(bins):
        members = bins == index
        total += members.sum() / confidence.size * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def next_token_metrics(top: np.ndarray, labels: np.ndarray, ignore_index: int = -100, n_bins: int = 15) -> dict:
    """Next-token top-1 / top-5 accuracy and the ECE of the softmax's top-1 probability.

    Args:
        top (`np.ndarray`): `(N, L, 7)` from [`top_predictions`]: top-5 ids, the top-1 probability, the next
            token's log-probability.
        labels (`np.ndarray`): `(N, L)` unshifted labels (`-100` ignored); position `t` is scored against `t + 1`.

    Returns:
        `dict` with `accuracy`, `top5_accuracy`, `ece`, `mean_confidence` (of the top-1 probability), `nll` (mean
        negative log-likelihood of the softmax, nats),
        `perplexity` (`exp(nll)`) and `tokens`. For a model trained with HEM the softmax is not a fitted likelihood:
        its `nll` and `perplexity` are not comparable with a cross-entropy model's (docs/language_models.md).
    """
    top, labels = np.asarray(top), np.asarray(labels)
    predicted, targets = top[:, :-1], labels[:, 1:]
    valid = targets != ignore_index
    rows = predicted[valid]
    ids, confidence, targets = rows[:, :5].astype(np.int64), rows[:, 5], targets[valid]
    correct = ids[:, 0] == targets
    nll = float(-rows[:, 6].mean()) if rows.shape[-1] > 6 and correct.size else float("nan")
    return {
        "nll": nll,
        "perplexity": float(np.exp(nll)) if np.isfinite(nll) and nll < 700 else float("inf"),
        "accuracy": float(correct.mean()) if correct.size else 0.0,
        "top5_accuracy": float((ids == targets[:, None]).any(axis=1).mean()) if correct.size else 0.0,
        "ece": confidence_ece(confidence, correct, n_bins) if correct.size else 0.0,
        # Against the accuracy, says which way a miscalibrated softmax errs (over- or under-confident).
        "mean_confidence": float(confidence.mean()) if correct.size else 0.0,
        "tokens": int(correct.size),
    }


def compute_clm_metrics(eval_prediction) -> dict[str, float]:
    """`compute_metrics` for the Trainer: [`next_token_metrics`] of `preprocess_logits_for_metrics=top_predictions`."""
    predictions = eval_prediction.predictions
    metrics = next_token_metrics(
        predictions[0] if isinstance(predictions, tuple) else predictions, eval_prediction.label_ids
    )
    metrics.pop("tokens")
    return metrics


# --------------------------------------------------------------------------------------------------------------------
# The pipeline behind scripts/run_clm.py


@dataclass
class CausalLMModelArguments(TextModelArguments):
    """Arguments for the model and tokenizer: a pretrained causal LM, or a small Llama / GPT-2 from its config."""

    model_type: str = field(
        default="llama",
        metadata={
            "help": "Architecture built from its config when --model_name_or_path is not given.",
            "choices": list(CLM_SCRATCH_MODEL_TYPES),
        },
    )
    tokenizer_vocab_size: int = field(
        default=5000,
        metadata={"help": "Largest vocabulary of the word-level tokenizer built from the training texts."},
    )
    hidden_size: int = field(default=64, metadata={"help": "Width of a model built from its config."})
    num_layers: int = field(default=2, metadata={"help": "Layers of a model built from its config."})

    def __post_init__(self):
        check_model_type(self, CLM_SCRATCH_MODEL_TYPES)
        check_integer(self, "tokenizer_vocab_size", len(WORD_SPECIAL_TOKENS) + 1)
        check_integer(self, "hidden_size", 4)
        check_integer(self, "num_layers", 1)


@dataclass
class CausalLMDataArguments(TextDataArguments):
    """Data arguments: a Hub dataset, local files (`.txt`: one text per line; csv/json(l)/parquet), or embedded."""

    text_column_name: str | None = field(
        default=None, metadata={"help": "Column holding the texts. Default: 'text' (the only column of .txt files)."}
    )

    def __post_init__(self):
        # Plain text files are read by the `text` builder; the other formats are checked as for the text pipelines.
        text_files = [p for p in (self.train_file, self.validation_file) if p is not None and p.endswith(".txt")]
        if text_files:
            check_data_source(self, "train_file", "validation_file")
            check_integer(self, "max_seq_length", 4)
            check_split_arguments(self)
        else:
            super().__post_init__()


def parse_clm_args(argv: Sequence[str] | None = None):
    """Parse the script's arguments into `(CausalLMModelArguments, CausalLMDataArguments, HEMConfig)`: flags, a
    `.yaml`/`.json` file alone, or the file followed by flags. Without a data source, [`EMBEDDED_LM_TRAINING_DEFAULTS`]
    replace the `TrainingArguments` defaults; anything given still wins."""
    return parse_pipeline_args(CausalLMModelArguments, CausalLMDataArguments, argv, EMBEDDED_LM_TRAINING_DEFAULTS)


def _load_clm_data(data_args: CausalLMDataArguments, model_args, seed: int):
    files = [p for p in (data_args.train_file, data_args.validation_file) if p is not None]
    if files and all(path.endswith(".txt") for path in files):
        from datasets import load_dataset

        data_files = {"train": data_args.train_file}
        if data_args.validation_file is not None:
            data_files["validation"] = data_args.validation_file
        for name, path in data_files.items():
            if not os.path.isfile(path):
                raise ValueError(f"{name}_file={path!r} does not exist.")
        loaded = load_dataset("text", data_files=data_files, cache_dir=model_args.cache_dir)
        eval_split = "validation" if "validation" in loaded else None
        splits, eval_split = train_and_validation(loaded, eval_split, data_args.train_val_split, seed)
        return TextData(splits, Path(data_args.train_file).stem, False, eval_split)
    return load_text_data(
        data_args, model_args, lambda s: load_embedded_lm_dataset(seed=s), EMBEDDED_LM_DATASET_NAME, seed
    )


def run_clm(model_args, data_args, training_args, *, callbacks: Sequence | None = None) -> dict:
    """Train and evaluate a causal LM with the loss of `training_args` (one HEM sample per predicted token), save
    it with its tokenizer and HEM card, and push.

    Returns:
        `dict[str, float]`: the metrics saved in `all_results.json` (`train_*`, `eval_accuracy` (next-token top-1),
        `eval_top5_accuracy`, `eval_ece`, `eval_nll`, `eval_perplexity`, `eval_loss`, ...).

    Raises:
        [`PushToHubError`]: `--push_to_hub` failed; the model is saved locally and the message says where.
    """
    run = PipelineRun(model_args, training_args, callbacks, logger)
    with training_args.main_process_first(desc="loading the dataset"):
        data = _load_clm_data(data_args, model_args, training_args.seed)
    dataset = data.dataset
    column = data_args.text_column_name or "text"
    if column not in dataset["train"].column_names:
        raise ValueError(
            f"text_column_name={column!r} is not a column of the training data; columns: "
            f"{dataset['train'].column_names}. Set --text_column_name."
        )
    train_dataset = truncate(dataset["train"], data_args.max_train_samples, training_args.seed)
    eval_dataset = truncate(dataset["validation"], data_args.max_eval_samples, training_args.seed)
    max_length = data_args.max_seq_length

    name = model_args.tokenizer_name or model_args.model_name_or_path
    if name is not None:
        tokenizer = AutoTokenizer.from_pretrained(
            name, trust_remote_code=model_args.trust_remote_code, **model_args.hub_kwargs()
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # padding is masked out of the labels by the collator
    else:
        tokenizer = build_word_tokenizer(train_dataset[column], model_args.tokenizer_vocab_size, max_length)
    if model_args.model_name_or_path is not None:
        model = AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code, **model_args.hub_kwargs()
        )
    else:
        model = scratch_causal_lm(
            tokenizer, model_args.model_type, max_length, model_args.hidden_size, model_args.num_layers
        )

    eos = tokenizer.eos_token_id

    def tokenize(batch):
        # One sequence per text, ending in <eos> (so the model learns where a text ends), cut at max_length.
        encoded = tokenizer([text for text in batch[column]], truncation=True, max_length=max_length - 1)
        if eos is not None:
            encoded["input_ids"] = [ids + [eos] for ids in encoded["input_ids"]]
            encoded["attention_mask"] = [mask + [1] for mask in encoded["attention_mask"]]
        return encoded

    def keep_texts(split):
        return split.filter(lambda row: bool(row[column] and row[column].strip()), desc="Dropping empty lines")

    train_dataset, eval_dataset = tokenize_splits(
        training_args, data_args, tokenize, keep_texts(train_dataset), keep_texts(eval_dataset)
    )

    def card_kwargs(metrics: dict) -> dict:
        kwargs = pipeline_card_kwargs(
            model_args,
            data_args,
            data.name,
            data.eval_split,
            "text-generation",
            metrics,
            _CARD_METRIC_KEYS,
            data.on_hub,
        )
        margins = run.trainer.margins if run.trainer is not None and training_args.loss_name != "ce" else None
        if margins is not None and not bool((margins != margins[0]).any()):
            # A causal LM's margin is causal_lm_margin (or margin), not sqrt(M / S): show the margin alone.
            kwargs["loss_settings"] = {"margin": float(margins[0])}
        return kwargs

    trainer = run.build_trainer(
        model,
        tokenizer,
        train_dataset,
        eval_dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        compute_metrics=compute_clm_metrics,
        preprocess_logits_for_metrics=top_predictions,
        card_kwargs=card_kwargs,
    )
    run.train(len(train_dataset))
    if run.do_eval:
        metrics = trainer.evaluate()
        run.save_eval_metrics({**metrics, "eval_samples": len(eval_dataset)}, logged=True)
    return run.finish(data.name, model_args.model_type, len(train_dataset), text_column=column)
