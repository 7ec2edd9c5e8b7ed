"""Curves of an alignment run: training loss and the probes' leading indicators against steps.

    python benchmarks/alignment/plot_probes.py --run benchmarks/alignment/exp07-asr

Reads `probes-during-training.jsonl` (what `AlignmentProbeCallback` writes; `probes.jsonl` in a run folder) and
`train.log` (the trainer's logged dicts, one per line) from `--run`, and writes `curves.png` there: the loss,
the transcript NLL with real and with shuffled audio, and teacher-forced token accuracy for both. A run with
answer probes (`answer-probes-during-training.jsonl`, `answer_probes.jsonl` in a run folder) gets a second row:
the answer's NLL and accuracy after a spoken question, with real and with shuffled audio.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)


def read_probes(run: Path, name: str = "probes") -> list[dict]:
    """The probes logged during training, one dict per probe step; [] when the run has none of `name`."""
    candidates = (run / f"{name.replace('_', '-')}-during-training.jsonl", run / f"{name}.jsonl")
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_real_and_shuffled(nll_axis, accuracy_axis, probes: list[dict], what: str) -> None:
    steps = [probe["step"] for probe in probes]
    nll_axis.plot(steps, [p["transcript_nll"] for p in probes], "o-", label="real audio")
    nll_axis.plot(steps, [p["control_nll"] for p in probes], "s--", label="shuffled audio")
    nll_axis.set(title=f"held-out {what} NLL (nats/token)", xlabel="step")
    accuracy_axis.plot(steps, [p["transcript_accuracy"] for p in probes], "o-", label="real audio")
    accuracy_axis.plot(steps, [p["control_accuracy"] for p in probes], "s--", label="shuffled audio")
    accuracy_axis.set(title=f"{what}: teacher-forced token accuracy", xlabel="step")
    for axis in (nll_axis, accuracy_axis):
        axis.legend(fontsize=8)


def read_losses(run: Path, logging_steps: int) -> tuple[list[int], list[float]]:
    """The logged training losses in order; the log has no step numbers, so they are counted in logging steps."""
    losses = []
    for line in (run / "train.log").read_text().splitlines():
        if line.startswith("{'loss'"):
            losses.append(float(ast.literal_eval(line)["loss"]))
    return [logging_steps * (index + 1) for index in range(len(losses))], losses


def plot(run: Path, logging_steps: int) -> Path:
    probes, answers = read_probes(run), read_probes(run, "answer_probes")
    rows = 2 if answers else 1
    figure, axes = plt.subplots(rows, 3, figsize=(13, 3.6 * rows), squeeze=False)
    loss_axis = axes[0][0]
    loss_steps, losses = read_losses(run, logging_steps)
    loss_axis.plot(loss_steps, losses, color="tab:gray")
    loss_axis.set(title="training loss", xlabel="step")
    plot_real_and_shuffled(axes[0][1], axes[0][2], probes, "transcript")
    if answers:
        plot_real_and_shuffled(axes[1][1], axes[1][2], answers, "answer")
        gain = [p["control_nll"] - p["transcript_nll"] for p in answers]
        axes[1][0].plot([p["step"] for p in answers], gain, "o-", color="tab:green")
        axes[1][0].set(title="answer content gain (nats/token)", xlabel="step")
    figure.suptitle(run.name)
    figure.tight_layout()
    output = run / "curves.png"
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="folder with probes and train.log")
    parser.add_argument("--logging_steps", type=int, default=25, help="the run's logging_steps")
    args = parser.parse_args()
    print(f"wrote {plot(args.run, args.logging_steps)}")


if __name__ == "__main__":
    main()
