"""Several CPU processes (DDP over gloo) behave as one: the gradients of one process on the concatenated batch, the
evaluation metrics of one process, the weights of one process when the two processes are two "machines"; and a
launch that starts two processes accelerate does not distribute is refused.

`accelerate launch --multi_gpu --num_processes 2` starts two real ranks even without GPUs when the script runs on
the CPU (`use_cpu=True`); the launched scripts are in `tests/scripts/`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import ViTConfig, ViTForImageClassification  # noqa: E402


try:  # tests/ may or may not become a package
    from .helpers import free_port, launch_two_processes, offline_env, script_main, with_repo_on_pythonpath
    from .helpers import tiny_vit as shared_tiny_vit
except ImportError:
    from helpers import free_port, launch_two_processes, offline_env, script_main, with_repo_on_pythonpath
    from helpers import tiny_vit as shared_tiny_vit

from hf_hem.losses import cross_entropy_loss, hem_loss  # noqa: E402
from hf_hem.margins import margins_from_counts  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "tests" / "scripts" / "ddp_grad_check.py"
MARGIN_SCALE = 4.0  # as in the script
STOCK_MARGIN = 0.6
LABELS = [0, 1, 0, 2, 1, 0, 2, 0]

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


def tiny_vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=8,
        patch_size=4,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = ViTForImageClassification(config)
    with torch.no_grad():
        # Class 0 starts far ahead: its samples satisfy the margin, the others violate it, so the count of
        # violating samples differs between the ranks and the cross-process sum matters.
        model.classifier.bias.copy_(torch.tensor([3.0, 0.0, 0.0]))
    return model


def reference_gradients(model, pixel_values, labels, loss_name):
    """Gradients of one process on the whole (concatenated) batch, and its loss."""
    model.zero_grad()
    logits = model(pixel_values=pixel_values).logits
    counts = np.bincount(labels.numpy(), minlength=3)
    if loss_name == "ce":
        loss = cross_entropy_loss(logits, labels)
        margins = None
    elif loss_name == "stock_hem":
        loss = hem_loss(logits, labels, STOCK_MARGIN)
        margins = torch.tensor([STOCK_MARGIN])
    else:
        margins = margins_from_counts(counts, scale=MARGIN_SCALE, per_class=loss_name == "hem_plus")
        loss = hem_loss(logits, labels, margins if loss_name == "hem_plus" else float(margins[0]))
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}, float(loss.detach()), margins


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_concatenated_batch(tmp_path):
    model = tiny_vit()
    model.config.to_json_file(tmp_path / "config.json")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(len(LABELS), 3, 8, 8, generator=generator)
    labels = torch.tensor(LABELS)
    torch.save({"pixel_values": pixel_values, "labels": labels}, tmp_path / "data.pt")

    launch_two_processes(SCRIPT, tmp_path)

    model.train()
    for case in ("hem", "hem_plus", "ce", "stock_hem"):
        saved = torch.load(tmp_path / f"{case}.pt")
        assert saved["world_size"] == 2
        rank_labels = [torch.load(tmp_path / f"{case}_rank{rank}_labels.pt") for rank in (0, 1)]
        assert all(r.numel() == 4 for r in rank_labels)
        assert sorted(torch.cat(rank_labels).tolist()) == sorted(LABELS), "the ranks must split the batch"
        expected, expected_loss, margins = reference_gradients(model, pixel_values, labels, case)
        if margins is not None:
            torch.testing.assert_close(saved["margins"], margins)
        for name, gradient in expected.items():
            torch.testing.assert_close(saved["gradients"][name], gradient, rtol=0, atol=1e-6, msg=f"{case}: {name}")
        # The logged loss is the loss of the global batch, not a per-rank or rescaled value.
        assert saved["logged_loss"] == pytest.approx(expected_loss, rel=1e-6), case


ACCUMULATION_SCRIPT = REPO_ROOT / "tests" / "scripts" / "ddp_accumulation_check.py"


@pytest.mark.slow
def test_two_processes_with_accumulation_and_skipping_are_exact(tmp_path):
    """2 processes x 2 micro-batches x 16 = one process on the batch of 64, for HEM, HEM+, CE, exact skipping and
    exact skipping with the window's violating samples gathered (`skip_gather_window`).

    Global batches 0 and 2 (rank 0's two micro-batches) hold only satisfied class-0 images: rank 0 has nothing to
    backpropagate, rank 1 does; the step must neither hang nor average wrongly.
    """
    model = tiny_vit()
    model.config.to_json_file(tmp_path / "config.json")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(64, 3, 8, 8, generator=generator) * 0.5
    mixed = torch.randint(0, 3, (16,), generator=generator)
    others = torch.randint(1, 3, (16,), generator=generator)
    labels = torch.cat([torch.zeros(16, dtype=torch.long), mixed, torch.zeros(16, dtype=torch.long), others])
    torch.save({"pixel_values": pixel_values, "labels": labels}, tmp_path / "data.pt")
    launch_two_processes(ACCUMULATION_SCRIPT, tmp_path)

    model.train()
    with torch.no_grad():
        counts = np.bincount(labels.numpy(), minlength=3)
        mu = float(margins_from_counts(counts, scale=MARGIN_SCALE, per_class=False)[0])
        per_sample = hem_loss(model(pixel_values=pixel_values).logits, labels, mu, reduction="none")
    assert (per_sample[:16] == 0).all() and (per_sample[32:48] == 0).all() and (per_sample > 0).any()
    cases = (("hem", "hem"), ("hem_plus", "hem_plus"), ("ce", "ce"), ("hem_exact", "hem"), ("hem_window", "hem"))
    for case, reference_case in cases:
        saved = torch.load(tmp_path / f"{case}.pt")
        assert saved["world_size"] == 2
        rank0 = torch.load(tmp_path / f"{case}_rank0_labels.pt")
        torch.testing.assert_close(rank0, torch.cat([labels[:16], labels[32:48]]))  # the layout the test relies on
        expected, expected_loss, _ = reference_gradients(model, pixel_values, labels, reference_case)
        for name, gradient in expected.items():
            difference = (saved["gradients"][name] - gradient).norm() / gradient.norm().clamp_min(1e-12)
            assert difference < 1e-6 or (saved["gradients"][name] - gradient).abs().max() < 1e-7, (case, name)
        assert saved["logged_loss"] == pytest.approx(expected_loss, rel=1e-6), case
    assert torch.load(tmp_path / "hem_exact.pt")["skipped_fraction"] >= 0.5
    assert torch.load(tmp_path / "hem_window.pt")["skipped_fraction"] >= 0.5


EVALUATION_SCRIPT = REPO_ROOT / "tests" / "scripts" / "ddp_eval_check.py"


@pytest.mark.slow
def test_evaluation_metrics_do_not_depend_on_the_number_of_processes(tmp_path):
    """45 evaluation samples on 2 processes x 8: accelerate pads the last batch with 3 duplicates, which
    `compute_metrics` never sees; `eval_loss` and `eval_hem/*` must leave them out too and equal one process."""
    launch_two_processes(EVALUATION_SCRIPT, tmp_path)
    script_main(EVALUATION_SCRIPT)(str(tmp_path))
    one = json.loads((tmp_path / "metrics_1.json").read_text())
    two = json.loads((tmp_path / "metrics_2.json").read_text())
    for prefix in ("eval", "test"):  # evaluate() and predict()
        assert one[prefix][f"{prefix}_samples"] == two[prefix][f"{prefix}_samples"] == 45
        keys = [f"{prefix}_loss"] + [key for key in one[prefix] if key.startswith(f"{prefix}_hem/")]
        assert len(keys) == 5, keys
        for key in keys:
            assert two[prefix][key] == pytest.approx(one[prefix][key], rel=1e-6, abs=1e-7), key
        # The statistics are those of the 45 samples compute_metrics sees.
        assert two[prefix][f"{prefix}_hem/accuracy"] == pytest.approx(two[prefix][f"{prefix}_accuracy"], abs=1e-12)
        assert 0 < one[prefix][f"{prefix}_hem/violating_fraction"] < 1


LAUNCH_SCRIPT = REPO_ROOT / "tests" / "scripts" / "launch_without_cpu_flag.py"


@pytest.mark.slow
def test_multi_gpu_launch_on_a_cpu_machine_is_refused(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2`, no GPUs, the script not given `--use_cpu true`: two
    processes that would each train alone into the same folder. Both stop at `HEMTrainer(...)`, naming the values
    and the fix."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(LAUNCH_SCRIPT), str(tmp_path),
    ]  # fmt: skip
    env = with_repo_on_pythonpath(offline_env(CUDA_VISIBLE_DEVICES=""), tests_dir=True)
    env.pop("ACCELERATE_USE_CPU", None)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert not (tmp_path / "trained").exists()
    for expected in ("RuntimeError: The launcher started 2 processes", "WORLD_SIZE=2", "RANK=1", "--use_cpu true"):
        assert expected in result.stderr, (expected, result.stderr[-3000:])


TWO_MACHINE_SCRIPT = REPO_ROOT / "tests" / "scripts" / "two_machine_train.py"


@pytest.mark.slow
def test_two_machines_train_the_weights_of_one_process(tmp_path):
    """Two "machines" on this host, one process each (`--multi_gpu --num_machines 2`, rendezvous at 127.0.0.1;
    the script sets `use_cpu=True`, so they are CPU processes over gloo), train three HEM
    steps of global batch 16; the weights equal those of one process with batches of 16."""
    port = str(free_port())
    env = with_repo_on_pythonpath(offline_env(CUDA_VISIBLE_DEVICES=""), tests_dir=True)

    def launch_command(rank: int) -> list[str]:
        return [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
            "--machine_rank", str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
            "--main_process_port", port, "--mixed_precision", "no", "--dynamo_backend", "no",
            str(TWO_MACHINE_SCRIPT), str(tmp_path),
        ]  # fmt: skip

    # Each machine writes to a file, not a pipe: waiting on one machine's pipe while the other's fills up would stall
    # the other, and the first with it at the next collective (it once timed out at teardown that way).
    logs = [tmp_path / f"machine{rank}.log" for rank in (0, 1)]
    machines = []
    try:
        for rank, log in zip((0, 1), logs):
            with log.open("w") as sink:
                machines.append(subprocess.Popen(launch_command(rank), env=env, stdout=sink, stderr=subprocess.STDOUT))
        for machine in machines:
            machine.wait(timeout=300)
    finally:
        for machine in machines:
            machine.kill()
    for machine, log in zip(machines, logs):
        assert machine.returncode == 0, log.read_text()[-3000:]
    # Two nodes of one process each: both processes are the first on their machine.
    placements = [json.loads((tmp_path / f"placement_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert placements == [{"process_index": r, "local_process_index": 0, "world_size": 2} for r in (0, 1)]

    script_main(TWO_MACHINE_SCRIPT)(str(tmp_path))
    one, two = torch.load(tmp_path / "weights_1.pt"), torch.load(tmp_path / "weights_2.pt")
    initial = shared_tiny_vit(seed=1).state_dict()  # the script's starting point
    assert max(float((one[name] - initial[name]).abs().max()) for name in one) > 1e-2  # training moved the weights
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=0, atol=1e-6, msg=name)
    logs = [json.loads((tmp_path / f"log_{world}.json").read_text()) for world in (1, 2)]
    fractions = [[entry["hem/violating_fraction"] for entry in log if "loss" in entry] for log in logs]
    assert fractions[0] == fractions[1] and min(fractions[0]) < 1  # the count of violating samples varied
