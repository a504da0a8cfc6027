"""The one report writer of the experiments layer: `report.md` of `hf-hem compare` and of `hf-hem benchmark`.

A report is a list of sections, each a function of the [`ReportContext`] returning its markdown lines (none to leave
it out); [`write_report`] joins them. [`COMPARE_SECTIONS`] and [`BENCHMARK_SECTIONS`] are the layouts of the two
front doors; a task adds its own tables and prose through [`~hf_hem.experiments.task.Task.sections`]. A report with
any run that did not converge (or could not be judged) starts with one line that says so and names them
([`~hf_hem.experiments.summary.Summary.smoke_line`]), and every verdict names such a loss with its count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .plots.curves import plot_learning_curves, plot_margin_sweep
from .records import RunRecord, jsonable
from .stats import MISSING_VALUE, comparison_table, format_mean_std, format_p_value, markdown_table, mean_std
from .summary import Summary
from .task import Metric, Plot, Task


__all__ = [
    "BENCHMARK_SECTIONS",
    "COMPARE_SECTIONS",
    "LEARNING_CURVES_FILE",
    "MARGIN_SWEEP_FILE",
    "ReportContext",
    "Section",
    "draw_plots",
    "headline_table",
    "write_report",
]

#: The learning-curve plot of every report.
LEARNING_CURVES_FILE = "learning_curves.png"
#: The margin-sweep plot of a report with `--margins`.
MARGIN_SWEEP_FILE = "margin_sweep.png"


@dataclass
class ReportContext:
    """Everything a section is written from.

    Attributes:
        task ([`~hf_hem.experiments.task.Task`]): The task of the runs.
        settings: The task's settings.
        records (`list[RunRecord]`): Every run, all seeds.
        summary ([`~hf_hem.experiments.summary.Summary`]): Their statistics and convergence.
        plots (`list[Plot]`): The plots already written to `output_dir`.
        output_dir (`Path`): The folder of `report.md`.
        setup (`dict`): What was compared (compare: [`~hf_hem.experiments.tasks.ScriptTask.describe`] and the
            command); empty when unknown.
        command (`str`, *optional*): The command that reproduces the report.
        facts (`dict`): What else the front door tells its layout (the benchmark: version, time, reused runs).
    """

    task: Task
    settings: object
    records: list[RunRecord]
    summary: Summary
    plots: list[Plot]
    output_dir: Path
    setup: dict = field(default_factory=dict)
    command: str | None = None
    facts: dict = field(default_factory=dict)

    def plot(self, section: str) -> list[Plot]:
        return [plot for plot in self.plots if plot.section == section]


#: A section of `report.md`: its markdown lines (no leading or trailing blank line), or none to leave it out.
Section = Callable[[ReportContext], list[str]]


def write_report(context: ReportContext, sections: Sequence[Section], file_name: str = "report.md") -> Path:
    """Write the sections of `context` to `output_dir/file_name`, one blank line between sections; a report with an
    unconverged run starts with the line that says so."""
    lines: list[str] = []
    smoke = context.summary.smoke_line()
    if smoke:
        lines += [smoke]
    for section in sections:
        block = section(context)
        if block:
            lines += ([""] if lines else []) + block
    path = Path(context.output_dir) / file_name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------------------
# Plots every report has


def _rule_samples(records: Sequence[RunRecord], setup: dict) -> float | None:
    """S of the paper's margin rule sqrt(2000 / S) for a sweep's reference line: the training samples, unless the
    command changed the rule (`--margin_scale`, `--num_margin_samples`) or S is unknown."""
    command = str(setup.get("command", ""))
    if "--margin_scale" in command or "--num_margin_samples" in command:
        return None
    return setup.get("num_train_samples") or records[0].metrics.get("train_samples")


def draw_plots(
    task: Task,
    records: Sequence[RunRecord],
    summary: Summary,
    output_dir: Path,
    settings,
    setup: dict | None = None,
    every_curve: bool = False,
    curves_caption: str = "Learning curves",
) -> list[Plot]:
    """The learning curves, the margin sweep (when a run has a swept margin), then the task's own plots.

    Args:
        every_curve (`bool`, defaults to `False`): Give every recorded curve a panel (the benchmark's layout), not
            only the task's `curve_panels` and `curve_key`.
    """
    output_dir = Path(output_dir)
    panels = list(task.curve_panels)
    if task.curve_key not in {panel.key for panel in panels}:
        panels.append(Metric(task.curve_key, task.curve_label))
    if every_curve:
        for record in records:
            for key in record.curves:
                if key not in {panel.key for panel in panels} and key != "learning_rate":
                    panels.append(task.metric(key))
    curves: dict[str, list[dict]] = {}
    for record in records:
        curves.setdefault(record.label, []).append(record.curves)
    plots = []
    path = plot_learning_curves(
        curves, [(panel.key, panel.label) for panel in panels], output_dir / LEARNING_CURVES_FILE
    )
    if path is not None:
        plots.append(Plot(path, curves_caption, "curves"))
    if any(record.margin is not None for record in records) and task.sweep_metrics:
        samples = _rule_samples(records, setup or {})
        path = plot_margin_sweep(records, output_dir / MARGIN_SWEEP_FILE, task.sweep_metrics, samples)
        if path is not None:
            plots.append(Plot(path, "Metrics against the margin", "sweep"))
    return plots + task.plots(summary, records, output_dir, settings)


# --------------------------------------------------------------------------------------------------------------------
# Shared pieces


def _attempts_note(records: Sequence[RunRecord]) -> str | None:
    """Which runs `--until_converged` trained more than once, with their epochs."""
    grown = [record for record in records if len(record.attempts) > 1]
    if not grown:
        return None
    parts = [
        f"`{record.label}` seed {record.seed}: "
        + " → ".join(f"{attempt['epochs']:g}" for attempt in record.attempts)
        + (" (converged)" if record.attempts[-1].get("converged") else " (cap reached, not converged)")
        for record in grown
    ]
    return (
        "Trained again with more epochs until converged (`--until_converged`; epochs per attempt): "
        + "; ".join(parts)
        + "."
    )


def headline_table(task: Task, summary: Summary, with_convergence: bool = True) -> str:
    """The benchmark's main table: one row per label, the task's metrics as mean ± std with Welch p-values against
    the baseline, and whether the runs of each label converged."""
    available = next(iter(summary.stats.values()))
    metrics = [metric for metric in task.metrics if metric.key in available]
    cells = {label: summary.convergence_cell(label) for label in summary.labels} if with_convergence else None
    return comparison_table(
        summary.stats,
        [metric.key for metric in metrics],
        3,
        {metric.key: metric.label for metric in metrics},
        extra_columns={"converged": cells} if cells is not None else None,
    )


def _curves_caption_text(context: ReportContext) -> str:
    return context.summary.criterion.describe(f"the validation {context.task.curve_label}")


# --------------------------------------------------------------------------------------------------------------------
# The compare layout


def _compare_setup(context: ReportContext) -> list[str]:
    """The title, then what was compared: data, model and schedule, seeds, the command that reproduces it."""
    setup, seeds, task = context.setup, context.summary.seeds, context.task
    lines = ["# hf-hem compare: " + " vs ".join(f"`{label}`" for label in context.summary.labels), ""]
    if setup:
        epochs = setup.get("epochs")
        lines += task.data_lines(setup)
        lines.append(
            f"- **Model**: {setup.get('model')}; {epochs:g} epoch{'' if epochs == 1 else 's'}, "
            f"batch size {setup.get('batch_size')}, learning rate {setup.get('learning_rate'):g}; identical for every "
            "loss."
        )
    seed_note = f"; each seed also draws its own {task.seed_draws}" if setup.get("seed_draws_split") else ""
    lines.append(
        f"- **Seeds**: {', '.join(str(seed) for seed in seeds)}{seed_note}"
        + (" (mean ± standard deviation over seeds; plots show the first seed)." if len(seeds) > 1 else ".")
    )
    if context.command:
        lines.append(f"- **Reproduce**: `{context.command}`")
    return lines


def _margin_cell(margins: list[float] | None) -> str:
    if not margins:
        return MISSING_VALUE
    if max(margins) - min(margins) < 1e-9:
        return f"{margins[0]:.3f}"
    return f"{min(margins):.3f}–{max(margins):.3f}"


def _compare_table(context: ReportContext) -> list[str]:
    """One column per label, mean ± std over seeds, the best value of a row in bold; then convergence, margin and
    training time."""
    summary, labels = context.summary, context.summary.labels
    lines = ["| Metric | better | " + " | ".join(f"`{label}`" for label in labels) + " |"]
    lines.append("|---|:-:|" + "---:|" * len(labels))
    for metric in context.task.metrics:
        if not all(metric.key in record.metrics for record in context.records):
            continue
        stats = {label: summary.mean_std(label, metric.key) or (math.nan, math.nan) for label in labels}
        finite = [mean for mean, _ in stats.values() if math.isfinite(mean)]
        best = (max if metric.higher_is_better else min)(finite) if finite else None
        cells = []
        for label in labels:
            text = format_mean_std(*stats[label], digits=4)
            cells.append(f"**{text}**" if len(labels) > 1 and stats[label][0] == best else text)
        lines.append(f"| {metric.label} | {metric.arrow} | " + " | ".join(cells) + " |")
    lines.append("| Converged | | " + " | ".join(summary.convergence_cell(label) for label in labels) + " |")
    first = {label: next(record for record in context.records if record.label == label) for label in labels}
    lines.append(
        "| Margin μ | | " + " | ".join(_margin_cell(first[label].extras.get("margins")) for label in labels) + " |"
    )
    times = [
        mean_std(
            [r.metrics.get("train_runtime", r.wall_time_s) for r in context.records if r.label == label],
            omit_nonfinite=True,
        )
        for label in labels
    ]
    lines.append("| Training time (s) | | " + " | ".join(format_mean_std(mean, digits=1) for mean, _ in times) + " |")
    return lines


def _compare_results(context: ReportContext) -> list[str]:
    return ["## Results", "", *_compare_table(context), "", context.task.metrics_note]


def _in_short_sentences(context: ReportContext) -> list[str]:
    """Each label against the baseline on the task's summary metrics: the means, a verdict (the same, within the
    spread over seeds, better, worse) and Welch's p when it could run; labels as the summary displays them."""
    summary = context.summary
    baseline = summary.baseline
    if baseline is None or len(summary.labels) < 2:
        return []
    sentences = []
    for label in summary.labels:
        if label == baseline:
            continue
        parts = []
        for metric in context.task.verdict_metrics:
            ours, reference = summary.mean_std(label, metric.key), summary.mean_std(baseline, metric.key)
            if ours is None or reference is None:
                continue
            difference = ours[0] - reference[0]
            if abs(difference) < 5e-4:
                verdict = "the same"
            # The std of one seed is NaN, so a single seed never counts as within the spread.
            elif abs(difference) <= math.hypot(ours[1], reference[1]):
                verdict = "within the spread over seeds"
            else:
                verdict = "better" if (difference > 0) == metric.higher_is_better else "worse"
            p_value = summary.stats[label][metric.key].get("p_value", math.nan)
            test = "" if math.isnan(p_value) else f", Welch {format_p_value(p_value)}"
            parts.append(f"{metric.label} {ours[0]:.3f} vs {reference[0]:.3f} ({verdict}{test})")
        if parts:
            sentences.append(
                f"- **`{summary.display(label)}` vs `{summary.display(baseline)}`**: " + "; ".join(parts) + "."
            )
    if sentences and len(summary.labels) > 2:
        metric = context.task.verdict_metrics[0]
        ranking = summary.ranking(metric)
        if ranking:
            sentences.append(f"- **Ranking by {metric.label}**: {ranking}.")
    return sentences


