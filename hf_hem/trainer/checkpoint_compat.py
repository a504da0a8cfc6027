"""Resuming from checkpoints whose weights `Trainer._load_from_checkpoint` would silently skip.

`save_pretrained` writes the Hub key names of models with weight conversions (ViT and others in transformers 5.x),
but `Trainer._load_from_checkpoint` loads the raw state dict with `strict=False`, so those weights would be skipped
on resume (huggingface/transformers#48805, #43701). Loading through `from_pretrained` applies the conversion.
"""

from __future__ import annotations

import json
import logging
import os

from torch import nn
from transformers import PreTrainedModel


logger = logging.getLogger(__name__)


def saved_weight_names(checkpoint: str) -> set[str] | None:
    """Tensor names of a checkpoint's safetensors weights (single file or sharded), or `None` if there are none."""
    single = os.path.join(checkpoint, "model.safetensors")
    index = os.path.join(checkpoint, "model.safetensors.index.json")
    if os.path.isfile(single):
        from safetensors import safe_open

        with safe_open(single, framework="pt") as handle:
            return set(handle.keys())
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            return set(json.load(handle)["weight_map"])
    return None


def load_converted_weights(model, checkpoint: str, *, sharded_engine: bool = False) -> bool:
    """Loads checkpoint weights saved under converted names into `model` (unwrapped).

    Args:
        model: the unwrapped model.
        checkpoint (`str`): the checkpoint folder.
        sharded_engine (`bool`, defaults to `False`): DeepSpeed or FSDP is in use (their loaders are left alone).

    Returns:
        `bool`: `False` (nothing done) when the weights need no conversion or this path does not apply.
    """
    if not isinstance(model, PreTrainedModel) or sharded_engine or getattr(model, "peft_config", None) is not None:
        return False
    saved = saved_weight_names(checkpoint)
    if saved is None or saved <= set(model.state_dict()):
        return False
    logger.info(f"Loading {checkpoint} through from_pretrained to convert its weight names.")
    reloaded = type(model).from_pretrained(checkpoint, config=model.config)
    model.load_state_dict(reloaded.state_dict())
    return True


class CheckpointCompatMixin:
    """`Trainer` overrides that resume (and load the best model) through [`load_converted_weights`] when needed."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if not self._load_converted_weights(resume_from_checkpoint, model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        checkpoint = self.state.best_model_checkpoint
        if checkpoint is None or not self._load_converted_weights(checkpoint, self.model_wrapped):
            super()._load_best_model()

    def _load_converted_weights(self, checkpoint: str, model: nn.Module | None = None) -> bool:
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled
        return load_converted_weights(model, checkpoint, sharded_engine=sharded)
