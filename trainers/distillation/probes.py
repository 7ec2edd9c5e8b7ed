"""Alignment probes: does the model hear the words? Leading indicators that move long before accuracy does.

On held-out rows (speech in voices training never used, with transcripts), each probe asks the model to repeat
what was said, `<|audio|> Repeat what was said: <transcript>`, and measures:

- `transcript_nll` / `transcript_accuracy`: teacher-forced NLL (nats/token) and top-1 accuracy of the
  transcript tokens, next to a control where each row hears another row's clip (`control_*`). The difference,
  `content_gain_nll`, is what the audio itself tells the LLM about the words: 0 for an adapter that only
  learned a prompt, however low its loss.
- `repeat_wer`: word error rate of the greedy continuation (first line) against the transcript.

Rows that carry their own `prompt`, `continuation` and `answer` (spoken questions:
`salad-prepare-data --source definition_questions`) are answer probes instead: the prompt, the clip
and the continuation up to its answer (`Question: <|audio|>\nAnswer:`, the harness's frame), then the answer's
tokens scored, against the same shuffled-audio control. The gain there is what the clip tells the LLM about the
answer, the step from hearing the words to using them. `choice_accuracy` asks them as the harness asks its items:
the row's own answer against three other rows' answers (`choice_chance`: 1/4), picked by mean log-probability
per token.

`AlignmentProbeCallback` runs them every `probe_steps` optimizer steps and logs them with the losses;
`python -m trainers.distillation.probes --model ... --rows data/tts/eval.jsonl` runs them once and writes JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import jiwer
import numpy as np
import torch
from transformers import TrainerCallback
from trl import TrlParser

from modeling_salad import SaladForConditionalGeneration, SaladProcessor
from trainers.assets import load_salad

from .data import decode_row_audio, pad_sequences
from .transcript_cache import TranscriptCache

REPEAT_CUE = " Repeat what was said:"
CHOICE_OPTIONS = 4


@dataclass(frozen=True)
class RepeatPrompt:
    """How a probe asks the model to repeat a clip: in the raw format of the repeat training rows
    (`<|audio|> Repeat what was said: <transcript>`), or, for a model trained with `chat_format`, inside the
    LLM's chat template (user turn: the clip, then `instruction`; the transcript is the assistant's answer)."""

    chat: bool = False
    instruction: str = "Repeat what was said."

    def text(self, processor: SaladProcessor) -> str:
        """The prompt, with the clip as one audio token (the processor expands it)."""
        if not self.chat:
            return processor.audio_token + REPEAT_CUE
        # Rendered by the processor itself, as the pipeline and chat_format training render it; the clip is
        # a placeholder, the rendered text does not depend on it.
        placeholder = np.zeros(processor.sampling_rate // 10, dtype=np.float32)
        content = [{"type": "audio", "audio": placeholder}, {"type": "text", "text": self.instruction}]
        return processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )

    def transcript_ids(self, processor: SaladProcessor, transcript: str) -> list[int]:
        """The transcript's tokens as they follow the prompt: after a space in the raw format."""
        text = transcript if self.chat else " " + transcript
        return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class ProbeRow:
    text: str
    audio: np.ndarray
    prompt: str = ""  # answer probes: the text before the clip, ...
    cue: str | None = None  # ... the text between the clip and the answer ...
    answer: str | None = None  # ... and the answer scored (after a space); None: a repeat probe

    def parts(
        self, processor: SaladProcessor, prompt: RepeatPrompt
    ) -> tuple[list[int], list[int], list[int]]:
        """Token ids before the clip, after it, and of the scored target: the row's own question frame and
        answer, or `prompt`'s repeat frame and the transcript."""
        tokenizer = processor.tokenizer
        if self.answer is None:
            before, after = prompt.text(processor).split(processor.audio_token)
            target = prompt.transcript_ids(processor, self.text)
        else:
            before, after = self.prompt, self.cue
            target = tokenizer(" " + self.answer, add_special_tokens=False)["input_ids"]
        before_ids, after_ids = (
            tokenizer(part, add_special_tokens=False)["input_ids"] for part in (before, after)
        )
        return before_ids, after_ids, target

    def sequence(self, processor: SaladProcessor, prompt: RepeatPrompt) -> tuple[list[int], tuple[int, int]]:
        """The row's ids as the model reads them (the clip as its audio-token slots, then the target), and the
        target's span `(begin, length)`."""
        before, after, target = self.parts(processor, prompt)
        audio = [processor.audio_token_id] * processor.length_spec.num_tokens(self.audio.size)
        prompt_ids = before + audio + after
        return prompt_ids + target, (len(prompt_ids), len(target))


