"""hf_hem: HEM (high error margin) loss for the Hugging Face ecosystem."""

from .losses import *  # noqa: F403
from .losses import __all__ as _losses_all
from .margins import margins_from_counts


__version__ = "0.1.0"

# The trainer pulls in transformers (seconds to import): load it on first use so `import hf_hem` stays light.
_LAZY = {
    "HEMConfig": "trainer",
    "HEMTrainer": "trainer",
    "HEMLossFunction": "losses.loss_func",
    "hem_loss_func": "losses.loss_func",
    "count_labels": "counting",
    "pixel_histogram": "counting",
    "generate_model_card": "cards",
    "write_model_card": "cards",
}

__all__ = [*_losses_all, "margins_from_counts", *_LAZY]


def __dir__():
    # The lazy names are not in the module's namespace until first used; list them so that `dir(hf_hem)` and tab
    # completion show the whole public API.
    return sorted({*globals(), *__all__})


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_hem' has no attribute {name!r}")
