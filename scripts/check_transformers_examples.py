#!/usr/bin/env python
"""Run transformers' own example scripts with the README's two-name change, offline, on tiny local models and data.

The change is exactly the README's: `TrainingArguments` -> `HEMConfig`, `Trainer` -> `HEMTrainer` (plus the import of
those two names). Each script is copied into a work folder, changed there, and run on a model built from a config
(`save_pretrained` into the work folder) and data files written there; with `--trainer both` the unchanged copy runs
too, for comparison. Nothing is downloaded: the Hub metrics the scripts load (`evaluate.load("accuracy")`,
`evaluate.load("seqeval")`) are hf_hem's offline drop-ins, copied into the working directory, where `evaluate.load`
looks first.

    python scripts/check_transformers_examples.py --examples ~/transformers/examples/pytorch

The examples are not part of this repository (get them with `git clone https://github.com/huggingface/transformers`).
`run_image_classification.py` needs `torchvision`; it is skipped when `torchvision` cannot be imported. The runs
check that the scripts work end to end (the exit code and the `eval_*` metrics they save); five epochs on a few
hundred synthetic examples say nothing about how well a loss learns.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "image": "image-classification/run_image_classification.py",
    "ner": "token-classification/run_ner.py",
    "glue": "text-classification/run_glue.py",
    "swag": "multiple-choice/run_swag.py",
}
COMMON_FLAGS = [
    "--do_train", "--do_eval", "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no",
    "--disable_tqdm", "true", "--logging_steps", "5", "--seed", "0",
    "--per_device_train_batch_size", "16", "--learning_rate", "1e-3",
]  # fmt: skip


def two_name_change(source: str, name: str) -> str:
    """The README's change: import `HEMConfig`/`HEMTrainer` instead of `TrainingArguments`/`Trainer`, use them."""
    changed, removed = re.subn(r"^\s+(Trainer|TrainingArguments),\n", "", source, flags=re.MULTILINE)
    changed, configs = re.subn(r"\bTrainingArguments\b", "HEMConfig", changed)
    changed, trainers = re.subn(r"\bTrainer\(", "HEMTrainer(", changed)
    if removed != 2 or not configs or not trainers:
        raise ValueError(
            f"{name}: expected `Trainer` and `TrainingArguments` imported one per line from transformers and used "
            f"once each; found {removed} import lines, {configs} TrainingArguments and {trainers} Trainer( uses."
        )
    return changed.replace(
        "\nfrom transformers.utils import check_min_version",
        "\nfrom hf_hem import HEMConfig, HEMTrainer\nfrom transformers.utils import check_min_version",
        1,
    )


