"""The embedded default trained with each loss implementation: the same seed must give the same loss curve.

    python benchmarks/loss_curve.py                     # fused vs recompute, 20 steps (6 min on 2 cores)
    python benchmarks/loss_curve.py --implementations fused recompute materialized --steps 20

Each implementation trains the embedded default (`embedded_training.embedded_default_trainer`: fresh adapter
from seed 0, LLM frozen as its own teacher, forward KL, batch 4 of Asterisk prompts, `loss_chunk_size` 16 so
that each batch spans several chunks) in its own subprocess and logs the loss of every step. The implementations differ only in float summation order (chunked vs whole
vocabulary, gradients taken in forward vs recomputed in backward), so the curves may differ by rounding, and
Adam can carry rounding forward; the report gives the largest absolute and relative difference from the first
implementation's curve, and `--tolerance` (relative) is the bar the command checks. Results:
`benchmarks/results/loss_curve_<device>.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def run_implementation(
    implementation: str, device: str, dtype: str, batch_size: int, steps: int, chunk_size: int
) -> dict:
    """Inside the child process: train `steps` steps and return the logged loss of each."""
    from embedded_training import embedded_default_trainer

    trainer = embedded_default_trainer(
        steps, batch_size, device, dtype, loss_implementation=implementation, loss_chunk_size=chunk_size
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"implementation": implementation, "losses": losses}


def largest_differences(reference: list[float], other: list[float]) -> tuple[float, float]:
    """The largest absolute and relative (to the reference) difference between two curves of equal length."""
    if len(reference) != len(other):
        raise ValueError(f"Curves of different lengths: {len(reference)} and {len(other)} logged steps.")
    absolute = [abs(a - b) for a, b in zip(reference, other)]
    relative = [d / abs(a) for d, a in zip(absolute, reference) if a != 0]
    return max(absolute), max(relative, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--implementations", nargs="+", default=["fused", "recompute"],
                        choices=["fused", "recompute", "materialized"])  # fmt: skip
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--chunk_size",
        type=int,
        default=16,
        help="loss_chunk_size: small, so that every batch (about 60 supervised tokens) spans several chunks",
    )
    parser.add_argument("--tolerance", type=float, default=1e-4, help="Largest relative difference allowed.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_implementation(
            args.child, args.device, args.dtype, args.batch_size, args.steps, args.chunk_size
        )
        print(json.dumps(result))
        return
    curves = []
    for implementation in args.implementations:
        command = [sys.executable, __file__, "--child", implementation, "--device", args.device, "--dtype",
                   args.dtype, "--batch_size", str(args.batch_size), "--steps", str(args.steps),
                   "--chunk_size", str(args.chunk_size)]  # fmt: skip
        output = subprocess.run(command, capture_output=True, text=True, check=True)
        curves.append(json.loads(output.stdout.strip().splitlines()[-1]))
        print(curves[-1], flush=True)
    reference = curves[0]
    for curve in curves[1:]:
        curve["max_abs_diff"], curve["max_rel_diff"] = largest_differences(
            reference["losses"], curve["losses"]
        )
        curve["within_tolerance"] = curve["max_rel_diff"] <= args.tolerance
    from embedded_training import report_header

    report = {
        **report_header("loss_curve.py", args.device, args.dtype, args.batch_size, args.steps),
        "loss_chunk_size": args.chunk_size,
        "tolerance_rel": args.tolerance,
        "reference": reference["implementation"],
        "curves": curves,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"loss_curve_{args.device}.json").write_text(json.dumps(report, indent=2) + "\n")
    for curve in curves[1:]:
        print(f"{curve['implementation']} vs {reference['implementation']}: max |diff| {curve['max_abs_diff']:.2e}, "
              f"max relative {curve['max_rel_diff']:.2e} (tolerance {args.tolerance:.0e})")  # fmt: skip
    if not all(curve["within_tolerance"] for curve in curves[1:]):
        sys.exit("The loss curves differ by more than the tolerance.")


if __name__ == "__main__":
    main()
