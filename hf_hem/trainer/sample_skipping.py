"""Skipping samples that meet their margin: the pieces behind `HEMConfig(skip_zero_loss=...)`.

A sample whose margin loss is zero has exactly zero gradient, and (for HEM, HEM+, MM+maz) does not enter the count
that normalises the batch loss, so leaving it out of the backward pass changes nothing. `"exact"` finds those samples
with a forward pass without autograd; `"stale"` also leaves out, before any forward pass, samples whose loss was
zero the last time they were seen (an approximation, revisited on a schedule). With gradient accumulation,
[`WindowGatherer`] forwards and backpropagates the violating samples of a whole accumulation window together, in
chunks of the micro-batch size, instead of one small remainder per micro-batch. See docs/trainer.md, "Training
faster".
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..losses.terms import BatchTerms, LossTerms, count_dtype, logits_from_outputs


#: Batch key that carries each row's index in the training set (`skip_zero_loss="stale"`); never reaches the model.
SAMPLE_INDEX_KEY = "hem_sample_index"


def skip_pays(violating_fraction: float, backward_ratio: float) -> bool:
    """The cost model: a selection forward `F` plus `f (F + B)` for the violating samples, against `F + B`.

    Skipping pays while `F + f (F + B) < F + B`, i.e. `f < B / (F + B)`; with `B = 2F` (the usual backward cost)
    while fewer than 2/3 of the samples violate their margin.
    """
    return violating_fraction < backward_ratio / (1.0 + backward_ratio)


def samples_with_loss(per_sample: torch.Tensor) -> torch.Tensor:
    """`(N,)` booleans: which samples (images, sequences) have a non-zero loss at any of their positions."""
    return per_sample.gt(0) if per_sample.dim() == 1 else per_sample.flatten(1).gt(0).any(dim=1)


def select_rows(inputs: Mapping, rows: torch.Tensor, batch_size: int) -> dict:
    """The batch restricted to `rows`: every tensor whose first dimension is the batch is indexed, the rest kept."""
    return {
        key: value.index_select(0, rows.to(value.device))
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch_size
        else value
        for key, value in inputs.items()
    }


def uses_batch_norm(model: nn.Module) -> bool:
    """Whether `model` has a BatchNorm layer (its train-mode forward of a sample depends on the other samples)."""
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())


@contextlib.contextmanager
def frozen_batch_norm_statistics(model: nn.Module):
    """Runs a train-mode forward (the selection pass) without updating BatchNorm running statistics.

    The backward pass of the violating samples runs its own forward, which updates them once, from those samples.
    """
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            buffers = (module.running_mean, module.running_var, module.num_batches_tracked)
            saved.append((buffers, [None if b is None else b.detach().clone() for b in buffers]))
    try:
        yield
    finally:
        with torch.no_grad():
            for buffers, copies in saved:
                for buffer, copy in zip(buffers, copies):
                    if buffer is not None:
                        buffer.copy_(copy)


class IndexedDataset(torch.utils.data.Dataset):
    """Wraps a map-style dataset so every item carries its index (for `skip_zero_loss="stale"`)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return index, self.dataset[index]


