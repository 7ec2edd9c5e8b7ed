"""The text LLM's chat answers as chat_format targets: what the teacher reads, unfinished replies, resuming."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tone
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainers.distillation.chat_answers import chat_answers, main, user_message
from trainers.distillation.data import BadRowError, SaladDistillationCollator, encode_segments

TEXTS = ["the quick brown fox", "one two three", "the lazy dog", "four five six", "paris is the capital"]


def write_rows(path, texts):
    path.write_text(
        "".join(json.dumps({"text": text, "audio": f"{i}.wav"}) + "\n" for i, text in enumerate(texts))
    )


def test_the_answered_user_message_is_what_the_chat_format_teacher_reads(whisper_salad):
    _, processor = whisper_salad
    collator = SaladDistillationCollator(
        processor, continuation="{answer}", interleave_probability=0.0, chat_format=True,
        chat_instruction="answer briefly",
    )  # fmt: skip
    row = {
        "text": "the lazy dog",
        "audio": {"array": tone(0.6), "sampling_rate": 16000},
        "answer": "four five",
    }
    example = encode_segments(collator.row_to_segments(row), processor, add_special_tokens=False)
    chat = [{"role": "user", "content": user_message(row["text"], "answer briefly")}]
    prompt = processor.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    prompt_ids = processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = processor.tokenizer("four five<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert example.teacher_ids == prompt_ids + answer_ids
    with pytest.raises(BadRowError, match="answer"):
        collator.row_to_segments({**row, "answer": None})


def test_a_reply_that_does_not_end_in_time_is_not_cut(component_checkpoints):
    path = component_checkpoints / "llm"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": TEXTS[0]}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        greedy = model.generate(**inputs, max_new_tokens=3, do_sample=False)[
            0, inputs["input_ids"].shape[1] :
        ]
    never = next(token for token in range(len(tokenizer)) if token not in greedy.tolist())
    model.generation_config.eos_token_id = [never]
    assert chat_answers(model, tokenizer, TEXTS[:1], None, max_new_tokens=3) == [None]
    model.generation_config.eos_token_id = [int(greedy[1])]  # the reply ends at its second token
    (answer,) = chat_answers(model, tokenizer, TEXTS[:1], None, max_new_tokens=3)
    assert answer == tokenizer.decode(greedy[:2], skip_special_tokens=True).strip()


def test_answers_are_written_in_order_and_an_interrupted_run_continues(component_checkpoints, tmp_path):
    rows, output = tmp_path / "rows.jsonl", tmp_path / "answers.jsonl"
    write_rows(rows, TEXTS)
    common = ["--rows", str(rows), "--output", str(output), "--model", str(component_checkpoints / "llm"),
              "--max_new_tokens", "2", "--batch_size", "2"]  # fmt: skip
    main([*common, "--limit", "3"])
    main(common)  # continues after the first 3 rows
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["text"] for row in written] == TEXTS
    assert all(set(row) == {"text", "audio", "answer", "answer_finished"} for row in written)
    assert all((row["answer"] is None) == (not row["answer_finished"]) for row in written)
    write_rows(rows, list(reversed(TEXTS)))
    with pytest.raises(ValueError, match="not the first"):
        main(common)
    write_rows(rows, ["a row", ""])
    with pytest.raises(ValueError, match="non-empty `text`"):
        main(["--rows", str(rows), "--output", str(tmp_path / "other.jsonl"), "--model", common[5]])
