"""Two alignment runs that saw identical batches, compared step for step.

    python benchmarks/alignment/compare_runs.py --baseline benchmarks/alignment/exp09-asr-chat \
        --run benchmarks/alignment/exp16-asr-chat-transformer --output benchmarks/alignment/exp16-asr-chat-transformer/vs-exp09.json

Runs with the same data, seed, batch size and length grouping draw the same batches in the same order, so the
difference of their losses at each logging step is free of the batch-to-batch swings (long and short batches
alternate, by up to a nat) that make two loss curves hard to compare by eye. This prints and writes the mean
difference (run minus baseline; negative: the run learns faster) over windows of steps, and both runs' held-out
content gains at the steps both probed. It compares only as far as the shorter log reaches.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plot_probes import read_losses, read_probes


def windowed_loss_difference(
    baseline: list[float], run: list[float], logging_steps: int, window: int
) -> list[dict]:
    """Mean of `run - baseline` over consecutive windows of `window` steps, logged every `logging_steps`."""
    if window % logging_steps:
        raise ValueError(f"window ({window}) must be a multiple of logging_steps ({logging_steps}).")
    per_window = window // logging_steps
    differences = [r - b for b, r in zip(baseline, run)]
    windows = []
    for start in range(0, len(differences) - per_window + 1, per_window):
        chunk = differences[start : start + per_window]
        windows.append(
            {
                "first_step": start * logging_steps + 1,
                "last_step": (start + per_window) * logging_steps,
                "mean_loss_difference": sum(chunk) / len(chunk),
            }
        )
    return windows


def shared_probe_gains(baseline: list[dict], run: list[dict]) -> list[dict]:
    """Both runs' held-out content gain (nats/token) at every step that both probed."""
    baseline_gain = {probe["step"]: probe["content_gain_nll"] for probe in baseline}
    return [
        {"step": probe["step"], "baseline": baseline_gain[probe["step"]], "run": probe["content_gain_nll"]}
        for probe in run
        if probe["step"] in baseline_gain
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="run folder (train.log, probes)")
    parser.add_argument("--run", type=Path, required=True, help="run folder compared with the baseline")
    parser.add_argument("--logging_steps", type=int, default=25, help="both runs' logging_steps")
    parser.add_argument("--window", type=int, default=250, help="steps averaged per reported difference")
    parser.add_argument("--output", type=Path, help="JSON file for the comparison")
    args = parser.parse_args()
    _, baseline_losses = read_losses(args.baseline, args.logging_steps)
    _, run_losses = read_losses(args.run, args.logging_steps)
    comparison = {
        "baseline": str(args.baseline),
        "run": str(args.run),
        "loss_difference": windowed_loss_difference(
            baseline_losses, run_losses, args.logging_steps, args.window
        ),
        "content_gain": shared_probe_gains(read_probes(args.baseline), read_probes(args.run)),
    }
    for window in comparison["loss_difference"]:
        print(
            f"steps {window['first_step']}-{window['last_step']}: {window['mean_loss_difference']:+.3f} nats"
        )
    for probe in comparison["content_gain"]:
        print(f"step {probe['step']}: content gain {probe['run']:+.2f} (baseline {probe['baseline']:+.2f})")
    if args.output:
        args.output.write_text(json.dumps(comparison, indent=2) + "\n")


if __name__ == "__main__":
    main()