class IndexedCollator:
    """Collates `(index, item)` pairs with the wrapped collator and adds the indices under [`SAMPLE_INDEX_KEY`]."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        batch = self.collator([item for _, item in features])
        batch[SAMPLE_INDEX_KEY] = torch.tensor([index for index, _ in features], dtype=torch.long)
        return batch


class StaleZeroLossTracker:
    """Remembers which training samples had zero loss when last seen, and decides which to leave out.

    A sample with zero loss is left out of its next encounters (one per epoch), at most `revisit_epochs - 1` times
    in a row; then it is seen again, and stays out only if its loss is still zero. In the final `final_fraction` of
    training every sample is seen (the last updates are those of `"exact"`), as InfoBatch anneals its pruning.

    Args:
        num_samples (`int`): size of the training set.
        revisit_epochs (`int`): see above.
        final_fraction (`float`): see above.
    """

    def __init__(self, num_samples: int, revisit_epochs: int, final_fraction: float):
        self.zero_loss = np.zeros(num_samples, dtype=bool)
        self.times_left_out = np.zeros(num_samples, dtype=np.int64)
        self.revisit_epochs = int(revisit_epochs)
        self.final_fraction = float(final_fraction)

    def keep(self, indices: torch.Tensor, progress: float) -> torch.Tensor:
        """`(B,)` booleans: which rows of a batch to forward at training progress `progress` in `[0, 1]`."""
        index = indices.cpu().numpy()
        if progress >= 1.0 - self.final_fraction:
            return torch.ones(len(index), dtype=torch.bool)
        leave_out = self.zero_loss[index] & (self.times_left_out[index] < self.revisit_epochs - 1)
        self.times_left_out[index] = np.where(leave_out, self.times_left_out[index] + 1, 0)
        return torch.from_numpy(~leave_out)

    def record(self, indices: torch.Tensor, has_loss: torch.Tensor) -> None:
        """Stores, for the forwarded rows `indices`, whether their loss was non-zero."""
        self.zero_loss[indices.cpu().numpy()] = ~has_loss.cpu().numpy()


@contextlib.contextmanager
def indexed_training_data(trainer, datasets_module=None):
    """Within the block, `trainer.train_dataset` / `trainer.data_collator` yield batches with [`SAMPLE_INDEX_KEY`].

    Unused columns are removed first, as the Trainer would (its own removal would drop the index key).
    """
    dataset, collator = trainer.train_dataset, trainer.data_collator
    if datasets_module is not None and isinstance(dataset, datasets_module.Dataset):
        dataset = trainer._remove_unused_columns(dataset, description="training")
    else:
        collator = trainer._get_collator_with_removed_columns(collator, description="training")
    original = trainer.train_dataset, trainer.data_collator, trainer.args.remove_unused_columns
    trainer.train_dataset, trainer.data_collator = IndexedDataset(dataset), IndexedCollator(collator)
    trainer.args.remove_unused_columns = False
    try:
        yield
    finally:
        trainer.train_dataset, trainer.data_collator, trainer.args.remove_unused_columns = original


class MicroBatchStep(NamedTuple):
    """What [`forward_micro_batch`] (or the causal LMs' fused head) computed: the loss to backpropagate (`None`:
    nothing), the logits, labels and terms of the forwarded rows (for the statistics and the count), which of them
    have a non-zero loss, how many samples were backpropagated, and the `LossTerms.stats` sums when the step made
    them itself (`None`: the trainer computes them from `logits`)."""

    loss_sum: torch.Tensor | None
    logits: torch.Tensor | None
    labels: torch.Tensor
    terms: BatchTerms
    has_loss: torch.Tensor
    num_backpropagated: int
    stats: torch.Tensor | None = None


def forward_micro_batch(
    model: nn.Module,
    unwrapped: nn.Module,
    terms: LossTerms,
    inputs: Mapping,
    labels: torch.Tensor,
    rows: torch.Tensor,
    *,
    select: bool,
    distributed: bool,
    defer_backward: bool = False,
) -> MicroBatchStep:
    """The forward passes of one training micro-batch, restricted to `rows`.

    Without `select`, one forward with autograd. With `select`, a selection pass (no autograd, BatchNorm running
    statistics left alone, through the `unwrapped` model so that no DDP collective runs that another process might
    not run) finds the samples with a non-zero loss, and only those are forwarded again with autograd. A process
    with nothing to backpropagate in a distributed run still takes one DDP forward and backward (one sample, weight
    0), as DDP synchronises buffers in forward and gradients in backward. With `select` and `defer_backward`, only
    the selection pass runs: the rows `rows[has_loss]` are left to a [`WindowGatherer`] (`loss_sum` is `None`).
    """
    batch_size = labels.shape[0]
    if rows.numel() == 0:  # every row was left out (`"stale"`): no forward pass, but DDP still needs one
        loss_sum = _ddp_participation(model, inputs, rows, batch_size) if distributed else None
        zero = torch.zeros((), dtype=count_dtype(labels.device), device=labels.device)
        empty = BatchTerms(zero, zero, None)
        return MicroBatchStep(loss_sum, None, labels[rows], empty, rows.new_zeros(0, dtype=torch.bool), 0)
    if select or rows.numel() < batch_size:
        inputs_kept, labels_kept = select_rows(inputs, rows, batch_size), labels[rows]
    else:
        inputs_kept, labels_kept = inputs, labels
    if not select:
        logits = terms.match_label_size(logits_from_outputs(model(**inputs_kept)), labels_kept)
        batch = terms.compute(logits, labels_kept)
        has_loss = rows.new_ones(rows.shape, dtype=torch.bool)
        if batch.per_sample is not None:
            has_loss = samples_with_loss(batch.per_sample)
        return MicroBatchStep(batch.loss_sum, logits.detach(), labels_kept, batch, has_loss, int(rows.numel()))
    with torch.no_grad(), frozen_batch_norm_statistics(model):
        logits = terms.match_label_size(logits_from_outputs(unwrapped(**inputs_kept)), labels_kept)
        batch = terms.compute(logits, labels_kept)
    has_loss = samples_with_loss(batch.per_sample)
    backward_rows = rows[has_loss]
    if defer_backward:
        return MicroBatchStep(None, logits, labels_kept, batch, has_loss, int(backward_rows.numel()))
    if backward_rows.numel() == 1 and uses_batch_norm(model):
        # BatchNorm cannot normalise one sample in train mode: this micro-batch takes the ordinary step.
        return forward_micro_batch(
            model, unwrapped, terms, inputs, labels, rows, select=False, distributed=distributed
        )
    loss_sum = None
    if backward_rows.numel():
        grad_labels = labels[backward_rows]
        outputs = model(**select_rows(inputs, backward_rows, batch_size))
        loss_sum = terms.compute(
            terms.match_label_size(logits_from_outputs(outputs), grad_labels), grad_labels
        ).loss_sum
    elif distributed:
        loss_sum = _ddp_participation(model, inputs, rows, batch_size)
    return MicroBatchStep(loss_sum, logits, labels_kept, batch, has_loss, int(backward_rows.numel()))


def _ddp_participation(model: nn.Module, inputs: Mapping, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A zero loss through one sample's DDP forward: the process joins the buffer and gradient synchronisation."""
    one = rows[:1] if rows.numel() else torch.zeros(1, dtype=torch.long, device=rows.device)
    with frozen_batch_norm_statistics(model):
        return logits_from_outputs(model(**select_rows(inputs, one, batch_size))).sum() * 0.0


