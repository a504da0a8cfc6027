"""Training and inference for the benchmark suite: one `train_model` entry point.

Every task trains through [`train_model`]: one recipe, one meaning of `loss_kwargs` (HEMConfig's loss fields), and
two backends, a plain PyTorch loop (`backend="torch"`) and the library's `HEMTrainer` (`backend="hf"`). Swapping the
recipe itself (another optimiser, a bigger model) means passing another function with the same signature to
`run_benchmark(train_fn=...)`.
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback

from ...losses.registry import LOSS_SPECS
from ...losses.settings import LossSettings, build_loss
from ...models import tiny_resnet
from ...trainer import HEMConfig, HEMTrainer
from .adversarial import model_logits


#: The `loss_kwargs` a run accepts: [`HEMConfig`]'s loss fields, the margin settings and, read from the registry,
#: every baseline option that becomes a constructor argument (`la_tau`, `focal_gamma`, ...).
LOSS_KWARGS = (
    "margin",
    "num_margin_samples",
    "per_class_margins",
    "loss_ignore_index",
    *dict.fromkeys(field for spec in LOSS_SPECS.values() for field in spec.config_arguments),
)


def _loss_fields(loss_kwargs: dict | None) -> dict:
    """`loss_kwargs` as a dict; names that are no loss field of `HEMConfig` raise (both backends)."""
    fields = dict(loss_kwargs or {})
    unknown = sorted(set(fields) - set(LOSS_KWARGS))
    if unknown:
        raise ValueError(
            f"loss_kwargs {unknown} are not HEMConfig loss fields; expected some of {', '.join(LOSS_KWARGS)} "
            "(margin_scale and class_counts are arguments of their own)."
        )
    return fields


def loss_for_training(loss_name: str, class_counts, margin_scale: float = 2000.0, loss_kwargs: dict | None = None):
    """The loss module for `loss_name`, given the training set's class counts, as the torch backend trains with it.

    The one place where the suite turns its loss settings into a loss: a [`~hf_hem.losses.LossSettings`] (checked
    there, as for [`HEMConfig`]) and [`~hf_hem.losses.build_loss`]. Margins are a fixed `margin` or the paper's rule
    `sqrt(M / S)` on the counts, per class for `hem+` or with `per_class_margins`, capped at the library's default
    `max_margin=1.0` below 2000 training samples, as `HEMConfig` caps it for the `"hf"` backend: both backends train
    with the same margins. `la` gets its priors from the counts.

    Args:
        loss_name (`str`): a registry name (`ce`, `hem`, `hem+`, `la`, ...).
        class_counts (array-like): training samples per class.
        margin_scale (`float`, defaults to 2000.0): the paper's `M` in `mu = sqrt(M / S)`.
        loss_kwargs (`dict`, *optional*): [`HEMConfig`] loss fields (see `LOSS_KWARGS`), e.g. `{"margin": 0.5}`,
            `{"la_tau": 1.5}` or `{"per_class_margins": True}`.
    """
    fields = _loss_fields(loss_kwargs)
    ignore_index = fields.pop("loss_ignore_index", None)
    settings = LossSettings(
        loss_name=loss_name,
        margin_scale=margin_scale,
        ignore_index=-100 if ignore_index is None else ignore_index,
        **fields,
    )
    return build_loss(settings, class_counts=np.asarray(class_counts))


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


def default_model_fn(settings):
    """`model_fn(num_labels, num_channels, seed)` building the tiny ResNet sized by `settings` (a
    [`BenchmarkSettings`]): [`~hf_hem.models.tiny_resnet`] with its `embedding_size`, `hidden_sizes` and `depths`."""
    return functools.partial(
        tiny_resnet,
        embedding_size=settings.embedding_size,
        hidden_sizes=settings.hidden_sizes,
        depths=settings.depths,
    )


def run_options(settings, train_fn: Callable | None = None, model_fn: Callable | None = None) -> dict:
    """What the benchmark hands its tasks besides the settings (`RunContext.options`): `train_fn` (by default the
    backend `settings.trainer` names, see [`get_train_fn`]) and `model_fn` (by default [`default_model_fn`])."""
    return {
        "train_fn": train_fn or get_train_fn(settings.trainer),
        "model_fn": model_fn or default_model_fn(settings),
    }


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
    backend: str = "torch",
    output_dir: str | None = None,
    eval_fn: Callable | None = None,
    history: list | None = None,
):
    """Trains `model` in place with the paper's recipe scaled down, in a plain PyTorch loop or through `HEMTrainer`.

    SGD with momentum and weight decay; the learning rate drops 10x at each of `lr_decay_fractions` of the epochs
    (the paper's drops at epochs 100 and 105 of 110 are fractions 0.91 and 0.955), which matters for HEM: its
    accuracy rises most after the late drop. Both backends run this recipe with the same optimiser, schedule and
    `loss_kwargs` and the same margins; batch order comes from a seeded permutation (`"torch"`) or the Trainer's
    seeded sampler (`"hf"`), so their numbers differ run for run.

    Args:
        model: an image classifier called as in [`model_logits`] (a transformers model or an `nn.Module`; the `"hf"`
            backend needs a model that returns its logits from `pixel_values`, like the transformers ones).
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
        loss_kwargs (`dict`, *optional*): [`HEMConfig`] loss fields, the same for both backends (see `LOSS_KWARGS`):
            e.g. `{"margin": 0.5}`, `{"la_tau": 1.5}`, `{"focal_gamma": 1.0}`.
        progress (`bool`, defaults to `False`): show a tqdm bar over epochs.
        backend (`str`, defaults to `"torch"`): `"torch"` (a plain PyTorch loop, the faster) or `"hf"` (through
            [`HEMTrainer`] and [`HEMConfig`]).
        output_dir (`str`, *optional*): the Trainer's folder with `backend="hf"` (a temporary folder by default;
            nothing is saved); unused by the `"torch"` backend.
        eval_fn (`Callable`, *optional*): `eval_fn(model) -> dict[str, float]`, called after every epoch (model in
            eval mode, no gradients needed) when `history` is given: the points of the learning curves.
        history (`list`, *optional*): receives one dict per epoch: `epoch` (1, 2, ...), `loss` (the mean training
            loss of the epoch's batches), `hem/violating_fraction` (margin losses: the share of the epoch's training
            samples that violated their margin when they were trained on), and the metrics of `eval_fn`.

    Returns:
        The trained model, in eval mode.
    """
    if backend not in TRAINING_BACKENDS:
        raise ValueError(f"unknown training backend {backend!r}; expected one of {TRAINING_BACKENDS}.")
    images, labels = _as_training_tensors(train_dataset)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"`epochs` must be an integer >= 1, got {epochs!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
    loss_fields = _loss_fields(loss_kwargs)
    if num_classes is None:
        config = getattr(model, "config", None)
        num_classes = getattr(config, "num_labels", None) or int(labels.max()) + 1
    if class_counts is None:
        class_counts = torch.bincount(labels, minlength=num_classes)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=learning_rate, momentum=momentum, weight_decay=weight_decay)
    decay_epochs = sorted({max(1, math.ceil(fraction * epochs)) for fraction in lr_decay_fractions if fraction < 1})
    run = _TrainingRun(
        model, images, labels, optimizer, decay_epochs, f"train {loss_name}", progress, eval_fn, history
    )
    if backend == "torch":
        criterion = loss_for_training(loss_name, class_counts, margin_scale, loss_fields)
        _run_torch_loop(run, criterion, seed, epochs, batch_size)
    else:
        config = {
            "loss_name": loss_name,
            "class_counts": [int(count) for count in np.asarray(class_counts).tolist()],
            "margin_scale": margin_scale,
            "num_train_epochs": epochs,
            "per_device_train_batch_size": batch_size,
            "seed": seed,
            **loss_fields,
        }
        _run_hem_trainer(run, config, output_dir)
    return model.eval()


def train_with_hem_trainer(model, train_dataset, loss_name: str, seed: int, **kwargs):
    """[`train_model`] with `backend="hf"`: the recipe run through [`HEMTrainer`] and [`HEMConfig`].

    A function of its own so that it can be passed as `run_benchmark(train_fn=...)`, as [`get_train_fn`]`("hf")`
    does; takes every keyword argument of [`train_model`] but `backend`.

    Returns:
        The trained model, in eval mode.
    """
    return train_model(model, train_dataset, loss_name, seed, backend="hf", **kwargs)


def _violating_count(logits: torch.Tensor, labels: torch.Tensor, margin: torch.Tensor) -> int:
    """Samples whose margin is violated: some other class's logit is above `y_t - mu_t` (HEM's loss is > 0)."""
    target = logits.gather(1, labels[:, None])
    others = logits.scatter(1, labels[:, None], float("-inf"))
    mu = margin[labels] if margin.dim() else margin
    return int((others.max(dim=1).values - target[:, 0] + mu > 0).sum())


@dataclass
class _TrainingRun:
    """What the two backends of [`train_model`] share: the model and its training tensors, the optimiser and the
    epochs where its learning rate drops, the progress bar, and the learning curves to record (`history`)."""

    model: torch.nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    optimizer: torch.optim.Optimizer
    decay_epochs: list[int]
    description: str
    progress: bool
    eval_fn: Callable | None = None
    history: list | None = None

    def record_epoch(self, epoch: int, train_values: dict) -> None:
        """Appends an epoch's entry to `history`: its training values and the metrics of `eval_fn`."""
        entry = {"epoch": epoch, **train_values}
        if self.eval_fn is not None:
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad():
                entry.update({key: float(value) for key, value in self.eval_fn(self.model).items()})
            self.model.train(was_training)
        self.history.append(entry)


