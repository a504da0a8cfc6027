"""Small Hub helpers shared by the trainer and the pipelines: keep tokens out of logs and pickles."""

from __future__ import annotations

import os
from collections.abc import Iterable


def scrub_secrets(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every non-empty secret replaced by `***` (tokens must not reach logs)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def move_token_to_environment(args) -> None:
    """Moves `args.hub_token` into this process's `HF_TOKEN` environment variable and clears the field.

    The Trainer pickles its arguments into `training_args.bin`, which every push uploads; `huggingface_hub` reads
    `HF_TOKEN` on each request, so the token keeps working without being written anywhere.
    """
    if getattr(args, "hub_token", None):
        os.environ["HF_TOKEN"] = args.hub_token
        args.hub_token = None


def hub_reference(name: str | None) -> str | None:
    """`name` when it can be a Hub repo id (not empty, not a local path), else `None`."""
    if not isinstance(name, str) or not name or os.path.exists(name) or name.startswith((".", "/", "~")):
        return None
    parts = name.split("/")
    return name if len(parts) <= 2 and all(parts) else None