def _concatenate(parts: list[tuple[dict, torch.Tensor]]) -> list[tuple[dict, torch.Tensor]]:
    """The `(inputs, labels)` parts as one concatenated part, or unchanged where they cannot be concatenated (batch
    tensors whose other dimensions differ, e.g. text padded per batch, or differing non-batch values)."""
    if len(parts) < 2:
        return parts
    first_inputs, _ = parts[0]
    merged = {}
    for key, value in first_inputs.items():
        values = [inputs.get(key) for inputs, _ in parts]
        batched = [torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == labels.shape[0] for v, (_, labels) in
                   zip(values, parts)]  # fmt: skip
        if all(batched) and len({v.shape[1:] for v in values}) == 1:
            merged[key] = torch.cat(values)
        elif not any(batched) and all(
            v is value or (torch.is_tensor(v) and torch.is_tensor(value) and torch.equal(v, value)) for v in values
        ):
            merged[key] = value
        else:
            return parts
    if any(set(inputs) != set(first_inputs) for inputs, _ in parts):
        return parts
    return [(merged, torch.cat([labels for _, labels in parts]))]


class WindowGatherer:
    """The violating samples of one accumulation window, forwarded and backpropagated together at its end.

    Per micro-batch, skipping leaves whatever violates its margin: on an accelerator a forward/backward of a few
    samples costs nearly what a full micro-batch does. Gathering the violating rows of every micro-batch of the
    window into chunks of at most the micro-batch size runs as few, full passes as the window needs. The gradient is
    the same sum of per-sample gradients (each sample's forward depends on it alone, as for `"exact"`), so it equals
    that of `"off"`; with BatchNorm the samples normalised together change, and no chunk holds a single sample.
    Memory: the inputs of the window's violating samples are copied and held until its last micro-batch; the
    activations of a chunk are those of at most one micro-batch.
    """

    def __init__(self):
        self.parts: list[tuple[dict, torch.Tensor]] = []
        self._whole: tuple[Mapping, torch.Tensor] | None = None  # the micro-batch of a window's only violating row

    def __len__(self) -> int:
        return sum(labels.shape[0] for _, labels in self.parts)

    def add(self, inputs: Mapping, labels: torch.Tensor, rows: torch.Tensor) -> None:
        """Keeps a copy of `rows` of a micro-batch (those with a non-zero loss) for the window's backward passes."""
        if rows.numel():
            self._whole = (inputs, labels) if not self.parts and rows.numel() == 1 else None
            self.parts.append((select_rows(inputs, rows, labels.shape[0]), labels[rows]))

    def chunks(self, chunk_size: int, batch_norm: bool) -> list[tuple[dict, torch.Tensor]]:
        """The kept rows in as few near-equal chunks of at most `chunk_size` rows as possible (with `batch_norm`,
        none of a single row: a chunk may then exceed `chunk_size` by one, and a window with one violating sample
        takes that sample's whole micro-batch, as `"exact"` does)."""
        parts = [self._whole] if batch_norm and self._whole is not None else self.parts
        chunks = []
        for inputs, labels in _concatenate(parts):
            size = labels.shape[0]
            count = math.ceil(size / max(int(chunk_size), 1))
            if batch_norm:
                count = max(1, min(count, size // 2))
            for index in torch.arange(size, device=labels.device).tensor_split(count):
                chunks.append((select_rows(inputs, index, size), labels[index]))
        return chunks

    def flush(
        self,
        model: nn.Module,
        terms: LossTerms,
        *,
        chunk_size: int,
        backward: Callable[[torch.Tensor], None],
        no_sync: Callable[[], contextlib.AbstractContextManager],
        keep_last: bool,
    ) -> torch.Tensor | None:
        """Forwards every chunk with autograd and empties the gatherer.

        Every chunk but the last is backpropagated here with `backward`, inside `no_sync()` (no DDP gradient
        synchronisation); the last chunk's loss sum is returned for the caller's synchronised backward when
        `keep_last`, else backpropagated here too. Returns `None` when nothing is left to backpropagate.
        """
        chunks = self.chunks(chunk_size, uses_batch_norm(model))
        self.parts, self._whole = [], None
        last = None
        for index, (inputs, labels) in enumerate(chunks):
            final = keep_last and index == len(chunks) - 1
            with contextlib.nullcontext() if final else no_sync():
                logits = terms.match_label_size(logits_from_outputs(model(**inputs)), labels)
                loss_sum = terms.compute(logits, labels).loss_sum
                if final:
                    last = loss_sum
                else:
                    backward(loss_sum)
        return last


def ddp_participation(model: nn.Module, inputs: Mapping, batch_size: int) -> torch.Tensor:
    """A zero loss through one sample's DDP forward (see [`forward_micro_batch`])."""
    return _ddp_participation(model, inputs, torch.zeros(0, dtype=torch.long), batch_size)