def _run_torch_loop(run: _TrainingRun, criterion, seed: int, epochs: int, batch_size: int) -> None:
    model, images, labels, optimizer = run.model, run.images, run.labels, run.optimizer
    # Stepped once per epoch, so the drops fall on the epochs themselves.
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=run.decay_epochs, gamma=0.1)
    generator = torch.Generator().manual_seed(seed)
    margin = getattr(criterion, "margin", None)
    model.train()
    for epoch in tqdm(range(epochs), desc=run.description, leave=False, disable=not run.progress):
        loss_sum, violating, seen = 0.0, 0, 0
        for batch in torch.randperm(labels.numel(), generator=generator).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            logits = model_logits(model, images[batch])
            loss = criterion(logits, labels[batch])
            loss.backward()
            optimizer.step()
            if run.history is not None:
                loss_sum += float(loss.detach()) * batch.numel()
                seen += batch.numel()
                if torch.is_tensor(margin):
                    violating += _violating_count(logits.detach(), labels[batch], margin.to(logits.device))
        scheduler.step()
        if run.history is not None:
            train_values = {"loss": loss_sum / max(seen, 1)}
            if torch.is_tensor(margin):
                train_values["hem/violating_fraction"] = violating / max(seen, 1)
            run.record_epoch(epoch + 1, train_values)