def build_assets(root: Path) -> None:
    """Tiny models from configs and tiny data files, all under `root`."""
    import torch
    from transformers import (
        BertConfig,
        BertForMultipleChoice,
        BertForSequenceClassification,
        BertForTokenClassification,
        BertTokenizerFast,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    from hf_hem.data import load_digits_dataset
    from hf_hem.data.embedded_text import load_embedded_ner_dataset, load_embedded_sentiment_dataset

    torch.manual_seed(0)
    digits = load_digits_dataset(seed=0)  # digits 0-2 as PNG class folders
    for split, per_class in (("train", 40), ("validation", 10)):
        count = dict.fromkeys(range(3), 0)
        for example in digits[split]:
            label = example["label"]
            if label in count and count[label] < per_class:
                path = root / "images" / split / f"digit{label}" / f"{count[label]}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                example["image"].convert("RGB").save(path)
                count[label] += 1
    vit = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    ViTForImageClassification(vit).save_pretrained(root / "tiny-vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "tiny-vit")

    sentiment = load_embedded_sentiment_dataset(num_train=240, num_validation=60, seed=0)
    ner = load_embedded_ner_dataset(num_train=240, num_validation=60, seed=0)
    words = {"review", "is", "positive", "negative", "boring", "long"}
    rng = random.Random(0)
    for split in ("train", "validation"):
        rows = [{"sentence": row["sentence"], "label": row["label"]} for row in sentiment[split]]  # ids, as GLUE
        _write_csv(root / f"glue_{split}.csv", rows)
        choices = []  # SWAG's columns: the sentiment word is the right ending
        for row in rows:
            right = ("negative", "positive")[row["label"]]
            endings = [right, ("positive", "negative")[row["label"]], "boring", "long"]
            rng.shuffle(endings)
            endings_by_name = {f"ending{index}": ending for index, ending in enumerate(endings)}
            choices.append({"sent1": row["sentence"], "sent2": "the review is", **endings_by_name})
            choices[-1]["label"] = endings.index(right)
        _write_csv(root / f"swag_{split}.csv", choices)
        tag_names = ner[split].features["ner_tags"].feature.names
        with open(root / f"ner_{split}.json", "w", encoding="utf-8") as handle:
            for row in ner[split]:
                tags = [tag_names[tag] for tag in row["ner_tags"]]
                handle.write(json.dumps({"tokens": row["tokens"], "ner_tags": tags}) + "\n")
                words.update(token.lower() for token in row["tokens"])
        words.update(word for row in rows for word in row["sentence"].lower().split())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    tokenizer = BertTokenizerFast(vocab={word: index for index, word in enumerate(vocab)}, do_lower_case=True)
    bert = {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
    }
    for name, model_class, num_labels in (
        ("tiny-bert-seq", BertForSequenceClassification, 2),
        ("tiny-bert-tok", BertForTokenClassification, len(tag_names)),
        ("tiny-bert-mc", BertForMultipleChoice, 2),
    ):
        model_class(BertConfig(num_labels=num_labels, **bert)).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def script_flags(task: str, assets: Path, epochs: int) -> list[str]:
    data = {
        "image": ["--model_name_or_path", "tiny-vit", "--train_dir", "images/train", "--validation_dir",
                  "images/validation", "--remove_unused_columns", "false"],  # as the example's README runs it
        "ner": ["--model_name_or_path", "tiny-bert-tok", "--train_file", "ner_train.json", "--validation_file",
                "ner_validation.json"],
        "glue": ["--model_name_or_path", "tiny-bert-seq", "--train_file", "glue_train.csv", "--validation_file",
                 "glue_validation.csv"],
        "swag": ["--model_name_or_path", "tiny-bert-mc", "--train_file", "swag_train.csv", "--validation_file",
                 "swag_validation.csv", "--max_seq_length", "32"],
    }[task]  # fmt: skip
    paths = {"--model_name_or_path", "--train_dir", "--validation_dir", "--train_file", "--validation_file"}
    flags = [str(assets / value) if data[index - 1] in paths else value for index, value in enumerate(data)]
    return [*flags, "--num_train_epochs", str(epochs), *COMMON_FLAGS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", required=True, type=Path, help="transformers' examples/pytorch folder")
    parser.add_argument("--work_dir", type=Path, default=None, help="Where to write everything (default: a temp dir)")
    parser.add_argument("--tasks", default=",".join(SCRIPTS), help=f"Comma-separated, of {', '.join(SCRIPTS)}")
    parser.add_argument("--trainer", choices=["hem", "stock", "both"], default="hem")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="hem-examples-"))
    assets = work / "assets"
    if not assets.exists():
        build_assets(assets)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    variants = ["stock", "hem"] if args.trainer == "both" else [args.trainer]
    failures = 0
    for variant in variants:
        folder = work / variant
        # `evaluate.load("accuracy")` finds ./accuracy/accuracy.py before asking the Hub: hf_hem's offline drop-ins
        # for the Hub's `accuracy` and `seqeval` modules go there, so the scripts' metric lines stay unchanged.
        for metric in ("accuracy", "seqeval"):
            shutil.copytree(
                REPO_ROOT / "hf_hem" / "metrics" / "evaluate_modules" / metric, folder / metric, dirs_exist_ok=True
            )
        for task in args.tasks.split(","):
            source_path = args.examples / SCRIPTS[task]
            if task == "image" and importlib.util.find_spec("torchvision") is None:
                print(f"{variant:5s} {SCRIPTS[task]}: skipped (torchvision is not installed)")
                continue
            source = source_path.read_text(encoding="utf-8")
            script = folder / source_path.name
            script.write_text(two_name_change(source, source_path.name) if variant == "hem" else source)
            output_dir = work / "out" / variant / task
            command = [sys.executable, str(script), *script_flags(task, assets, args.epochs)]
            command += ["--output_dir", str(output_dir)]
            output_dir.parent.mkdir(parents=True, exist_ok=True)
            log_path = work / "out" / f"{variant}-{task}.log"
            with open(log_path, "w", encoding="utf-8") as log:
                code = subprocess.run(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
            results_path = output_dir / "all_results.json"
            metrics = json.loads(results_path.read_text()) if results_path.exists() else {}
            shown = {key: round(value, 4) for key, value in metrics.items() if key.startswith("eval_") and (
                isinstance(value, float) and "runtime" not in key and "per_second" not in key)}  # fmt: skip
            failures += code != 0
            print(f"{variant:5s} {SCRIPTS[task]}: exit {code} {shown or ''} (log: {log_path})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
