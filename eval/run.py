"""`salad-eval`: the text-speech gap of a SALAD model on spoken multiple-choice tasks.

    salad-eval --config configs/paper-cpu/eval.yaml
    salad-eval --model runs/my-salad --tasks offline arc_challenge --num_fewshot 5 --output_dir runs/eval
    salad-eval --model Qwen/Qwen2-Audio-7B-Instruct --base_model Qwen/Qwen-7B --output_dir runs/eval-qwen2-audio
    salad-eval --compare runs/eval/results.json runs/eval-qwen2-audio/results.json --output_dir runs/compare

The systems, the tasks and the statistics are in `eval.harness` (`EvalArguments` lists every option). Writes
`results.json` (what the model card reads), `results.md` and PNG plots to `output_dir`.
"""

from __future__ import annotations

from trl import TrlParser

from .harness import EvalArguments, run
from .report import markdown_table


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((EvalArguments,)).parse_args_and_config(args=argv)
    results = run(args)
    print(results["table"] if args.compare else markdown_table(results))
    print(f"Results, table and plots in {args.output_dir}")


if __name__ == "__main__":
    main()
