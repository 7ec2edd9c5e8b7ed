"""The answer probe's ceiling: the text LLM reading each held-out question instead of hearing it.

    python benchmarks/alignment/answer_text_reference.py --rows data/questions/eval.jsonl \
        --output benchmarks/alignment/exp13-stage1-questions/answer_probe_text_reference.json

On the same rows the answer probe picks (`trainers.distillation.probes.load_probe_rows`, 16 by default, as in training), the
teacher-forced NLL (nats/token) and top-1 accuracy of each answer after `Question: <question>\nAnswer:` read as
text by the text LLM (SmolLM2 for the embedded default). A speech model's answer NLL after the clip lies between
this and the shuffled-clip control.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainers.assets.registry import resolve_checkpoint
from trainers.distillation.probes import load_probe_rows


@torch.no_grad()
def text_answer_scores(model, tokenizer, rows) -> dict[str, float]:
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    nll, hits, count = 0.0, 0, 0
    for row in rows:
        before = ids(row.prompt) + ids(row.text) + ids(row.cue)
        target = ids(" " + row.answer)
        logits = model(torch.tensor([before + target])).logits[0, len(before) - 1 : -1].float()
        targets = torch.tensor(target)
        nll += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        hits += int((logits.argmax(-1) == targets).sum())
        count += len(target)
    return {"text_answer_nll": nll / count, "text_answer_accuracy": hits / count, "tokens": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="data/questions/eval.jsonl", help="held-out spoken questions")
    parser.add_argument("--num_rows", type=int, default=16, help="the run's probe_num_rows")
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct", help="the text LLM")
    parser.add_argument("--output", type=Path, help="write the numbers here as JSON")
    args = parser.parse_args()
    path = resolve_checkpoint(args.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = [row for row in load_probe_rows(args.rows, args.num_rows, 16000) if row.answer is not None]
    if not rows:
        raise ValueError(f"{args.rows} has no rows with `prompt`, `continuation` and `answer`.")
    text = json.dumps(text_answer_scores(model, tokenizer, rows))
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
