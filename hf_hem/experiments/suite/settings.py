"""The settings of the benchmark suite: one dataclass, every field also an `hf-hem benchmark` flag.

A task's numbers depend on the settings it names (`COMMON_SETTINGS` plus its own): they form the fingerprint a
finished run is recognised by, so a changed recipe makes the finished runs stale.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .corruptions import CORRUPTIONS, MAX_SEVERITY
from .imbalance import IMBALANCE_PROFILES
from .ood_sets import SYNTHETIC_OOD_KINDS


@dataclass
class BenchmarkSettings:
    """Every knob of the benchmark. Defaults are sized so each task runs 3 seeds x 2 losses in a few minutes on two
    CPU cores with the embedded digits; raise `epochs` and the model sizes for real datasets."""

    # Data
    dataset: str = field(default="digits", metadata={"help": "'digits' (embedded, offline) or a Hub dataset name."})
    image_size: int = field(default=32, metadata={"help": "Side of the square input images."})
    num_channels: int = field(default=1, metadata={"help": "1 (grayscale) or 3 (RGB)."})
    test_fraction: float = field(default=0.3, metadata={"help": "Share of the digits held out for testing."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the data split and of the synthetic test sets."})
    image_column: str | None = field(default=None, metadata={"help": "Image column of a Hub dataset."})
    label_column: str | None = field(default=None, metadata={"help": "Label column of a Hub dataset."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Subsample the training split."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Subsample the test split."})
    # Model (the default tiny ResNet)
    embedding_size: int = field(default=16, metadata={"help": "ResNet stem channels."})
    hidden_sizes: tuple = field(default=(16, 32), metadata={"help": "ResNet stage channels, e.g. 16,32."})
    depths: tuple = field(default=(1, 1), metadata={"help": "ResNet blocks per stage, e.g. 1,1."})
    # Training
    trainer: str = field(
        default="hf", metadata={"help": "'hf' trains with HEMTrainer, 'torch' with a plain PyTorch loop (faster)."}
    )
    epochs: int = field(default=30, metadata={"help": "Training epochs (per task in continual learning)."})
    batch_size: int = field(default=64, metadata={"help": "Training batch size."})
    learning_rate: float = field(default=0.05, metadata={"help": "Initial SGD learning rate."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay."})
    lr_decay_fractions: tuple = field(
        default=(0.91, 0.955), metadata={"help": "Fractions of the epochs where the learning rate drops 10x."}
    )
    margin_scale: float = field(default=2000.0, metadata={"help": "M in the margin rule mu = sqrt(M / S)."})
    eval_batch_size: int = field(default=128, metadata={"help": "Batch size of inference and attacks."})
    # Unknown-class rejection
    unknown_classes: tuple = field(default=(6, 7, 8, 9), metadata={"help": "Classes held out as near-OOD."})
    ood_sets: tuple = field(
        default=(*SYNTHETIC_OOD_KINDS, "natural_patches"),
        metadata={"help": "Far-OOD sets: uniform_noise, pixel_permuted, phase_randomized, blobs, natural_patches."},
    )
    # Imbalance
    imbalance_ratio: float = field(default=10.0, metadata={"help": "Head-to-tail ratio of the long-tailed subset."})
    imbalance_profile: str = field(default="exponential", metadata={"help": "'exponential' or 'step'."})
    # Continual learning
    num_tasks: int = field(default=5, metadata={"help": "Class-incremental tasks."})
    continual_epochs: int = field(default=30, metadata={"help": "Epochs per continual-learning task."})
    continual_class_seed: int | None = field(
        default=None, metadata={"help": "Shuffle the class order with this seed (default: ascending classes)."}
    )
    # Adversarial robustness
    linf_epsilon: float = field(
        default=0.05, metadata={"help": "L-inf radius of FGSM and PGD-Linf (inputs in [0, 1])."}
    )
    l2_epsilon: float = field(default=1.0, metadata={"help": "L2 radius of PGD-L2."})
    attack_steps: int = field(default=10, metadata={"help": "PGD steps."})
    # Corruptions
    corruptions: tuple = field(default=tuple(CORRUPTIONS), metadata={"help": "Corruptions to apply."})
    severities: tuple = field(default=(1, 2, 3, 4, 5), metadata={"help": "Severities (1-5) to apply."})

    def __post_init__(self):
        for name in (
            "hidden_sizes",
            "depths",
            "lr_decay_fractions",
            "unknown_classes",
            "ood_sets",
            "corruptions",
            "severities",
        ):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"setting {name!r} must be a sequence, got the string {value!r}.")
            setattr(self, name, tuple(value))
        unknown_sets = set(self.ood_sets) - {*SYNTHETIC_OOD_KINDS, "natural_patches"}
        if unknown_sets:
            raise ValueError(
                f"unknown ood_sets {sorted(unknown_sets)}; valid: {[*SYNTHETIC_OOD_KINDS, 'natural_patches']}."
            )
        unknown_corruptions = set(self.corruptions) - set(CORRUPTIONS)
        if unknown_corruptions:
            raise ValueError(f"unknown corruptions {sorted(unknown_corruptions)}; valid: {list(CORRUPTIONS)}.")
        if not all(isinstance(s, int) and 1 <= s <= MAX_SEVERITY for s in self.severities):
            raise ValueError(f"severities must be integers in [1, {MAX_SEVERITY}], got {self.severities}.")
        if self.imbalance_profile not in IMBALANCE_PROFILES:
            raise ValueError(f"imbalance_profile must be one of {IMBALANCE_PROFILES}, got {self.imbalance_profile!r}.")
        if self.trainer not in ("hf", "torch"):
            raise ValueError(f"trainer must be 'hf' (HEMTrainer) or 'torch' (plain loop), got {self.trainer!r}.")
        if self.num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {self.num_channels!r}.")

    @classmethod
    def from_overrides(cls, overrides: dict | None = None) -> BenchmarkSettings:
        """Defaults with `overrides` applied; unknown names raise."""
        overrides = dict(overrides or {})
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"unknown benchmark settings {unknown}; valid settings are {sorted(valid)}.")
        return cls(**overrides)

    def to_dict(self, names=None) -> dict:
        values = dataclasses.asdict(self)
        return {
            name: (list(v) if isinstance(v, tuple) else v)
            for name, v in values.items()
            if names is None or name in names
        }


# The recipe settings that the suite's training call hands to `train_fn` under their own names. They are also in
# `COMMON_SETTINGS`, so a changed recipe makes the finished runs of every task stale.
RECIPE_SETTINGS = ("batch_size", "learning_rate", "momentum", "weight_decay", "lr_decay_fractions", "margin_scale")

COMMON_SETTINGS = (
    "dataset",
    "image_size",
    "num_channels",
    "test_fraction",
    "split_seed",
    "image_column",
    "label_column",
    "max_train_samples",
    "max_test_samples",
    "embedding_size",
    "hidden_sizes",
    "depths",
    "trainer",
    *RECIPE_SETTINGS,
)
