"""Experiment 29 (issue 33): distillation over the choice the harness makes, not over the answer's tokens.

    python benchmarks/alignment/choice_distillation.py --output_dir runs/lossless/choice-s0 \
        --max_steps 200 --decay_steps 40      # about 11 s a step on 2 cores: each row is scored with 4 options
    python benchmarks/cascade_gap.py ablate --voice en-us --model runs/lossless/choice-s0/checkpoint-200 \
        --label choice-s0-200 --no_ablations

Experiments 23-28 trained the `whisper_decoder` residual by SALAD's token-level forward KL to SmolLM2 reading the
true words, and every one lowered the held-out content gain: on spoken questions the answers' NLL fell, but the
control's (the same answer after another question's clip) fell more. The residual learned what answers look like,
which the KL rewards wherever Whisper misheard (the student, unsure, spreads its mass as the teacher's answer does).

This keeps experiment 27 (the residual alone, the LLM frozen, the spoken definition questions in the harness's
`Question: ...\\nAnswer:` frame, every row seen once, steps of 8 rows from the shipped model, the same learning
rate and warmup) and changes one thing, the objective: each row's own answer and three other rows' answers are scored
as the harness scores options (mean log-probability per token), by the teacher after the question's text and by the
student after its clip, and the loss is the KL from the teacher's distribution over the four options to the
student's. What every option shares (that it reads like a definition) cancels in that distribution, so only what
tells the options apart is rewarded. The objective is now also the trainer's (`salad-train --objective choice`,
`configs/embedded-default/choice-lora.yaml`); this script is the one that trained experiments 29-31.

Experiment 30 adds LoRA on SmolLM2 (`--lora_r 8`), so that the LLM itself can learn to read Whisper's errors, with the
same KL for the LLM reading the question's text next to it (`--text_weight`), against the teacher with LoRA off, so
that it stays the text LLM it was:

    python benchmarks/alignment/choice_distillation.py --output_dir runs/lossless/choice-lora-s0 --lora_r 8 \
        --max_steps 200 --decay_steps 40      # about 16-24 s a step; add --resume to go on from a checkpoint

Experiment 31 is 30 with the residual frozen at zero (`--no_residual`): seed 1 of 30 lost its points through the
residual, on the questions Whisper heard exactly, while its LoRA alone read like the cascade or a little better.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import get_wsd_schedule

from trainers.assets import load_salad
from trainers.distillation.data import decode_row_audio, pad_sequences
from trainers.distillation.losses import choice_distillation_loss, option_log_probs
from trainers.distillation.probes import (
    ProbeRow,
    RepeatPrompt,
    choice_accuracy,
    choice_options,
    load_probe_rows,
    question_fields,
    run_probes,
)
from trainers.distillation.train import complete_checkpoints
from trainers.distillation.transcript_cache import TranscriptCache

OPTIONS = 4
TRAINING_STATE = "training_state.pt"


def latest_checkpoint(output: Path) -> Path:
    """The output folder's newest checkpoint that holds its training state, for `--resume`."""
    saved = complete_checkpoints(output, state_name=TRAINING_STATE)
    if not saved:
        raise ValueError(
            f"--resume: no checkpoint with {TRAINING_STATE} in {output}; run without --resume first."
        )
    return saved[-1]


def training_rows(path: str, count: int, seed: int, sampling_rate: int) -> list[ProbeRow]:
    """`count` spoken questions drawn by `seed`, each with its question frame and answer."""
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    random.Random(seed).shuffle(rows)
    return [
        ProbeRow(row["text"], decode_row_audio(row["audio"], sampling_rate), **question_fields(row, path))
        for row in rows[:count]
    ]