def _compare_in_short(context: ReportContext) -> list[str]:
    sentences = _in_short_sentences(context)
    if not sentences:
        return []
    lines = ["## In short", "", *sentences]
    if len(context.summary.seeds) == 1 and context.task.single_seed_note:
        lines += ["", context.task.single_seed_note]
    return lines


def _compare_curves(context: ReportContext) -> list[str]:
    """The learning curves, the convergence criterion, and which labels had not converged."""
    plots = context.plot("curves")
    if not plots:
        return []
    plot = plots[0]
    lines = [
        "## Learning curves",
        "",
        f"![{plot.caption}]({plot.path.name})",
        "",
        f"Every evaluation of every run, mean over seeds with a band of ± one standard deviation. *Converged* in the "
        f"results table: {_curves_caption_text(context)}; the spread is the largest over seeds. A schedule that "
        "anneals the learning rate to zero flattens every curve at its end, converged or not; rerunning with more "
        "`--num_train_epochs` (or `--until_converged`) tells the two apart.",
    ]
    unconverged = context.summary.unconverged_labels
    if unconverged:
        lines += [
            "",
            "**Not converged**: " + ", ".join(f"`{context.summary.display(label)}`" for label in unconverged) + ". "
            "Their metrics were still moving at the end of training, so the table compares unfinished runs; train "
            "longer (`--num_train_epochs`, or `--until_converged`) before reading a difference between losses from it.",
        ]
    note = _attempts_note(context.records)
    if note:
        lines += ["", note]
    return lines