def question_fields(row: dict, where: str) -> dict:
    """An answer probe's `prompt`, `cue` and `answer` from a row's own `prompt`, `continuation` and `answer`
    (the continuation must end with the answer); none for a plain row."""
    if row.get("answer") is None or row.get("continuation") is None:
        return {}
    continuation, answer = row["continuation"], row["answer"].strip()
    if not answer or not continuation.rstrip().endswith(answer):
        raise ValueError(
            f"{where}: the continuation {continuation!r} does not end with the answer {answer!r}."
        )
    cue = continuation.rstrip()[: -len(answer)].rstrip(" ")
    return {"prompt": row.get("prompt") or "", "cue": cue, "answer": answer}


def load_probe_rows(path: str, num_rows: int, sampling_rate: int) -> list[ProbeRow]:
    """`num_rows` rows spread evenly over a jsonl file in the `trainers.distillation.data` schema (`text`, `audio`), so that
    a file written voice by voice gives every voice its share."""
    with open(path) as handle:
        lines = [line for line in handle if line.strip()]
    picked = sorted(set(np.linspace(0, len(lines) - 1, min(num_rows, len(lines))).round().astype(int)))
    rows = []
    for index in picked:
        row = json.loads(lines[index])
        audio = decode_row_audio(row["audio"], sampling_rate)
        rows.append(ProbeRow(row["text"], audio, **question_fields(row, f"{path}, line {index + 1}")))
    if len(rows) < 2:
        raise ValueError(f"{path} gave {len(rows)} probe rows; the shuffled-audio control needs at least 2.")
    return rows


def normalize_words(text: str) -> str:
    """Lower case, punctuation removed, spaces collapsed: WER on words, not on spelling conventions."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    references = [normalize_words(text) for text in references]
    hypotheses = [normalize_words(text) for text in hypotheses]
    return float(jiwer.wer(references, hypotheses))


def _batches(rows: list, size: int):
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.adapter.parameters())
    return parameter.device, parameter.dtype


def audio_inputs(
    model,
    processor,
    clips: Sequence[np.ndarray],
    items: list[int],
    device,
    transcript_cache: TranscriptCache | None = None,
) -> dict:
    """The audio inputs of a batch of rows, row r hearing `clips[items[r]]` (an item's options share its clip).

    Each distinct clip is prepared once; for a model whose adapter writes Whisper's transcript it is also
    transcribed once (`whisper_transcript`), not once per option: the transcript depends on the clip alone. With a
    `transcript_cache`, a clip that any model sharing this frozen Whisper transcribed before is not transcribed
    again: evaluating several checkpoints of one run then pays Whisper's search once."""
    distinct = list(dict.fromkeys(items))
    prepared = processor.prepare_audio([clips[i] for i in distinct])
    features = torch.from_numpy(prepared.inputs["input_features"]).to(device, model.dtype)
    mask = torch.from_numpy(prepared.inputs["input_features_mask"]).to(device)
    first_window = np.cumsum([0, *prepared.windows_per_clip])
    rows = torch.tensor(
        [
            w
            for i in items
            for w in range(first_window[distinct.index(i)], first_window[distinct.index(i) + 1])
        ],
        device=device,
    )
    inputs = {"input_features": features[rows], "input_features_mask": mask[rows]}
    adapter = getattr(model, "adapter", None)
    if adapter is not None and adapter.writes_text:
        transcript = (
            model.transcribe(features, mask)
            if transcript_cache is None
            else transcript_cache.transcripts(model, features, mask)
        )
        inputs["whisper_transcript"] = type(transcript)(*(part[rows] for part in transcript))
    return inputs


@torch.no_grad()
def target_scores(
    model: SaladForConditionalGeneration,
    processor: SaladProcessor,
    rows: list[ProbeRow],
    batch_size: int = 8,
    prompt: RepeatPrompt = RepeatPrompt(),
) -> list[tuple[float, int, int]]:
    """Each row's target (its transcript, or an answer probe's answer) teacher-forced after its clip: the summed NLL
    (nats), the tokens predicted top-1, and the target's length."""
    tokenizer = processor.tokenizer
    scores = []
    device, _ = _model_device_dtype(model)
    for batch in _batches(rows, batch_size):
        sequences, spans = zip(*(row.sequence(processor, prompt) for row in batch))
        # rows that hear one clip (a question's options) share it: it is prepared, and transcribed, once
        clips = [row.audio for row in batch]
        first_row = {}
        clip_rows = [first_row.setdefault(id(clip), k) for k, clip in enumerate(clips)]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        input_ids, attention_mask, _ = pad_sequences(list(sequences), pad, "right")
        hidden = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            **audio_inputs(model, processor, clips, clip_rows, device),
            return_last_hidden_state=True,
        ).last_hidden_state
        head = model.get_output_embeddings()
        for index, (begin, length) in enumerate(spans):
            logits = head(hidden[index, begin - 1 : begin - 1 + length]).float()
            targets = input_ids[index, begin : begin + length].to(logits.device)
            nll = float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            scores.append((nll, int((logits.argmax(-1) == targets).sum()), length))
    return scores


