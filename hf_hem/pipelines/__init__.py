"""End-to-end pipelines: the logic behind the scripts in `scripts/` and the `hf-hem` commands."""

from . import causal_lm, image_classification, semantic_segmentation, text_classification, token_classification
from ._common import BaseModelArguments, end_distributed, hub_dataset_id, load_hub_dataset, peek_dataclass, run_script

# Each pipeline module lists its public names once, in its `__all__`; the package re-exports exactly those.
from .causal_lm import *  # noqa: F403
from .image_classification import *  # noqa: F403
from .semantic_segmentation import *  # noqa: F403
from .text_classification import *  # noqa: F403
from .token_classification import *  # noqa: F403


__all__ = [
    "BaseModelArguments",
    "end_distributed",
    "hub_dataset_id",
    "load_hub_dataset",
    "peek_dataclass",
    "run_script",
]
__all__ += causal_lm.__all__
__all__ += image_classification.__all__
__all__ += semantic_segmentation.__all__
__all__ += text_classification.__all__
__all__ += token_classification.__all__
