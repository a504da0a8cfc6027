"""hf_hem: HEM (high error margin) loss for the Hugging Face ecosystem."""

from .losses import *  # noqa: F403
from .losses import __all__ as _losses_all
from .margins import margins_from_counts


__version__ = "0.1.0"

__all__ = [*_losses_all, "margins_from_counts"]