def transcript_scores(
    model: SaladForConditionalGeneration,
    processor: SaladProcessor,
    rows: list[ProbeRow],
    batch_size: int = 8,
    prompt: RepeatPrompt = RepeatPrompt(),
) -> tuple[float, float]:
    """Teacher-forced NLL (nats/token) and top-1 accuracy of the rows' targets after their clips, over all tokens."""
    nll_sum, hits, count = np.sum(target_scores(model, processor, rows, batch_size, prompt), axis=0)
    return float(nll_sum / count), float(hits / count)


def choice_options(rows: list[ProbeRow], num_options: int) -> list[list[str]]:
    """Each answer probe's options, its own answer first: the answers of the rows after it (cyclically), skipping
    any that repeat one already taken, as the distractors."""
    answers = [row.answer for row in rows]
    if len(set(answers)) < num_options:
        raise ValueError(
            f"A {num_options}-way choice needs {num_options} distinct answers among its rows; these {len(rows)} rows "
            f"have {len(set(answers))}: give more rows (more probe rows, or a larger batch) or fewer options."
        )
    options = []
    for index, answer in enumerate(answers):
        chosen = [answer]
        for other in answers[index + 1 :] + answers[:index]:
            if len(chosen) == num_options:
                break
            if other not in chosen:
                chosen.append(other)
        options.append(chosen)
    return options


def choice_accuracy(
    model: SaladForConditionalGeneration,
    processor: SaladProcessor,
    rows: list[ProbeRow],
    num_options: int = 4,
    batch_size: int = 8,
) -> float:
    """The answer probes as the harness asks its items: each row's clip, then each of `num_options` answers
    (`choice_options`) scored by its mean log-probability per token; the share of rows whose own answer wins. A
    leading indicator of the harness's spoken accuracy, on held-out questions of the training distribution (chance
    is `1 / num_options`)."""
    options = choice_options(rows, num_options)
    asked = [replace(row, answer=option) for row, row_options in zip(rows, options) for option in row_options]
    scores = target_scores(model, processor, asked, batch_size)
    mean_logprob = np.array([-nll / length for nll, _, length in scores]).reshape(len(rows), num_options)
    return float((mean_logprob.argmax(-1) == 0).mean())


@torch.no_grad()
def greedy_repeats(
    model: SaladForConditionalGeneration,
    processor: SaladProcessor,
    rows: list[ProbeRow],
    batch_size: int = 8,
    prompt: RepeatPrompt = RepeatPrompt(),
) -> list[str]:
    """Each clip in the repeat prompt, continued greedily; the first line of each continuation."""
    outputs, text = [], prompt.text(processor)
    for batch in _batches(rows, batch_size):
        inputs = processor(
            text=[text] * len(batch),
            audio=[row.audio for row in batch],
            padding_side="left",
            return_tensors="pt",
            add_special_tokens=not prompt.chat,  # a chat template writes any BOS itself
        )
        device, dtype = _model_device_dtype(model)
        inputs = {
            k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()
        }
        longest = max(len(processor.tokenizer(" " + row.text)["input_ids"]) for row in batch)
        generated = model.generate(
            **inputs, max_new_tokens=longest + 8, do_sample=False, suppress_tokens=[processor.audio_token_id]
        )
        texts = processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        outputs += [text.strip().split("\n")[0] for text in texts]
    return outputs


