"""Curves of an alignment run: training loss and the probes' leading indicators against steps.

    python benchmarks/alignment/plot_probes.py --run benchmarks/alignment/exp07-asr

Reads `probes-during-training.jsonl` (what `AlignmentProbeCallback` writes; `probes.jsonl` in a run folder) and
`train.log` (the trainer's logged dicts, one per line) from `--run`, and writes `curves.png` there: the loss,
the transcript NLL with real and with shuffled audio, and teacher-forced token accuracy for both.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)


def read_probes(run: Path) -> list[dict]:
    path = next(p for p in (run / "probes-during-training.jsonl", run / "probes.jsonl") if p.is_file())
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_losses(run: Path, logging_steps: int) -> tuple[list[int], list[float]]:
    """The logged training losses in order; the log has no step numbers, so they are counted in logging steps."""
    losses = []
    for line in (run / "train.log").read_text().splitlines():
        if line.startswith("{'loss'"):
            losses.append(float(ast.literal_eval(line)["loss"]))
    return [logging_steps * (index + 1) for index in range(len(losses))], losses


def plot(run: Path, logging_steps: int) -> Path:
    probes = read_probes(run)
    steps = [probe["step"] for probe in probes]
    figure, (loss_axis, nll_axis, accuracy_axis) = plt.subplots(1, 3, figsize=(13, 3.6))
    loss_steps, losses = read_losses(run, logging_steps)
    loss_axis.plot(loss_steps, losses, color="tab:gray")
    loss_axis.set(title="training loss", xlabel="step")
    nll_axis.plot(steps, [p["transcript_nll"] for p in probes], "o-", label="real audio")
    nll_axis.plot(steps, [p["control_nll"] for p in probes], "s--", label="shuffled audio")
    nll_axis.set(title="held-out transcript NLL (nats/token)", xlabel="step")
    accuracy_axis.plot(steps, [p["transcript_accuracy"] for p in probes], "o-", label="real audio")
    accuracy_axis.plot(steps, [p["control_accuracy"] for p in probes], "s--", label="shuffled audio")
    accuracy_axis.set(title="teacher-forced token accuracy", xlabel="step")
    for axis in (nll_axis, accuracy_axis):
        axis.legend(fontsize=8)
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