def _compare_sweep(context: ReportContext) -> list[str]:
    plots = context.plot("sweep")
    if not plots:
        return []
    plot = plots[0]
    text = (
        "Each margin loss trained once per margin and seed with `--margin` fixed (points: mean over seeds, bars: ± one "
        "standard deviation); losses without a margin are the horizontal lines."
    )
    samples = _rule_samples(context.records, context.setup)
    if samples:
        text += (
            f" The paper's rule μ = sqrt(2000 / S) gives {math.sqrt(2000 / samples):.3f} for S = {samples} training "
            f"{context.task.margin_samples_unit} (dotted line)."
        )
    return ["## Margin sweep", "", f"![{plot.caption}]({plot.path.name})", "", text]


def _compare_plots(context: ReportContext) -> list[str]:
    plots = context.plot("plots")
    if not plots:
        return []
    lines = ["## Plots"]
    for plot in plots:
        lines += ["", f"### {plot.caption}", "", f"![{plot.caption}]({plot.path.name})"]
    return lines


def _task_sections(context: ReportContext) -> list[str]:
    return context.task.sections(context.summary, context.records, context.settings)


def _compare_runs(context: ReportContext) -> list[str]:
    lines = ["## Runs", "", "| Run | Folder |", "|---|---|"]
    for record in context.records:
        relative = os.path.relpath(record.extras.get("output_dir", context.output_dir), context.output_dir)
        lines.append(f"| `{record.label}`, seed {record.seed} | [`{relative}/`]({relative}/README.md) |")
    return lines + ["", f"Each folder holds {context.task.folder_contents}."]


