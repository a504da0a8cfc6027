"""The paper's task suite: unknown-class rejection, imbalance, continual learning, adversarial robustness, corruptions.

Building blocks (plain NumPy / torch, usable on their own): synthetic far-OOD sets and held-out-class splits
(`ood_sets`), long-tailed subsets (`imbalance`), class-incremental splits with average accuracy and forgetting
(`continual`), FGSM / PGD attacks (`adversarial`), common corruptions (`corruptions`) and across-seed statistics
(`stats`). [`run_benchmark`] puts them together, one task at a time; `hf-hem benchmark` is its command line.

Importing this package is cheap: transformers, datasets and matplotlib load only when a benchmark runs.
"""

from ..experiments.suite.adversarial import fgsm, model_logits, pgd
from ..experiments.suite.continual import IncrementalTask, average_accuracy, class_incremental_splits, forgetting
from ..experiments.suite.corruptions import (
    CORRUPTIONS,
    contrast,
    corrupt,
    gaussian_blur,
    gaussian_noise,
    jpeg_compression,
)
from ..experiments.suite.imbalance import long_tailed_counts, long_tailed_indices, shot_thresholds
from ..experiments.suite.ood_sets import (
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
from ..experiments.suite.training import predict_logits, train_model, train_with_hem_trainer
from ..models import tiny_resnet as build_resnet
from .runner import run_benchmark
from .stats import comparison_table, markdown_table, mean_std, summarize, welch_t_test
from .tasks import TASKS, BenchmarkSettings, get_task


__all__ = [
    "CORRUPTIONS",
    "SYNTHETIC_OOD_KINDS",
    "TASKS",
    "BenchmarkSettings",
    "IncrementalTask",
    "KnownUnknownSplit",
    "average_accuracy",
    "blobs",
    "build_resnet",
    "class_incremental_splits",
    "comparison_table",
    "contrast",
    "corrupt",
    "fgsm",
    "forgetting",
    "gaussian_blur",
    "gaussian_noise",
    "get_task",
    "jpeg_compression",
    "long_tailed_counts",
    "long_tailed_indices",
    "markdown_table",
    "mean_std",
    "model_logits",
    "natural_image_patches",
    "pgd",
    "phase_randomized",
    "pixel_permuted",
    "predict_logits",
    "run_benchmark",
    "shot_thresholds",
    "split_known_unknown",
    "summarize",
    "synthetic_ood_sets",
    "train_model",
    "train_with_hem_trainer",
    "uniform_noise",
    "welch_t_test",
]
