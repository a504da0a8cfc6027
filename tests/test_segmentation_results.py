"""The results block of `benchmarks/segmentation_results.py` from finished runs (no training): the verdict line, the
fit line, where HEM loses, the check that the fit evaluation reproduces each run's own pixel accuracy."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "segmentation_results.py"
LOSSES = {"ce": 0.50, "hem": 0.40, "hem+": 0.45, "dice": 0.48}  # mIoU of the 20-epoch runs


def load_script():
    spec = importlib.util.spec_from_file_location("segmentation_results_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_comparison(folder: Path, seed: int, mious: dict, train_accuracy: float, margin=None, mismatch=0.0):
    runs, convergence = [], {}
    for loss, miou in mious.items():
        run_dir = folder / f"{loss}-{seed}-{margin}"
        run_dir.mkdir(parents=True)
        pixel_accuracy = miou + 0.1
        (run_dir / "fit.json").write_text(
            json.dumps(
                {"train_pixel_accuracy": train_accuracy, "recomputed_eval_pixel_accuracy": pixel_accuracy + mismatch}
            )
        )
        history = [{"epoch": 19.5, "loss": 1.0, "hem/violating_fraction": 0.2}, {"epoch": 20.0, "loss": 0.9}]
        (run_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        runs.append(
            {
                "loss_name": loss,
                "seed": seed,
                "output_dir": str(run_dir),
                "metrics": {"eval_mean_iou": miou, "eval_overall_accuracy": pixel_accuracy},
                "margins": [1.0] if loss.startswith("hem") else None,
                "wall_time": 60.0,
                "margin_override": margin,
            }
        )
        convergence.setdefault(loss, []).append({"converged": True, "spread": 0.004, "window": 5})
    (folder / "compare_results.json").write_text(json.dumps({"runs": runs, "convergence": {"losses": convergence}}))


def build_tree(tmp_path: Path, change: float, train_accuracy: float, longer=True, mismatch=0.0):
    module = load_script()
    out = tmp_path / "out"
    for seed in module.SEEDS:
        write_comparison(out / module.default_name(seed), seed, LOSSES, train_accuracy, mismatch=mismatch)
        if longer:
            longer_mious = {loss: miou + change for loss, miou in LOSSES.items()}
            write_comparison(out / module.longer_name(seed), seed, longer_mious, train_accuracy)
    write_comparison(out / module.SWEEP_NAME, 0, {"hem": 0.47}, train_accuracy, margin=0.5)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "semantic_segmentation.md").write_text(f"# Page\n\n{module.PAGE_BEGIN}\nold\n{module.PAGE_END}\n\nEnd.\n")
    return module, out, docs


def block_of(docs: Path) -> str:
    return (docs / "semantic_segmentation.md").read_text()


def test_converged_and_fitting_runs_give_a_verdict(tmp_path):
    module, out, docs = build_tree(tmp_path, change=0.004, train_accuracy=0.97)
    module.write_segmentation_results(out, docs, reuse_only=True)
    assert block_of(docs).endswith(f"{module.PAGE_END}\n\nEnd.\n") and "\nold\n" not in block_of(docs)
    page = " ".join(block_of(docs).split())  # the block's prose is wrapped
    assert "**Every loss converged in every seed" in page
    assert "Every model fits its training scenes" in page
    assert "`hem` is below `ce` by 0.100, `dice` by 0.080" in page
    assert "| `hem μ=0.5` | 0.470 |" in page


def test_a_rerun_that_moves_the_mean_or_a_model_that_does_not_fit_is_said_at_the_top(tmp_path):
    module, out, docs = build_tree(tmp_path, change=0.05, train_accuracy=0.7)
    module.write_segmentation_results(out, docs, reuse_only=True)
    top = " ".join(block_of(docs).split(module.PAGE_BEGIN)[1].strip().split("\n\n")[0].split())
    assert top.startswith("**Not a converged verdict**")
    assert "**The models do not fit their training scenes**" in top
    assert "+0.050" in block_of(docs)
    page = " ".join(block_of(docs).split())
    assert f"per seed, the {module.LONGER_EPOCHS}-epoch rerun changed mIoU by `ce` +0.050, +0.050;" in page


def test_missing_rerun_is_named_and_not_a_verdict(tmp_path):
    module, out, docs = build_tree(tmp_path, change=0.0, train_accuracy=0.97, longer=False)
    module.write_segmentation_results(out, docs, reuse_only=True)
    page = " ".join(block_of(docs).split())
    assert "**Not a converged verdict**" in page
    assert f"**Not run** (out of time): {module.longer_name(0)}, {module.longer_name(1)}." in page


def test_fit_evaluation_must_reproduce_the_runs_pixel_accuracy(tmp_path):
    module, out, docs = build_tree(tmp_path, change=0.0, train_accuracy=0.97, mismatch=0.01)
    with pytest.raises(SystemExit, match="recomputed"):
        module.write_segmentation_results(out, docs, reuse_only=True)


def test_missing_comparisons_run_in_one_lane_per_seed(tmp_path, monkeypatch):
    """`--jobs 2` runs the seeds side by side; within a seed the plan's order holds, and finished folders are kept."""
    module = load_script()
    out = tmp_path / "out"
    write_comparison(out / module.default_name(0), 0, LOSSES, 0.97)
    ran = []
    monkeypatch.setattr(module, "_run", lambda command: ran.append(command[command.index("--output_dir") + 1]))
    module._run_missing(module._Plan(out), jobs=2)
    names = [Path(folder).name for folder in ran]
    assert module.default_name(0) not in names
    assert sorted(names) == sorted(
        [module.default_name(1), module.longer_name(0), module.longer_name(1), module.SWEEP_NAME]
    )
    assert names.index(module.longer_name(0)) < names.index(module.SWEEP_NAME)
    flags = " ".join(module._Plan(out).comparisons()[0][2])
    assert f"--config_name {module.MODEL_CONFIG} --min_scale 1 --max_scale 1" in flags
    assert "--lr_scheduler_type warmup_stable_decay" in flags
    assert (Path(__file__).resolve().parents[1] / module.MODEL_CONFIG / "config.json").is_file()
    with pytest.raises(ValueError, match="jobs must be a positive integer, got 0"):
        module.write_segmentation_results(out, tmp_path, jobs=0)


def test_the_schedule_ends_flat_over_the_convergence_window():
    """The verdict's schedule: full rate to half-way, cosine decay to 1% by three quarters, then 1% to the end."""
    from transformers.optimization import get_wsd_schedule

    module = load_script()
    for epochs in (module.EPOCHS, module.LONGER_EPOCHS):
        flags = module.schedule_flags(epochs)
        assert flags[:2] == ["--lr_scheduler_type", "warmup_stable_decay"]
        kwargs = json.loads(flags[3])
        total = 50 * epochs  # 800 training scenes, batch 16
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = get_wsd_schedule(optimizer, num_warmup_steps=math.ceil(0.05 * total), **kwargs)
        rates = []
        for _ in range(total):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        assert rates[total // 2 - 1] == 1.0 and rates[total // 2 + 5] < 1.0
        assert rates[int(0.75 * total) - 1] > 0.01
        assert all(rate == pytest.approx(0.01) for rate in rates[int(0.75 * total) :])