def _run_hem_trainer(run: _TrainingRun, config: dict, output_dir) -> None:
    # The Trainer steps the scheduler after every optimiser step: the drops are counted in steps.
    steps_per_epoch = math.ceil(run.labels.numel() / config["per_device_train_batch_size"])
    milestones = [epoch * steps_per_epoch for epoch in run.decay_epochs]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(run.optimizer, milestones=milestones, gamma=0.1)
    with tempfile.TemporaryDirectory() as temporary:
        args = HEMConfig(
            output_dir=output_dir or temporary,
            use_cpu=not torch.cuda.is_available(),
            save_strategy="no",
            # One training log per epoch when curves are recorded: its `loss` and `hem/violating_fraction` are the
            # epoch's means, the points of the training curves.
            logging_strategy="epoch" if run.history is not None else "no",
            report_to=[],
            disable_tqdm=True,  # the Trainer's bars would print each run's log dict; an epoch bar replaces them
            dataloader_num_workers=0,
            **config,
        )
        trainer = HEMTrainer(
            model=run.model,
            args=args,
            train_dataset=_PixelDataset(run.images, run.labels),
            optimizers=(run.optimizer, scheduler),
        )
        trainer.remove_callback(PrinterCallback)  # it prints the end-of-training summary of every run
        if run.progress:
            trainer.add_callback(_EpochProgress(config["num_train_epochs"], run.description))
        if run.history is not None:
            trainer.add_callback(_EpochHistory(run))
        trainer.train()


class _EpochHistory(TrainerCallback):
    """Turns each epoch's training log into an entry of the run's `history` (see [`train_model`])."""

    def __init__(self, run: _TrainingRun):
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or "train_runtime" in logs:
            return
        values = {key: float(logs[key]) for key in ("loss", "hem/violating_fraction") if key in logs}
        self.run.record_epoch(round(state.epoch or 0), values)


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


class _EpochProgress(TrainerCallback):
    """A tqdm bar over epochs, like [`train_model`]'s torch loop shows."""

    def __init__(self, epochs: int, description: str):
        self.epochs, self.description = epochs, description

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=self.epochs, desc=self.description, leave=False)

    def on_epoch_end(self, args, state, control, **kwargs):
        self.bar.update(1)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


class _PixelDataset(torch.utils.data.Dataset):
    """`{"pixel_values", "labels"}` items over in-memory tensors, the batch format the Trainer collates."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.images[index], "labels": self.labels[index]}