#: The sections of `hf-hem compare`'s `report.md`, in order.
COMPARE_SECTIONS: tuple[Section, ...] = (
    _compare_setup,
    _compare_results,
    _compare_in_short,
    _compare_curves,
    _compare_sweep,
    _task_sections,
    _compare_plots,
    _compare_runs,
)


# --------------------------------------------------------------------------------------------------------------------
# The benchmark layout


def _statistics_note(num_seeds: int, baseline: str | None) -> str:
    note = f"Mean ± sample standard deviation over {num_seeds} seed(s)."
    if baseline is None:
        return note + " No baseline loss was run, so there are no significance tests."
    return note + (
        f" `(p=…)` is a two-sided Welch t-test of that loss against `{baseline}` on the same metric, not corrected "
        "for multiple comparisons. With a handful of seeds only large, consistent differences reach p < 0.05, and a "
        "p above it is no evidence that two losses are equal. `p=n/a`: the test could not run (fewer than 2 seeds, "
        "or zero variance in both groups)."
    )


def _benchmark_head(context: ReportContext) -> list[str]:
    task, facts, summary = context.task, context.facts, context.summary
    produced = f"Produced by `{context.command}`" if context.command else "Produced by `hf_hem.experiments`"
    return [
        f"# HEM benchmark — {task.title}",
        "",
        task.description,
        "",
        produced,
        f"with hf_hem {facts.get('hf_hem_version')} on {facts.get('finished_at')}: losses "
        f"{', '.join(facts.get('losses', summary.labels))}; seeds {', '.join(map(str, summary.seeds))}; "
        f"{len(context.records)} runs, {facts.get('num_reused', 0)} reused from an earlier invocation.",
    ]


def _benchmark_results(context: ReportContext) -> list[str]:
    summary, task = context.summary, context.task
    lines = [
        "## Results",
        "",
        _statistics_note(len(summary.seeds), summary.baseline),
        "",
        headline_table(task, summary),
    ]
    text = (
        f"`converged`: {summary.criterion.describe(f'the {task.curve_label}')} (evaluated after every epoch; the "
        "spread is the largest over seeds)."
    )
    if any(record.extras.get("curve_segments") for record in context.records):
        text += " Each task's training is checked on its own, and every task must pass."
    if summary.unconverged_labels:
        text += (
            " **Not converged**: "
            + ", ".join(f"`{summary.display(label)}`" for label in summary.unconverged_labels)
            + "; their numbers compare unfinished runs."
        )
    lines += ["", text]
    note = _attempts_note(context.records)
    if note:
        lines += ["", note]
    return lines


def _benchmark_verdicts(context: ReportContext) -> list[str]:
    verdicts = context.summary.verdicts(context.task.verdict_metrics)
    return ["### Summary against the baseline", "", *verdicts] if verdicts else []


def _benchmark_plots(context: ReportContext) -> list[str]:
    lines = []
    for plot in context.plots:
        lines += [f"![{plot.caption}]({plot.path.name})", "", f"*{plot.caption}.*", ""]
    if context.facts.get("plot_error"):
        lines += [f"Plotting failed: `{context.facts['plot_error']}`.", ""]
    return ["## Plots", "", *lines[:-1]] if lines else []


def _benchmark_settings(context: ReportContext) -> list[str]:
    rows = [
        [f"`{name}`", ", ".join(map(str, value)) if isinstance(value, list) else str(value)]
        for name, value in jsonable(context.task.fingerprint(context.settings)).items()
    ]
    return [
        "## Settings",
        "",
        "The settings that affect this task's numbers (a finished run is reused only when all of them match):",
        "",
        markdown_table(["setting", "value"], rows),
        "",
        "Every per-seed number is in `results.json`; each run's metrics and details are in `runs/`.",
    ]


#: The sections of `hf-hem benchmark`'s `report.md` (one per task), in order.
BENCHMARK_SECTIONS: tuple[Section, ...] = (
    _benchmark_head,
    _benchmark_results,
    _benchmark_verdicts,
    _task_sections,
    _benchmark_plots,
    _benchmark_settings,
)
