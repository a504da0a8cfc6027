"""Data for hf_hem: embedded offline datasets, NumPy/PIL transforms, segmentation loading and pixel histograms."""

from . import segmentation, transforms
from .embedded import (
    DIGIT_NAMES,
    digits_segmentation_id2label,
    load_digits_dataset,
    load_digits_segmentation_dataset,
)

# Each module lists its public names once, in its `__all__`, and the package re-exports exactly those (the embedded
# datasets' module has no `__all__`: its names are given here).
from .segmentation import *  # noqa: F403
from .transforms import *  # noqa: F403


__all__ = ["DIGIT_NAMES", "digits_segmentation_id2label", "load_digits_dataset", "load_digits_segmentation_dataset"]
__all__ += segmentation.__all__
__all__ += transforms.__all__
