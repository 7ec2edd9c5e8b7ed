"""What `salad-eval` writes besides `results.json`: the markdown tables and the plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .tasks import safe_name


def _interval(difference: dict | None) -> str:
    if difference is None:
        return "-"
    low, high = difference["ci95"]
    return f"{difference['value']:+.3f} [{low:+.3f}, {high:+.3f}]"


def markdown_table(results: dict) -> str:
    lines = ["| task | system | accuracy | 95% CI | n |", "|---|---|---|---|---|"]
    for task, report in results["tasks"].items():
        for system, summary in report["systems"].items():
            low, high = summary["ci95"]
            lines.append(
                f"| {task} | {system} | {summary['accuracy']:.3f} | [{low:.3f}, {high:.3f}] | {summary['n']} |"
            )
    lines += [
        "",
        "| task | gap (base text - SALAD speech) | retention gap | speech - prior (paired) | speech - cascade "
        "(paired) | speech/prior agreement | chance |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, report in results["tasks"].items():
        agreement = report.get("speech_prior_agreement")
        agreement = "-" if agreement is None else f"{agreement:.2f}"
        gap, retention = _interval(report.get("gap")), _interval(report.get("retention_gap"))
        over_prior = _interval(report.get("speech_over_prior"))
        over_cascade = _interval(report.get("speech_minus_cascade"))
        lines.append(
            f"| {task} | {gap} | {retention} | {over_prior} | {over_cascade} | {agreement} | {report['chance']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def save_plots(results: dict, output_dir: Path) -> list[str]:
    """Accuracy per task and system (with intervals); gap per domain for each task."""
    import matplotlib  # lazily: the optional `eval` extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after matplotlib.use("Agg"), which must come first

    paths = []
    tasks = list(results["tasks"])
    systems = list(next(iter(results["tasks"].values()))["systems"])
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(tasks) * len(systems) / 3, 4))
    width = 0.8 / len(systems)
    for k, system in enumerate(systems):
        acc = [results["tasks"][t]["systems"][system]["accuracy"] for t in tasks]
        err = np.array(
            [
                [
                    a - results["tasks"][t]["systems"][system]["ci95"][0],
                    results["tasks"][t]["systems"][system]["ci95"][1] - a,
                ]
                for t, a in zip(tasks, acc)
            ]
        ).T
        ax.bar(np.arange(len(tasks)) + k * width, acc, width, yerr=err, capsize=3, label=system)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(systems) - 1) / 2, tasks)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy per task (95% bootstrap CI)")
    fig.tight_layout()
    fig.savefig(output_dir / "accuracy_per_task.png", dpi=120)
    plt.close(fig)
    paths.append("accuracy_per_task.png")
    for task, report in results["tasks"].items():
        domains = [d for d in report["domains"] if "gap" in report["domains"][d]]
        if not domains:
            continue
        gaps = [report["domains"][d]["gap"]["value"] for d in domains]
        err = np.array(
            [
                [g - report["domains"][d]["gap"]["ci95"][0], report["domains"][d]["gap"]["ci95"][1] - g]
                for d, g in zip(domains, gaps)
            ]
        ).T
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(domains)), 4))
        ax.bar(domains, gaps, yerr=err, capsize=3, color="tab:red")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("text - speech accuracy")
        ax.set_title(f"{task}: text-speech gap per domain")
        ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        path = f"gap_per_domain_{safe_name(task)}.png"
        fig.savefig(output_dir / path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


COMPARED = (("base_text", "text"), ("salad_text", "model, text"), ("salad_speech", "model, speech"),
            ("cascade", "cascade"), ("prior", "prior"))  # fmt: skip


def load_compared(paths: list[str]) -> dict[str, dict]:
    """results.json files by a short label each: the model's name, or the file's folder where names repeat."""
    runs = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--compare: no results file at {path} (salad-eval writes results.json).")
        results = json.loads(path.read_text())
        if "tasks" not in results or "config" not in results:
            raise ValueError(
                f"--compare: {path} is not a salad-eval results.json (it has no 'tasks' or 'config')."
            )
        runs[str(path)] = results
    names = [results["config"].get("model", "?") for results in runs.values()]
    labels = [
        name if names.count(name) == 1 else f"{name} ({Path(path).parent.name})"
        for name, path in zip(names, runs)
    ]
    # still the same (two runs in folders of one name): number them, so no run is dropped
    labels = [label if labels.count(label) == 1 else f"{label} #{k + 1}" for k, label in enumerate(labels)]
    return dict(zip(labels, runs.values()))


def _per_token(distribution: dict, key: str) -> str:
    return f"{distribution[key]:.4f}" if key in distribution else "-"


def comparison_table(runs: dict[str, dict]) -> str:
    """One row per model and task: each system's accuracy; the gap, speech minus the prior and minus the cascade
    (paired, 95% CI); F and M per token. A run without a system or a measure shows `-` there."""
    header = [
        "model", "task", *(label for _, label in COMPARED), "gap (text - speech)", "speech - prior",
        "speech - cascade", "F", "M",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, results in runs.items():
        for task, report in results["tasks"].items():
            systems, distribution = report["systems"], report.get("distribution") or {}
            cells = [
                model,
                task,
                *(f"{systems[s]['accuracy']:.3f}" if s in systems else "-" for s, _ in COMPARED),
                *(_interval(report.get(key)) for key in ("gap", "speech_over_prior", "speech_minus_cascade")),
                _per_token(distribution, "forgetting"),
                _per_token(distribution, "misalignment"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_comparison_plot(runs: dict[str, dict], path: Path) -> None:
    """The gap of every model on every task (bars with their paired 95% intervals), as in the paper's Table 3."""
    import matplotlib  # lazily: the optional `eval` extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after matplotlib.use("Agg"), which must come first

    tasks = list(dict.fromkeys(task for results in runs.values() for task in results["tasks"]))
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(2 + 1.2 * len(tasks) * max(1, len(runs) / 2), 4))
    for k, (model, results) in enumerate(runs.items()):
        gaps = [results["tasks"].get(task, {}).get("gap") for task in tasks]
        values = [np.nan if gap is None else gap["value"] for gap in gaps]
        err = np.array(
            [
                [0, 0] if gap is None else [gap["value"] - gap["ci95"][0], gap["ci95"][1] - gap["value"]]
                for gap in gaps
            ]
        ).T
        label = model if any(gap is not None for gap in gaps) else f"{model} (no gap: no base_text)"
        ax.bar(np.arange(len(tasks)) + k * width, values, width, yerr=err, capsize=3, label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(runs) - 1) / 2, tasks)
    ax.set_ylabel("text - speech accuracy")
    ax.set_title("Text-speech gap per model and task (paired 95% bootstrap CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare_results(paths: list[str], output_dir: Path) -> dict:
    """`salad-eval --compare`: `comparison.md` and `comparison.png` in `output_dir` from earlier results files."""
    runs = load_compared(paths)
    table = comparison_table(runs)
    (output_dir / "comparison.md").write_text(table)
    save_comparison_plot(runs, output_dir / "comparison.png")
    return {"compared": list(runs), "table": table, "plots": ["comparison.png"]}
