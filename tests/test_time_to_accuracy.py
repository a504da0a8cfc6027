"""`benchmarks/time_to_accuracy.py --quick` runs and prints the expected tables (a smoke test: no timing claims)."""

import importlib.util
import json
import os
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "time_to_accuracy.py"


def load_script():
    spec = importlib.util.spec_from_file_location("time_to_accuracy_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 16 tiny trainings: ~30 s on an idle CPU
def test_quick_run_prints_every_mode_and_length(tmp_path, capsys):
    script = load_script()
    modes = ["ce/off", "hem/exact"]
    argv = ["--quick", "--settings", "skip_bench,large", "--seeds", "2", "--fractions", "0.5,1"]
    argv += ["--modes", ",".join(modes), "--json", str(tmp_path / "run.json"), "--plot", str(tmp_path / "plot.png")]
    summaries = script.main(argv)
    output = capsys.readouterr().out
    for setting in ("skip_bench", "large"):
        assert f"## {setting}:" in output
        entries = summaries[setting]["modes"]
        assert list(entries) == modes
        for mode in modes:
            # One point per schedule length (1 and 2 epochs of the quick setting), each from both seeds.
            assert [point["epochs"] for point in entries[mode]["points"]] == [1, 2]
            assert f"| {mode} | 1 |" in output and f"| {mode} | 2 |" in output
        assert entries["ce/off"]["ratio"] == pytest.approx(1.0)  # CE's time to its own target
        assert 0.0 <= summaries[setting]["target"] <= summaries[setting]["ce_best"] <= 1.0
    assert output.count("CPU time to target") == 2
    assert (tmp_path / "plot.png").stat().st_size > 0
    saved = json.loads((tmp_path / "run.json").read_text())
    assert {len(runs) for runs in saved["results"]["large"]["hem/exact"].values()} == {2}
    # The saved runs give the same report again, pooled from the file; and from the printed log lines.
    assert script.main(["--from_json", str(tmp_path / "run.json")]).keys() == summaries.keys()
    (tmp_path / "run.log").write_text(output)
    from_log = script.main(["--from_json", str(tmp_path / "run.log")])
    assert from_log["large"]["target"] == pytest.approx(summaries["large"]["target"], abs=1e-4)


def test_bad_arguments_are_named():
    script = load_script()
    with pytest.raises(ValueError, match="must include ce/off"):
        script.main(["--quick", "--modes", "hem/exact"])
    with pytest.raises(ValueError, match="--fractions"):
        script.main(["--quick", "--fractions", "0,1.5"])
    with pytest.raises(ValueError, match="unknown"):
        script.main(["--quick", "--settings", "imagenet"])