def shuffled_audio(rows: list[ProbeRow]) -> list[ProbeRow]:
    """The control: each row's transcript with the next row's clip, so the audio says nothing about the words."""
    return [replace(row, audio=rows[(i + 1) % len(rows)].audio) for i, row in enumerate(rows)]


def run_probes(
    model: SaladForConditionalGeneration,
    processor: SaladProcessor,
    rows: list[ProbeRow],
    with_generation: bool = True,
    prompt: RepeatPrompt = RepeatPrompt(),
) -> dict[str, float | list[str]]:
    """Every probe on `rows`; the control hears each row's clip shifted by one row."""
    was_training = model.training
    model.eval()
    try:
        nll, accuracy = transcript_scores(model, processor, rows, prompt=prompt)
        control_nll, control_accuracy = transcript_scores(
            model, processor, shuffled_audio(rows), prompt=prompt
        )
        results: dict[str, float | list[str]] = {
            "transcript_nll": nll,
            "control_nll": control_nll,
            "content_gain_nll": control_nll - nll,
            "transcript_accuracy": accuracy,
            "control_accuracy": control_accuracy,
        }
        if all(row.answer is not None for row in rows):
            # four options as the built-in set mostly has, fewer where the rows hold fewer distinct answers
            num_options = min(CHOICE_OPTIONS, len({row.answer for row in rows}))
            results["choice_accuracy"] = choice_accuracy(model, processor, rows, num_options)
            results["choice_chance"] = 1 / num_options
        references = [row.text for row in rows]
        if with_generation and all(row.answer is None for row in rows):
            repeats = greedy_repeats(model, processor, rows, prompt=prompt)
            results["repeat_wer"] = word_error_rate(references, repeats)
            results["repeat_examples"] = repeats[:4]
    finally:
        model.train(was_training)
    return results


class AlignmentProbeCallback(TrainerCallback):
    """Run the probes every `every_steps` optimizer steps (and at step 0) and log the numbers with the losses.

    Examples (strings) go to `<name>s.jsonl` in the output folder (`probes.jsonl`), next to every number, so a
    run's curve can be plotted and its repeats read after the fact; the logged numbers are `<name>_<probe>`.
    """

    def __init__(
        self,
        processor: SaladProcessor,
        rows: list[ProbeRow],
        every_steps: int,
        output_dir: str,
        prompt: RepeatPrompt = RepeatPrompt(),
        name: str = "probe",
    ):
        self.processor = processor
        self.rows = rows
        self.prompt = prompt
        self.every_steps = every_steps
        self.name = name
        self.path = Path(output_dir) / f"{name}s.jsonl"

    def _probe(self, args, state, model) -> None:
        results = run_probes(model, self.processor, self.rows, prompt=self.prompt)
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as handle:
                handle.write(json.dumps({"step": state.global_step, **results}) + "\n")
        numbers = {f"{self.name}_{k}": v for k, v in results.items() if isinstance(v, float)}
        state.log_history.append({"step": state.global_step, **numbers})
        print({"step": state.global_step, **{k: round(v, 4) for k, v in numbers.items()}})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self._probe(args, state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_steps == 0:
            self._probe(args, state, model)


@dataclass
class ProbeArguments:
    model: str = field(metadata={"help": "A SALAD checkpoint (path or Hub id)."})
    rows: str = field(
        default="data/tts/eval.jsonl", metadata={"help": "Held-out rows (jsonl with `text` and `audio`)."}
    )
    num_rows: int = field(default=32, metadata={"help": "Rows to probe (spread evenly over the file)."})
    output: str | None = field(default=None, metadata={"help": "Write the results here as JSON."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32 or bfloat16."})
    chat: bool = field(
        default=False,
        metadata={
            "help": "Ask in the LLM's chat template (a model trained with chat_format), not the raw cue."
        },
    )


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((ProbeArguments,)).parse_args_and_config(args=argv)
    model, processor = load_salad(args.model, getattr(torch, args.dtype))
    rows = load_probe_rows(args.rows, args.num_rows, processor.sampling_rate)
    results = run_probes(model, processor, rows, prompt=RepeatPrompt(chat=args.chat))
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
