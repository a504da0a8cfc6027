"""What `HEMTrainer` needs to know about how it was launched: padded evaluation batches, launches that went wrong,
and the sharded engines (FSDP, DeepSpeed). See docs/trainer.md, "Several processes and gradient accumulation".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping


logger = logging.getLogger(__name__)

#: Environment variables a launcher (`accelerate launch`, `torchrun`, MPI) sets, reported when a launch went wrong.
LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def real_rows_in_batch(gradient_state, process_index: int, num_processes: int, local_rows: int) -> int:
    """How many leading rows of this process's batch are real samples rather than padding.

    With several processes, accelerate completes the last global batch of a dataset whose length is not a multiple of
    it with samples from the start of the dataset, so every process gets a full batch (`even_batches`). The real
    samples come first in process order: of the global batch (the processes' batches one after the other) exactly the
    first `gradient_state.remainder` rows are real, which is what `Accelerator.gather_for_metrics` keeps for
    `compute_metrics`. Every process's batch has the same size there, so this process's real rows are the first
    `remainder - process_index * local_rows` (clamped to `[0, local_rows]`).

    Args:
        gradient_state (`accelerate.state.GradientState`): the accelerator's state of the active dataloader.
        process_index (`int`): this process's rank.
        num_processes (`int`): the number of processes.
        local_rows (`int`): the number of rows (samples, images, sequences) of this process's batch.

    Returns:
        `local_rows` except in the padded last batch.
    """
    if num_processes <= 1 or not gradient_state.end_of_dataloader:
        return local_rows
    remainder = gradient_state.remainder
    if remainder is None or remainder <= 0:  # -1: no length known (nothing is dropped); 0: no padding
        return local_rows
    return min(max(remainder - process_index * local_rows, 0), local_rows)


def launch_mismatch(environ: Mapping[str, str], num_processes: int) -> str | None:
    """Why this launch is several independent trainings rather than one distributed training, or `None`.

    `accelerate launch --multi_gpu --num_processes 2` (or `torchrun`) on a machine without GPUs, when the script is
    not given `--use_cpu true` (`TrainingArguments.use_cpu`), starts two processes with `WORLD_SIZE=2` in their
    environment; accelerate finds no device to distribute over and each process trains alone, on the whole data
    set, into the same output folder.
    """
    try:
        launched = int(environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if launched <= 1 or num_processes != 1:
        return None
    values = ", ".join(f"{name}={environ[name]}" for name in LAUNCH_VARIABLES if name in environ)
    return (
        f"The launcher started {launched} processes ({values}), but each trains as a single process "
        "(accelerate found nothing to distribute over: distributed training False): every process would train the "
        "whole model on the whole data set by itself and write into the same output_dir, overwriting the others' "
        "checkpoints. On a machine without "
        "GPUs keep `accelerate launch --multi_gpu --num_processes N` and pass `--use_cpu true` to the script "
        "(`use_cpu=True` in `HEMConfig`), or export ACCELERATE_USE_CPU=true, so the processes train together over "
        "gloo (accelerate's own `--cpu` flag starts one process); with GPUs, check that every process sees one "
        "(`nvidia-smi`, CUDA_VISIBLE_DEVICES)."
    )


def check_launch(environ: Mapping[str, str], num_processes: int) -> None:
    """Raises the [`launch_mismatch`] error, if any: the independent trainings would overwrite each other."""
    message = launch_mismatch(environ, num_processes)
    if message is not None:
        raise RuntimeError(message)


def sharded_engine_name(*, fsdp: bool, deepspeed: bool) -> str | None:
    """`"FSDP"`, `"DeepSpeed"` or `None` (DDP or one process)."""
    return "FSDP" if fsdp else "DeepSpeed" if deepspeed else None


def check_sharded_engine(engine: str | None, *, skip_zero_loss: str, gradient_accumulation_steps: int) -> bool:
    """Whether exact accumulation (gradients rescaled after the window) is used; refuses what cannot work.

    Under FSDP and DeepSpeed the trainer does not touch gradients: each micro-batch's loss is normalised by its global
    count before the backward pass (one all-reduce per micro-batch), which is exact for one micro-batch per step.

    * DeepSpeed steps its optimizer inside the backward pass, so gradients cannot be rescaled after the window.
    * FSDP keeps each process's shard of the gradients (as DTensors or flat parameters, possibly offloaded to the
      CPU); rescaling them would be right in principle but cannot be tested here, so the loss is scaled instead.
    * `skip_zero_loss` needs a selection forward pass of the unwrapped model, whose parameters are sharded under both
      engines, and a choice per process of whether to select, which would desynchronise their collectives: refused.

    Returns:
        `True` (exact accumulation) for DDP and one process, `False` under FSDP and DeepSpeed.

    Raises:
        ValueError: `skip_zero_loss` under FSDP or DeepSpeed.
    """
    if engine is None:
        return True
    if skip_zero_loss != "off":
        raise ValueError(
            f"skip_zero_loss={skip_zero_loss!r} is not supported under {engine}: its selection pass runs the "
            f"unwrapped model, whose parameters {engine} shards, and would make the processes' collectives diverge. "
            "Use skip_zero_loss='off' with FSDP/DeepSpeed, or train with plain DDP (docs/trainer.md)."
        )
    if gradient_accumulation_steps > 1:
        logger.warning(
            f"{engine} with gradient_accumulation_steps={gradient_accumulation_steps}: each micro-batch is its own "
            "HEM batch (the micro-batch losses, each normalised by its own global count, are averaged); exact "
            "accumulation over the window needs plain DDP or one process (docs/trainer.md)."
        )
    return False


def check_data_parallel_only(parallelism_config) -> None:
    """Refuses tensor, context and sequence parallelism (accelerate's `ParallelismConfig`).

    The trainer's counts and statistics are summed over all processes as if each held its own samples, and the loss
    is multiplied by the number of processes to undo the gradient average. When several processes share the same
    samples (a tensor-, context- or sequence-parallel group), both would be wrong, silently.

    Raises:
        ValueError: `tp_size`, `cp_size` or `sp_size` above 1.
    """
    if parallelism_config is None:
        return
    shared = {
        name: getattr(parallelism_config, name, None)
        for name in ("tp_size", "cp_size", "sp_size")
        if (getattr(parallelism_config, name, None) or 1) > 1
    }
    if shared:
        values = ", ".join(f"{name}={value}" for name, value in shared.items())
        raise ValueError(
            f"HEMTrainer supports data parallelism only (DDP, FSDP, DeepSpeed ZeRO); got {values}: processes that "
            "share samples would be counted more than once in the loss's normaliser and the hem/* statistics."
        )
