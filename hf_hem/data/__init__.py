"""Data for hf_hem: embedded offline datasets, NumPy/PIL transforms, segmentation loading and pixel histograms."""

from .embedded import (
    DIGIT_NAMES,
    digits_segmentation_id2label,
    load_digits_dataset,
    load_digits_segmentation_dataset,
)
from .segmentation import (
    ADE20K_DATASET_NAMES,
    ADE20K_HUB_ID,
    ade20k_id2label,
    load_segmentation_dataset,
    pixel_histogram,
    read_id2label,
)
from .transforms import (
    ClassificationTransform,
    ImageSettings,
    SegmentationTransform,
    UndecodableImageError,
    build_classification_transforms,
    build_segmentation_transforms,
    check_label_values,
    collate_fn,
    decode_image,
    decode_mask,
    random_resized_crop_box,
    reduce_labels,
    resolve_image_settings,
)


__all__ = [
    "ADE20K_DATASET_NAMES",
    "ADE20K_HUB_ID",
    "DIGIT_NAMES",
    "ClassificationTransform",
    "ImageSettings",
    "SegmentationTransform",
    "UndecodableImageError",
    "ade20k_id2label",
    "build_classification_transforms",
    "build_segmentation_transforms",
    "check_label_values",
    "collate_fn",
    "decode_image",
    "decode_mask",
    "digits_segmentation_id2label",
    "load_digits_dataset",
    "load_digits_segmentation_dataset",
    "load_segmentation_dataset",
    "pixel_histogram",
    "random_resized_crop_box",
    "read_id2label",
    "reduce_labels",
    "resolve_image_settings",
]
