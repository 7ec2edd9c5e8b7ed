"""The text LLM's own chat answer to each transcript: the targets of `chat_format` training.

    python -m trainers.distillation.chat_answers --rows data/tts/train.jsonl --output data/tts/train-answers.jsonl \
        --model embedded:smollm2-135m-instruct --limit 2000

The text LLM (the teacher) reads each row's transcript as the user's message and answers greedily; the row is
written again with that reply under `answer`. A `chat_format` run with `continuation: "{answer}"` then trains
the speech model to reply to the clip as the text LLM replies to its transcript (the recipe of Ultravox; at
alpha > 0 the loss is the teacher's next-token distribution along that reply).

The user message is the one the teacher reads in `chat_format` training: the transcript, then a newline and
`--instruction` when one is given (`trainers.distillation.data.chat_segments`; the processor separates a clip from the text
after it by a newline). A reply that has not ended within `--max_new_tokens` is not cut: the row is written
with `answer: null` and `answer_finished: false`, counted in the summary, and a training run counts it as a bad
row. The output is appended batch by batch; run the same command again to continue an interrupted run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import TrlParser

from trainers.assets.registry import resolve_checkpoint


@dataclass
class ChatAnswerArguments:
    rows: str = field(
        metadata={"help": "Input jsonl in the trainers.distillation.data schema (a `text` column)."}
    )
    output: str = field(metadata={"help": "Output jsonl: the same rows with `answer` and `answer_finished`."})
    model: str = field(
        default="embedded:smollm2-135m-instruct",
        metadata={
            "help": "The text LLM that answers: the teacher of the run (a path, Hub id or embedded name)."
        },
    )
    instruction: str | None = field(
        default=None,
        metadata={"help": "Text after the transcript in the user turn (the run's chat_instruction)."},
    )
    limit: int | None = field(default=None, metadata={"help": "Answer only the first this many rows."})
    max_new_tokens: int = field(default=96, metadata={"help": "Longest reply; longer ones are not written."})
    batch_size: int = field(default=16, metadata={"help": "Transcripts answered at once."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32 or bfloat16."})


def user_message(transcript: str, instruction: str | None) -> str:
    """What the teacher reads in the user turn: the transcript, then the instruction on a new line."""
    return transcript if not instruction else f"{transcript}\n{instruction}"


@torch.no_grad()
def chat_answers(
    model, tokenizer, transcripts: list[str], instruction: str | None, max_new_tokens: int
) -> list[str | None]:
    """Greedy chat replies of the text LLM, one per transcript; None where the reply did not end in time."""
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message(text, instruction)}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for text in transcripts
    ]
    inputs = tokenizer(
        prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    )
    generated = model.generate(
        **inputs.to(model.device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )[:, inputs["input_ids"].shape[1] :]
    stops = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
                else [model.generation_config.eos_token_id])  # fmt: skip
    answers = []
    for ids in generated.tolist():
        finished = any(token in stops for token in ids)
        answers.append(tokenizer.decode(ids, skip_special_tokens=True).strip() if finished else None)
    return answers


def read_rows(path: str, limit: int | None) -> list[dict]:
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return rows[:limit]


def answered_so_far(output: Path, rows: list[dict]) -> int:
    """Rows of an interrupted run already in `output`; they must be the first rows of the input, in order."""
    if not output.is_file():
        return 0
    done = read_rows(str(output), None)
    if len(done) > len(rows) or any(a.get("text") != b.get("text") for a, b in zip(done, rows)):
        raise ValueError(
            f"{output} holds rows that are not the first {len(done)} rows of the input; remove it or choose "
            "another --output."
        )
    return len(done)


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((ChatAnswerArguments,)).parse_args_and_config(args=argv)
    rows = read_rows(args.rows, args.limit)
    if not rows:
        raise ValueError(f"{args.rows} has no rows.")
    if any(not isinstance(row.get("text"), str) or not row["text"].strip() for row in rows):
        raise ValueError(f"Every row of {args.rows} needs a non-empty `text` to answer.")
    path = resolve_checkpoint(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        raise ValueError(f"{args.model} has no chat template; chat answers need a chat (instruct) LLM.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).eval()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    start = answered_so_far(output, rows)
    unfinished = 0
    with open(output, "a") as handle:
        for first in range(start, len(rows), args.batch_size):
            batch = rows[first : first + args.batch_size]
            answers = chat_answers(
                model,
                tokenizer,
                [row["text"].strip() for row in batch],
                args.instruction,
                args.max_new_tokens,
            )
            for row, answer in zip(batch, answers):
                unfinished += answer is None
                handle.write(
                    json.dumps({**row, "answer": answer, "answer_finished": answer is not None}) + "\n"
                )
            handle.flush()
            print(
                f"{first + len(batch)}/{len(rows)} rows answered ({unfinished} unfinished this run)",
                flush=True,
            )
    print(
        f"Wrote {output}: {len(rows) - start} rows answered this run, {unfinished} of them unfinished within "
        f"{args.max_new_tokens} new tokens (answer null: training counts them as bad rows; raise --max_new_tokens)."
    )


if __name__ == "__main__":
    main()