def option_scores(
    model, processor, cache: TranscriptCache, rows: list[ProbeRow], with_text: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`[rows, OPTIONS]` mean log-probabilities of each row's options (its own answer first): the teacher's after
    the question's text (no gradient; the LLM with LoRA off), the student's after its clip, and `with_text` the
    student's after the question's text (the LLM with its LoRA: the term that keeps it a text LLM)."""
    tokenizer, pad = processor.tokenizer, processor.tokenizer.pad_token_id
    asked = [
        replace(row, answer=option)
        for row, options in zip(rows, choice_options(rows, OPTIONS))
        for option in options
    ]
    student, teacher, student_spans, teacher_spans = [], [], [], []
    for row in asked:
        sequence, (begin, length) = row.sequence(processor, RepeatPrompt())
        student.append(sequence)
        student_spans.append((begin, length))
        text = tokenizer(row.prompt + row.text + row.cue, add_special_tokens=False)["input_ids"]
        teacher.append(text + sequence[begin:])
        teacher_spans.append((len(text), length))
    prepared = processor.prepare_audio([row.audio for row in rows])
    if any(count != 1 for count in prepared.windows_per_clip):
        raise ValueError(
            "A question longer than one audio window; this script expects short spoken questions."
        )
    features = torch.from_numpy(prepared.inputs["input_features"])
    mask = torch.from_numpy(prepared.inputs["input_features_mask"])
    transcript = cache.transcripts(model, features, mask)
    per_option = torch.arange(len(rows)).repeat_interleave(OPTIONS)
    ids, attention, _ = pad_sequences(student, pad, "right")
    hidden = model(
        input_ids=ids, attention_mask=attention, input_features=features[per_option],
        input_features_mask=mask[per_option], whisper_transcript=type(transcript)(*(p[per_option] for p in transcript)),
        return_last_hidden_state=True,
    ).last_hidden_state  # fmt: skip
    head = model.get_output_embeddings().weight

    def scores(hidden: torch.Tensor, ids: torch.Tensor, spans: list) -> torch.Tensor:
        return option_log_probs(hidden, head, ids, torch.tensor(spans)).view(len(rows), OPTIONS)

    student_scores = scores(hidden, ids, student_spans)
    ids, attention, _ = pad_sequences(teacher, pad, "right")
    with torch.no_grad(), model.lora_disabled():
        hidden = model.language_model.get_decoder()(input_ids=ids, attention_mask=attention).last_hidden_state
        teacher_scores = scores(hidden, ids, teacher_spans)
    text_scores = None
    if with_text:
        hidden = model.language_model.get_decoder()(input_ids=ids, attention_mask=attention).last_hidden_state
        text_scores = scores(hidden, ids, teacher_spans)
    return teacher_scores, student_scores, text_scores


def probe(model, processor, answer_rows: list[ProbeRow], choice_rows: list[ProbeRow], step: int) -> dict:
    results = run_probes(model, processor, answer_rows, with_generation=False)
    model.eval()
    with torch.no_grad():
        wide = choice_accuracy(model, processor, choice_rows, OPTIONS)
    model.train()
    return {
        "step": step,
        **{k: round(v, 4) for k, v in results.items()},
        f"choice_accuracy_{len(choice_rows)}": wide,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="runs/embedded-default/init", help="The shipped model, as built.")
    parser.add_argument("--data_file", default="data/questions/train.jsonl")
    parser.add_argument("--probe_file", default="data/questions/eval.jsonl")
    parser.add_argument("--output_dir", default="runs/lossless/choice-s0")
    parser.add_argument("--transcript_cache_dir", default="runs/transcript-cache")
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--warmup_steps", type=int, default=20)
    parser.add_argument("--decay_steps", type=int, default=60)
    parser.add_argument("--probe_steps", type=int, default=50)
    parser.add_argument("--save_steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--resume", action="store_true",
        help="Go on from the output folder's latest checkpoint that holds its training state (same arguments).",
    )  # fmt: skip
    parser.add_argument(
        "--lora_r", type=int, default=0, help="LoRA rank on SmolLM2's linear layers (0: LLM frozen)."
    )
    parser.add_argument("--lora_learning_rate", type=float, default=2e-4)
    parser.add_argument(
        "--text_weight", type=float, default=1.0,
        help="With LoRA, the weight of the same KL for the LLM reading the question's text (keeps text accuracy).",
    )  # fmt: skip
    parser.add_argument(
        "--no_residual", action="store_true",
        help="Keep the residual as loaded (zero in the shipped model), so that the questions Whisper hears exactly "
        "reach the LLM as the cascade's; only LoRA trains (needs --lora_r).",
    )  # fmt: skip
    args = parser.parse_args()
    if args.no_residual and not args.lora_r:
        parser.error("--no_residual leaves nothing to train without --lora_r.")

    output = Path(args.output_dir)
    resume = latest_checkpoint(output) if args.resume else None
    torch.manual_seed(args.seed)
    model, processor = load_salad(str(resume or args.model))  # a checkpoint re-creates its LoRA layers
    model.requires_grad_(False)
    groups = []
    if not args.no_residual:
        residual = [p for name, p in model.adapter.named_parameters() if not name.startswith("decoder.")]
        for parameter in residual:
            parameter.requires_grad_(True)
        groups.append({"params": residual, "lr": args.learning_rate})
    if args.lora_r:
        if not model.has_lora():
            model.add_lora_to_language_model(
                LoraConfig(
                    r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear", lora_dropout=0.0
                )
            )
        lora = [p for name, p in model.language_model.named_parameters() if "lora_" in name]
        for parameter in lora:
            parameter.requires_grad_(True)
        groups.append({"params": lora, "lr": args.lora_learning_rate})
    trained = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    schedule = get_wsd_schedule(
        optimizer, num_warmup_steps=args.warmup_steps, num_decay_steps=args.decay_steps,
        num_training_steps=args.max_steps, decay_type="linear",
    )  # fmt: skip
    cache = TranscriptCache(model, args.transcript_cache_dir)
    rate = processor.sampling_rate
    rows = training_rows(args.data_file, args.max_steps * args.batch_size, args.seed, rate)
    answer_rows = load_probe_rows(args.probe_file, 16, rate)  # the trainer's answer probes (`probe_num_rows`)
    choice_rows = load_probe_rows(args.probe_file, 96, rate)
    output.mkdir(parents=True, exist_ok=True)
    log = (output / "log.jsonl").open("a")

    def write(entry: dict) -> None:
        print(entry, flush=True)
        log.write(json.dumps(entry) + "\n")
        log.flush()

    done = 0
    if resume is not None:
        state = torch.load(resume / TRAINING_STATE)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        done = state["step"]
        print(f"Resuming from {resume} (step {done}).", flush=True)
    else:
        write(probe(model, processor, answer_rows, choice_rows, 0))
    model.train()
    for step in range(done + 1, args.max_steps + 1):
        started = time.perf_counter()
        batch = rows[(step - 1) * args.batch_size : step * args.batch_size]
        teacher_scores, student_scores, text_scores = option_scores(
            model, processor, cache, batch, with_text=bool(args.lora_r)
        )
        output = choice_distillation_loss(
            teacher_scores, student_scores, text_scores, text_weight=args.text_weight
        )
        loss = output.loss
        speech_loss, text_loss = output.divergence_sum / len(batch), output.text_divergence_sum / len(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        write({"step": step, "loss": round(speech_loss.item(), 4), "text_loss": round(text_loss.item(), 4),
               "teacher_right": output.teacher_right / len(batch),
               "student_right": output.student_right / len(batch), "lr": schedule.get_last_lr()[0],
               "seconds": round(time.perf_counter() - started, 2)})  # fmt: skip
        if step % args.probe_steps == 0:
            write(probe(model, processor, answer_rows, choice_rows, step))
        if step % args.save_steps == 0:
            checkpoint = output / f"checkpoint-{step}"
            model.save_pretrained(checkpoint)
            processor.save_pretrained(checkpoint)
            state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "step": step,
                     "rng": torch.get_rng_state()}  # fmt: skip
            torch.save(state, checkpoint / TRAINING_STATE)


if __name__ == "__main__":
    main()
