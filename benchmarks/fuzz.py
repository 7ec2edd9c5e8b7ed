"""Fuzz the processor, its chat template and both pipelines with random inputs, and count what happens.

    python benchmarks/fuzz.py --cases 10000                                  # tiny random Whisper + MLP model
    python benchmarks/fuzz.py --model embedded --cases 300 --output benchmarks/results/fuzz_embedded.json

Each case is drawn by `tests/fuzzing.py` (the harness `tests/test_fuzz.py` runs in `make test`): clips of every
dtype, layout, length (0 to 31 s), content (speech-like, silence, noise, NaN, inf, 1e6 peaks) and sampling rate
(valid, odd, zero, negative, absurd, missing, not a number), prompts with any number of `<|audio|>`, batches,
files, bytes and garbage. A case is accepted (every logit the model computes is then finite) or refused with
salad's own `ValueError`; anything else is counted as undocumented, with its first examples. Results go to
`benchmarks/results/fuzz.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent / "tests")
)  # the harness lives beside the tests
from fuzzing import NonFiniteOutput, Targets, UndocumentedFailure, cases, run_case  # noqa: E402
from loss_memory import machine_info  # noqa: E402  (a sibling script: benchmarks/ is on sys.path)


def fuzz(targets: Targets, num_cases: int, random_seed: int) -> dict:
    """Run `num_cases` cases; count outcomes per target and keep the first undocumented failures."""
    outcomes: dict[str, Counter] = {}
    failures: list[str] = []

    @seed(random_seed)
    @settings(max_examples=num_cases, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=cases())
    def one(case):
        try:
            outcome = run_case(targets, case)
        except UndocumentedFailure as failure:
            outcome = "nonfinite" if isinstance(failure, NonFiniteOutput) else "undocumented"
            if len(failures) < 20:
                failures.append(str(failure))
        outcomes.setdefault(case.target, Counter())[outcome] += 1

    one()
    total = sum((counts for counts in outcomes.values()), Counter())
    return {
        "cases": sum(total.values()),
        "accepted": total["accepted"],
        "refused_by_salad": total["refused"],
        "undocumented_exceptions": total["undocumented"],
        "nonfinite_outputs": total["nonfinite"],
        "per_target": {target: dict(counts) for target, counts in sorted(outcomes.items())},
        "first_failures": failures,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model", choices=["tiny", "embedded"], default="tiny",
        help="tiny: a random Whisper + MLP adapter + Llama built in code; embedded: the shipped default",
    )  # fmt: skip
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "fuzz.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        targets = (
            Targets.tiny(Path(workdir)) if args.model == "tiny" else Targets.embedded_default(Path(workdir))
        )
        start = time.perf_counter()
        report = fuzz(targets, args.cases, args.seed)
    report = {
        "command": f"python benchmarks/fuzz.py --model {args.model} --cases {args.cases} --seed {args.seed}",
        "model": {
            "tiny": "tiny random Whisper encoder + MLP adapter + Llama (tests/conftest.py build_tiny)",
            "embedded": "the shipped embedded default (whisper_decoder adapter; Whisper tiny.en + SmolLM2-135M)",
        }[args.model],
        "seconds": round(time.perf_counter() - start, 1),
        "machine": machine_info("cpu"),
        **report,
    }
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: value for key, value in report.items() if key != "first_failures"}, indent=2))
    for failure in report["first_failures"]:
        print("---\n" + failure)


if __name__ == "__main__":
    main()
