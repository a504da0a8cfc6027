"""HEM vs cross-entropy for a tiny causal LM trained from its config on the embedded text (CPU, offline).

Both losses train the same model (a 2-layer Llama of width 64 from `hf_hem.pipelines.causal_lm.scratch_causal_lm`,
tied embeddings) with the same hyper-parameters, seeds and data: `load_embedded_lm_dataset` (2,000 training
sentences, 400 held-out sentences that do not occur in the training text) and a word-level tokenizer built from the
training text (the same in every process). Each run is one `HEMTrainer` run (`loss_name="ce"` or `"hem"`); HEM takes
the default causal-LM margin `HEMConfig.causal_lm_margin` unless `--margins` lists others.

    python benchmarks/lm_compare.py                      # CE and HEM (margin 1.0), seeds 0 and 1, 12 epochs
    python benchmarks/lm_compare.py --margins 0.25 1 4 --seeds 0   # HEM's margin on tokens
    python benchmarks/lm_compare.py --quick              # a smoke run (2 epochs, 300 sentences, one seed)

Reports per run and as the mean over seeds: held-out next-token top-1 / top-5 accuracy, the ECE of the softmax's
top-1 probability (15 bins), the softmax's mean negative log-likelihood and perplexity (for a HEM model not a fitted
likelihood: not comparable with CE's), the training time, learning curves (held-out top-1 per epoch, training loss)
and greedy continuations of a few prompts. Convergence: a run counts as converged when its held-out top-1 changed by
less than `--converged_within` (default 0.01) over the last third of its epochs; the table says which did.
Writes `<output_dir>/lm_compare.json`, `lm_compare.md` and `learning_curves.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


PROMPTS = ("the film is", "the acting was really", "John Smith works for", "Shares in", "It rained in")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", default=["ce", "hem"], choices=["ce", "hem"])
    parser.add_argument("--margins", nargs="+", type=float, default=[1.0], help="HEM margins (causal_lm_margin)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=float, default=12.0)
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_validation", type=int, default=400)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--converged_within", type=float, default=0.01)
    parser.add_argument("--output_dir", default="docs/results/lm")
    parser.add_argument("--quick", action="store_true", help="2 epochs on 300 sentences, seed 0: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.num_train, args.num_validation, args.seeds = 2.0, 300, 100, [0]
    return args


def run_one(args, data, tokenizer, loss_name: str, margin: float | None, seed: int, workdir: Path) -> dict:
    import torch
    from transformers import DataCollatorForLanguageModeling

    from hf_hem import HEMConfig, HEMTrainer
    from hf_hem.pipelines.causal_lm import compute_clm_metrics, scratch_causal_lm, top_predictions

    def tokenize(batch):
        encoded = tokenizer(batch["text"])
        encoded["input_ids"] = [ids + [tokenizer.eos_token_id] for ids in encoded["input_ids"]]
        encoded["attention_mask"] = [mask + [1] for mask in encoded["attention_mask"]]
        return encoded

    train = data["train"].map(tokenize, batched=True, remove_columns=["text"])
    validation = data["validation"].map(tokenize, batched=True, remove_columns=["text"])
    model = scratch_causal_lm(tokenizer, "llama", 128, args.hidden_size, args.num_layers, seed=seed)
    extra = {} if margin is None else {"causal_lm_margin": margin}
    config = HEMConfig(
        output_dir=str(workdir / f"{loss_name}-{margin}-{seed}"),
        loss_name=loss_name,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        num_train_epochs=args.epochs,
        learning_rate=args.learning_rate,
        weight_decay=0.01,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128,
        eval_strategy="epoch",
        logging_strategy="epoch",
        seed=seed,
        data_seed=seed,
        **extra,
    )
    trainer = HEMTrainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        compute_metrics=compute_clm_metrics,
        preprocess_logits_for_metrics=top_predictions,
    )
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    history = trainer.state.log_history
    curve = [
        {"epoch": e["epoch"], "accuracy": e["eval_accuracy"], "top5_accuracy": e["eval_top5_accuracy"]}
        for e in history
        if "eval_accuracy" in e
    ]
    train_loss = [{"epoch": e["epoch"], "loss": e["loss"]} for e in history if "loss" in e]
    last_eval = next(entry for entry in reversed(history) if "eval_accuracy" in entry)
    final = {key[len("eval_") :]: value for key, value in last_eval.items() if key.startswith("eval_")}
    tail = [point["accuracy"] for point in curve[-max(2, len(curve) // 3) :]]
    model.eval()
    continuations = {}
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]])
            out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            continuations[prompt] = tokenizer.decode(out[0], skip_special_tokens=False)
    return {
        "loss": loss_name,
        "margin": margin,
        "seed": seed,
        "accuracy": final["accuracy"],
        "top5_accuracy": final["top5_accuracy"],
        "ece": final["ece"],
        "mean_confidence": final["mean_confidence"],
        "nll": final["nll"],
        "perplexity": final["perplexity"],
        "train_seconds": train_seconds,
        "converged": bool(max(tail) - min(tail) < args.converged_within),
        "last_third_change": float(max(tail) - min(tail)),
        "curve": curve,
        "train_loss": train_loss,
        "continuations": continuations,
    }


def summary_table(runs: list[dict]) -> str:
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["loss"], run["margin"]), []).append(run)
    lines = [
        "| loss | margin | seeds | top-1 | top-5 | ECE | mean top-1 prob. | softmax NLL (ppl) | train s | converged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (loss, margin), members in groups.items():

        def stat(key, digits=3, members=members):
            values = np.array([m[key] for m in members], dtype=float)
            spread = f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else ""
            return f"{values.mean():.{digits}f}{spread}"

        ppl = float(np.mean([m["perplexity"] for m in members]))
        lines.append(
            f"| {loss} | {'-' if margin is None else margin} | {len(members)} | {stat('accuracy')} | "
            f"{stat('top5_accuracy')} | {stat('ece')} | {stat('mean_confidence')} | {stat('nll', 2)} ({ppl:.1f}) | "
            f"{stat('train_seconds', 0)} | "
            f"{sum(m['converged'] for m in members)}/{len(members)} |"
        )
    return "\n".join(lines)


def plot_curves(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        margin = "" if run["margin"] is None else f" mu={run['margin']}"
        label = f"{run['loss']}{margin} seed {run['seed']}"
        left.plot([p["epoch"] for p in run["curve"]], [p["accuracy"] for p in run["curve"]], marker="o", label=label)
        right.plot([p["epoch"] for p in run["train_loss"]], [p["loss"] for p in run["train_loss"]], label=label)
    left.set(xlabel="epoch", ylabel="held-out next-token top-1", title="Held-out accuracy")
    right.set(xlabel="epoch", ylabel="training loss (own loss)", title="Training loss", yscale="log")
    left.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tempfile

    import torch

    from hf_hem.pipelines.causal_lm import build_word_tokenizer, load_embedded_lm_dataset

    torch.set_num_threads(1)  # tiny models: one thread is fastest and steadiest on a shared machine
    data = load_embedded_lm_dataset(num_train=args.num_train, num_validation=args.num_validation)
    tokenizer = build_word_tokenizer(data["train"]["text"])
    print(f"vocabulary {len(tokenizer)} tokens; {args.num_train} training / {args.num_validation} held-out sentences")
    configurations = [(loss, None) if loss == "ce" else (loss, margin) for loss in args.losses for margin in (
        args.margins if loss == "hem" else [None]
    )]  # fmt: skip
    runs = []
    with tempfile.TemporaryDirectory() as workdir:
        # Interleaved by seed, so that a change in machine load falls on both losses alike.
        for seed in args.seeds:
            for loss, margin in configurations:
                run = run_one(args, data, tokenizer, loss, margin, seed, Path(workdir))
                runs.append(run)
                print(
                    f"{loss} margin={margin} seed={seed}: top-1 {run['accuracy']:.3f} "
                    f"top-5 {run['top5_accuracy']:.3f} "
                    f"ECE {run['ece']:.3f} NLL {run['nll']:.2f} {run['train_seconds']:.0f}s "
                    f"converged={run['converged']} (last-third change {run['last_third_change']:.3f})",
                    flush=True,
                )
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    table = summary_table(runs)
    lines = [table, "", f"Greedy continuations (seed {args.seeds[0]}):", ""]
    for run in runs:
        if run["seed"] == args.seeds[0]:
            lines.append(f"* {run['loss']} (margin {run['margin']}):")
            lines += [f"  * `{text}`" for text in run["continuations"].values()]
    report = "\n".join(lines)
    print(report)
    settings = {key: value for key, value in vars(args).items()}
    (output / "lm_compare.json").write_text(json.dumps({"settings": settings, "runs": runs}, indent=2))
    (output / "lm_compare.md").write_text(report + "\n")
    plot_curves(runs, output / "learning_curves.png")


if __name__ == "__main__":
    main()
