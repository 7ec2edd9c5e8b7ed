"""The chat "repeat" probe's ceiling: the text LLM reading a transcript instead of hearing the clip.

    python benchmarks/alignment/repeat_text_reference.py \
        --repeat_wer benchmarks/alignment/exp19-whisper-decoder/repeat_wer.json \
        --output benchmarks/alignment/exp19-whisper-decoder/repeat_text_reference.json

For every clip of a `repeat_wer.py` result, the text LLM (SmolLM2 for the embedded default) gets the chat prompt the
probes use (`trainers.distillation.probes.RepeatPrompt(chat=True)`: the user turn holds the words, then "Repeat what was
said.") with the words as text, once as the reference transcript and once as Whisper's transcript of the clip (the
`asr` column), and its greedy reply is scored against the reference as the probes score a speech model's
(`greedy_repeats`: the first line, at most the transcript's length plus 8 tokens). A speech model whose audio
carries the words as well as text does cannot repeat better than this, unless training taught it to.
`--prompt_formats` also tries other wordings (the instruction before the words, a system prompt, the raw repeat
frame), to see whether a better-followed prompt exists for the frozen LLM.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainers.assets.registry import resolve_checkpoint
from trainers.distillation.probes import REPEAT_CUE, RepeatPrompt, word_error_rate

INSTRUCTION = RepeatPrompt(chat=True).instruction
SYSTEM = "You repeat exactly what the user said, word for word, and write nothing else."
# How the words are put to the LLM: the probes' chat prompt ("after"), and variants that ask whether another
# wording would make the frozen LLM a better repeater as text (the instruction first, a system prompt, both).
PROMPT_FORMATS = {
    "after": lambda text: [{"role": "user", "content": f"{text}\n{INSTRUCTION}"}],
    "before": lambda text: [{"role": "user", "content": f"Repeat exactly what was said.\n{text}"}],
    "system": lambda text: [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
    "system_after": lambda text: [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{text}\n{INSTRUCTION}"},
    ],
}


@torch.no_grad()
def text_repeats(model, tokenizer, words: list[str], references: list[str], prompt_format: str) -> list[str]:
    replies = []
    for text, reference in zip(words, references):
        if prompt_format == "raw":  # the raw repeat rows' frame, "<words> Repeat what was said:"
            inputs = tokenizer(text + REPEAT_CUE, return_tensors="pt")
        else:
            prompt = tokenizer.apply_chat_template(
                PROMPT_FORMATS[prompt_format](text), tokenize=False, add_generation_prompt=True
            )
            inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        budget = len(tokenizer(reference, add_special_tokens=False)["input_ids"]) + 8
        generated = model.generate(**inputs, max_new_tokens=budget, do_sample=False)
        reply = tokenizer.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        replies.append(reply.strip().split("\n")[0])
    return replies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeat_wer", required=True, help="A repeat_wer.py result (its clips and ASR transcripts)."
    )
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct", help="The text LLM.")
    parser.add_argument(
        "--prompt_formats",
        nargs="+",
        choices=[*PROMPT_FORMATS, "raw"],
        default=["after"],
        help="How the words are put to the LLM; 'after' is the probes' chat prompt.",
    )
    parser.add_argument("--output", required=True, help="Write the results here as JSON.")
    args = parser.parse_args(argv)
    path = resolve_checkpoint(args.model)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    results = {"model": args.model, "repeat_wer": args.repeat_wer, "sets": {}}
    for name, measured in json.loads(Path(args.repeat_wer).read_text())["sets"].items():
        references = [clip["reference"] for clip in measured["clips"]]
        entry = {"num_rows": len(references)}
        for prompt_format in args.prompt_formats:
            suffix = "" if prompt_format == "after" else f"_{prompt_format}"
            for source in ("reference", "asr"):
                words = [clip[source] for clip in measured["clips"]]
                replies = text_repeats(model, tokenizer, words, references, prompt_format)
                entry[f"repeat_wer_reading_{source}{suffix}"] = word_error_rate(references, replies)
                entry[f"replies_reading_{source}{suffix}"] = replies
        results["sets"][name] = entry
        print(name, {key: value for key, value in entry.items() if key.startswith("repeat_wer")})
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
