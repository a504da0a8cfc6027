"""The building blocks of the benchmark suite (`hf-hem benchmark`): plain NumPy / torch, usable on their own.

Synthetic far-OOD sets and held-out-class splits (`ood_sets`), long-tailed subsets (`imbalance`), class-incremental
splits with average accuracy and forgetting (`continual`), FGSM / PGD attacks (`adversarial`), common corruptions
(`corruptions`), the image data as arrays (`benchmark_data`), the suite's settings (`settings`) and its training
recipe (`training`). The tasks that put them together are in `hf_hem.experiments.tasks`.
"""

from .adversarial import fgsm, model_logits, pgd
from .continual import IncrementalTask, average_accuracy, class_incremental_splits, forgetting
from .corruptions import CORRUPTIONS, contrast, corrupt, gaussian_blur, gaussian_noise, jpeg_compression
from .imbalance import long_tailed_counts, long_tailed_indices, shot_thresholds
from .ood_sets import (
    SYNTHETIC_OOD_KINDS,
    KnownUnknownSplit,
    blobs,
    natural_image_patches,
    phase_randomized,
    pixel_permuted,
    split_known_unknown,
    synthetic_ood_sets,
    uniform_noise,
)
from .settings import BenchmarkSettings
from .training import predict_logits, train_model, train_with_hem_trainer


__all__ = [
    "CORRUPTIONS",
    "SYNTHETIC_OOD_KINDS",
    "BenchmarkSettings",
    "IncrementalTask",
    "KnownUnknownSplit",
    "average_accuracy",
    "blobs",
    "class_incremental_splits",
    "contrast",
    "corrupt",
    "fgsm",
    "forgetting",
    "gaussian_blur",
    "gaussian_noise",
    "jpeg_compression",
    "long_tailed_counts",
    "long_tailed_indices",
    "model_logits",
    "natural_image_patches",
    "pgd",
    "phase_randomized",
    "pixel_permuted",
    "predict_logits",
    "shot_thresholds",
    "split_known_unknown",
    "synthetic_ood_sets",
    "train_model",
    "train_with_hem_trainer",
    "uniform_noise",
]
