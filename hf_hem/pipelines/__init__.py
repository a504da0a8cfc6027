"""End-to-end pipelines: the logic behind the scripts in `scripts/` and the `hf-hem` commands."""

from .image_classification import (
    EMBEDDED_DATASET_NAME,
    EMBEDDED_TRAINING_DEFAULTS,
    SCRATCH_MODEL_TYPES,
    DataTrainingArguments,
    HEMModelCardCallback,
    ImageClassificationData,
    ImageClassificationTrainer,
    ModelArguments,
    PushToHubError,
    build_model_and_image_processor,
    load_image_classification_data,
    make_compute_metrics,
    parse_image_classification_args,
    peek_data_arguments,
    run_image_classification,
    scratch_model_config,
)


__all__ = [
    "EMBEDDED_DATASET_NAME",
    "EMBEDDED_TRAINING_DEFAULTS",
    "SCRATCH_MODEL_TYPES",
    "DataTrainingArguments",
    "HEMModelCardCallback",
    "ImageClassificationData",
    "ImageClassificationTrainer",
    "ModelArguments",
    "PushToHubError",
    "build_model_and_image_processor",
    "load_image_classification_data",
    "make_compute_metrics",
    "parse_image_classification_args",
    "peek_data_arguments",
    "run_image_classification",
    "scratch_model_config",
]
