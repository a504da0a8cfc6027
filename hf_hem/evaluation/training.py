"""Models, training and inference for the benchmark: a tiny transformers ResNet and one `train_model` entry point.

Every task trains through [`train_model`], so swapping the training recipe (another optimiser, the `HEMTrainer`,
a bigger model) means passing another function with the same signature to `run_benchmark(train_fn=...)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..losses import get_loss
from ..losses.registry import COUNT_LOSS_NAMES, LOSS_NAMES, MARGIN_LOSS_NAMES
from .adversarial import model_logits


def build_resnet(
    num_labels: int,
    num_channels: int = 1,
    seed: int = 0,
    embedding_size: int = 16,
    hidden_sizes: Sequence[int] = (16, 32),
    depths: Sequence[int] = (1, 1),
):
    """A tiny `ResNetForImageClassification` built from its config (no download), seeded.

    With the defaults it has about 25k parameters and trains on 32x32 digits at roughly 100 images per millisecond
    on two CPU cores.

    Args:
        num_labels (`int`): number of classes.
        num_channels (`int`, defaults to 1): input channels.
        seed (`int`, defaults to 0): seed of the weight initialisation.
        embedding_size (`int`, defaults to 16): channels of the stem convolution.
        hidden_sizes (`Sequence[int]`, defaults to `(16, 32)`): channels of each stage.
        depths (`Sequence[int]`, defaults to `(1, 1)`): basic blocks per stage.

    Returns:
        `transformers.ResNetForImageClassification`.
    """
    from transformers import ResNetConfig, ResNetForImageClassification

    if len(hidden_sizes) != len(depths):
        raise ValueError(f"hidden_sizes {list(hidden_sizes)} and depths {list(depths)} must have the same length.")
    config = ResNetConfig(
        num_channels=num_channels,
        embedding_size=embedding_size,
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        layer_type="basic",
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    return ResNetForImageClassification(config)


def loss_for_training(loss_name: str, class_counts, margin_scale: float = 2000.0, loss_kwargs: dict | None = None):
    """The loss module for `loss_name`, given the training set's class counts.

    Margin losses get margins from the counts with the paper's rule (`sqrt(M / S)`, per class for `hem+`), `la` gets
    its priors from them; other losses ignore them. `loss_kwargs` override, e.g. `{"margin": 0.5}`.
    """
    if loss_name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {loss_name!r}; valid names are: {', '.join(LOSS_NAMES)}.")
    kwargs = dict(loss_kwargs or {})
    counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64)
    if loss_name in MARGIN_LOSS_NAMES:
        kwargs.setdefault("class_counts", counts)
        kwargs.setdefault("scale", margin_scale)
    elif loss_name in COUNT_LOSS_NAMES:
        kwargs.setdefault("class_counts", counts)
    return get_loss(loss_name, **kwargs)


def _as_training_tensors(train_dataset) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        images, labels = train_dataset
    except (TypeError, ValueError):
        raise ValueError("`train_dataset` must be a (pixel_values, labels) pair of arrays or tensors.") from None
    # Copies: the inputs may be read-only views of cached arrays, which torch cannot wrap.
    images = (
        images.detach().float() if torch.is_tensor(images) else torch.tensor(np.asarray(images), dtype=torch.float32)
    )
    labels = labels.detach().long() if torch.is_tensor(labels) else torch.tensor(np.asarray(labels), dtype=torch.long)
    if labels.dim() != 1 or images.shape[0] != labels.shape[0] or labels.numel() == 0:
        raise ValueError(
            f"`train_dataset` needs one label per image, got {tuple(images.shape)} images, {tuple(labels.shape)} labels."
        )
    return images, labels


TRAINING_BACKENDS = ("hf", "torch")


def get_train_fn(backend: str):
    """`"hf"`: [`train_with_hem_trainer`] (the library's `HEMTrainer`); `"torch"`: [`train_model`] (a plain loop)."""
    if backend not in TRAINING_BACKENDS:
        raise ValueError(f"unknown training backend {backend!r}; expected one of {TRAINING_BACKENDS}.")
    return train_with_hem_trainer if backend == "hf" else train_model


def train_model(
    model,
    train_dataset,
    loss_name: str,
    seed: int,
    *,
    epochs: int = 40,
    batch_size: int = 64,
    learning_rate: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    lr_decay_fractions: Sequence[float] = (0.91, 0.955),
    num_classes: int | None = None,
    class_counts=None,
    margin_scale: float = 2000.0,
    loss_kwargs: dict | None = None,
    progress: bool = False,
):
    """Trains `model` in place with the paper's recipe scaled down, in a plain PyTorch loop.

    SGD with momentum and weight decay; the learning rate drops 10x at each of `lr_decay_fractions` of the epochs
    (the paper's drops at epochs 100 and 105 of 110 are fractions 0.91 and 0.955), which matters for HEM: its
    accuracy rises most after the late drop.

    Args:
        model: an image classifier called as in [`model_logits`] (a transformers model or an `nn.Module`).
        train_dataset (`tuple`): `(pixel_values, labels)` arrays or tensors, `(N, C, H, W)` float and `(N,)` int.
        loss_name (`str`): a registry name (`ce`, `hem`, `hem+`, `la`, ...).
        seed (`int`): seed of the batch order.
        epochs (`int`, defaults to 40): passes over the data.
        batch_size (`int`, defaults to 64): samples per step.
        learning_rate (`float`, defaults to 0.05): initial learning rate.
        momentum (`float`, defaults to 0.9): SGD momentum.
        weight_decay (`float`, defaults to 5e-4): SGD weight decay.
        lr_decay_fractions (`Sequence[float]`, defaults to `(0.91, 0.955)`): where the learning rate drops 10x.
        num_classes (`int`, *optional*): length of the class-count vector; defaults to `model.config.num_labels`,
            else `max(label) + 1`.
        class_counts (array-like, *optional*): counts that set margins / priors; defaults to the counts of
            `train_dataset` (pass them explicitly when training on part of a label space, e.g. continual learning).
        margin_scale (`float`, defaults to 2000.0): the paper's `M` in `mu = sqrt(M / S)`.
        loss_kwargs (`dict`, *optional*): extra loss constructor arguments, e.g. `{"margin": 0.5}`.
        progress (`bool`, defaults to `False`): show a tqdm bar over epochs.

    Returns:
        The trained model, in eval mode.
    """
    from tqdm.auto import tqdm

    images, labels = _as_training_tensors(train_dataset)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"`epochs` must be an integer >= 1, got {epochs!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
    if num_classes is None:
        config = getattr(model, "config", None)
        num_classes = getattr(config, "num_labels", None) or int(labels.max()) + 1
    if class_counts is None:
        class_counts = torch.bincount(labels, minlength=num_classes)
    criterion = loss_for_training(loss_name, class_counts, margin_scale, loss_kwargs)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=learning_rate, momentum=momentum, weight_decay=weight_decay)
    milestones = sorted({max(1, math.ceil(fraction * epochs)) for fraction in lr_decay_fractions if fraction < 1})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(epochs), desc=f"train {loss_name}", leave=False, disable=not progress):
        for batch in torch.randperm(labels.numel(), generator=generator).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model_logits(model, images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
        scheduler.step()
    return model.eval()


@torch.no_grad()
def predict_logits(model, pixel_values, batch_size: int = 512) -> np.ndarray:
    """Logits of `model` on a batch, computed in eval mode in chunks of `batch_size`.

    Shape:
        - pixel_values: `(N, C, H, W)`; output: `(N, num_labels)` float32 NumPy array.
    """
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    inputs = pixel_values if torch.is_tensor(pixel_values) else torch.tensor(np.asarray(pixel_values))
    chunks = [model_logits(model, chunk.float()).float().cpu() for chunk in inputs.split(batch_size)]
    if isinstance(model, torch.nn.Module):
        model.train(was_training)
    return torch.cat(chunks).numpy()


def _epoch_progress_callback(epochs: int, description: str):
    """A `TrainerCallback` showing a tqdm bar over epochs, like [`train_model`]'s (imports transformers lazily)."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class EpochProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=epochs, desc=description, leave=False)

        def on_epoch_end(self, args, state, control, **kwargs):
            self.bar.update(1)

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return EpochProgress()


class _PixelDataset(torch.utils.data.Dataset):
    """`{"pixel_values", "labels"}` items over in-memory tensors, the batch format the Trainer collates."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.images[index], "labels": self.labels[index]}


def train_with_hem_trainer(
    model,
    train_dataset,
    loss_name: str,
    seed: int,
    *,
    epochs: int = 40,
    batch_size: int = 64,
    learning_rate: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    lr_decay_fractions: Sequence[float] = (0.91, 0.955),
    num_classes: int | None = None,
    class_counts=None,
    margin_scale: float = 2000.0,
    loss_kwargs: dict | None = None,
    progress: bool = False,
    output_dir: str | None = None,
):
    """[`train_model`]'s recipe run through [`HEMTrainer`] and [`HEMConfig`] instead of a plain loop.

    Same signature and arguments as [`train_model`] (so it can be passed as `run_benchmark(train_fn=...)`), plus
    `output_dir` for the Trainer (a temporary folder by default; nothing is saved). The optimiser and the 10x
    learning-rate drops are the same; batch order comes from the Trainer's seeded sampler, so the numbers differ
    from [`train_model`]'s run for run but not in distribution. `loss_kwargs` are `HEMConfig` fields
    (e.g. `{"margin": 0.5}` or `{"la_tau": 1.5}`).

    Returns:
        The trained model, in eval mode.
    """
    import tempfile

    from transformers import PrinterCallback

    from ..trainer import HEMConfig, HEMTrainer

    images, labels = _as_training_tensors(train_dataset)
    if num_classes is None:
        config = getattr(model, "config", None)
        num_classes = getattr(config, "num_labels", None) or int(labels.max()) + 1
    if class_counts is None:
        class_counts = torch.bincount(labels, minlength=num_classes)
    counts = [int(count) for count in np.asarray(class_counts).tolist()]
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=learning_rate, momentum=momentum, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(labels.numel() / batch_size)
    milestones = sorted(
        {max(1, math.ceil(fraction * epochs)) * steps_per_epoch for fraction in lr_decay_fractions if fraction < 1}
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    with tempfile.TemporaryDirectory() as temporary:
        args = HEMConfig(
            output_dir=output_dir or temporary,
            loss_name=loss_name,
            class_counts=counts,
            margin_scale=margin_scale,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            seed=seed,
            use_cpu=not torch.cuda.is_available(),
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,  # the Trainer's bars would print each run's log dict; an epoch bar replaces them
            dataloader_num_workers=0,
            **(loss_kwargs or {}),
        )
        trainer = HEMTrainer(
            model=model, args=args, train_dataset=_PixelDataset(images, labels), optimizers=(optimizer, scheduler)
        )
        trainer.remove_callback(PrinterCallback)  # it prints the end-of-training summary of every run
        if progress:
            trainer.add_callback(_epoch_progress_callback(epochs, f"train {loss_name}"))
        trainer.train()
    return model.eval()
