"""Multiple-choice scoring by the log-probability of each option as a continuation of the prompt.

The prompt of every system is few-shot text examples followed by the item, then `Answer:`; each option is
scored as the continuation ` <option>`:

- `text`: the item's context and question as text (base LLM: the reference; SALAD model: retention);
- `speech`: the context and question spoken (one `<|audio|>` clip), the few-shot examples and the options
  as text: the question is heard, the answer is read;
- `cascade`: the clip transcribed by an ASR model, then the `text` prompt with the transcript;
- `prior`: the options with the item left out entirely (the option-prior control).

`chat_prompt` puts any of these prompts inside the LLM's chat template (the question in the user turn, the
assistant's reply opening with `Answer:`), for a model whose adapter was trained there (`chat_format`).

Scores: `logprob` is the sum of the option tokens' log-probabilities; `logprob_norm` divides it by the number
of option tokens (the length normalization the paper uses, so long options are not penalized for their
length). Accuracy is reported for both. Every `prompt + option` sequence is scored in batches (on a CPU a
batch of short sequences costs little more than one), projecting through the LM head only the positions that
predict option tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from modeling_salad import SaladForConditionalGeneration
from trainers.distillation.probes import audio_inputs
from trainers.distillation.transcript_cache import TranscriptCache

from .tasks import MultipleChoiceItem

ANSWER_CUE = "Answer:"


@dataclass
class ItemScores:
    """Per-option scores of one item under one system."""

    item_id: str
    logprob: list[float]
    logprob_norm: list[float]

    def choice(self, normalized: bool = True) -> int:
        scores = self.logprob_norm if normalized else self.logprob
        return int(np.argmax(scores))


def few_shot_block(examples: Sequence[MultipleChoiceItem]) -> str:
    """`Question: ... Answer: <correct option>` blocks, one blank line apart, ending with a blank line."""
    blocks = [f"Question: {ex.spoken_text}\n{ANSWER_CUE} {ex.options[ex.answer]}\n\n" for ex in examples]
    return "".join(blocks)


def text_prompt(item_text: str, shots: str) -> str:
    return f"{shots}Question: {item_text}\n{ANSWER_CUE}"


def prior_prompt(shots: str) -> str:
    """The option-prior control: the same frame with nothing asked."""
    return f"{shots}Question:\n{ANSWER_CUE}"


def user_turn(prompt: str) -> str:
    """What a `... Question: ...\nAnswer:` prompt asks in a chat's user turn: all before the answer cue, which
    opens the reply."""
    if not prompt.endswith(ANSWER_CUE):
        raise ValueError(f"A prompt framed as a chat must end with {ANSWER_CUE!r}; got ...{prompt[-40:]!r}.")
    return prompt[: -len(ANSWER_CUE)].rstrip("\n")


def chat_prompt(prompt: str, tokenizer) -> str:
    """A `... Question: ...\nAnswer:` prompt in the tokenizer's chat template: all before the cue is the user's
    turn, and the assistant's turn opens with the cue, so each option is scored as the start of its answer."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_turn(prompt)}], tokenize=False, add_generation_prompt=True
    )
    bos = tokenizer.bos_token
    if bos and rendered.startswith(bos) and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]:
        rendered = rendered[len(bos) :]  # the tokenizer adds it again when the prompt is tokenized
    return rendered + ANSWER_CUE


def option_token_ids(tokenizer, options: Sequence[str]) -> list[list[int]]:
    ids = [tokenizer(" " + option, add_special_tokens=False)["input_ids"] for option in options]
    if any(not option for option in ids):
        raise ValueError(f"An option tokenizes to nothing: {options!r}.")
    return ids


def hidden_states_and_head(model, inputs: dict) -> tuple[torch.Tensor, torch.nn.Module]:
    """Final hidden states and the LM head of a SALAD model, a causal LM, or anything exposing
    `hidden_states_and_head` (e.g. the SALAD model's LLM with LoRA off): logits are then projected only at
    the option positions, never for whole batches of sequences."""
    if hasattr(model, "hidden_states_and_head"):
        return model.hidden_states_and_head(**inputs)
    if "input_features" in inputs or hasattr(model, "audio_tower"):
        return model(**inputs, return_last_hidden_state=True).last_hidden_state, model.get_output_embeddings()
    return model.get_decoder()(**inputs).last_hidden_state, model.get_output_embeddings()


@torch.no_grad()
def score_sequences(
    model,
    prompts: Sequence[list[int]],
    options: Sequence[list[list[int]]],
    pad_token_id: int,
    clips: Sequence[np.ndarray] | None = None,
    processor=None,
    batch_size: int = 16,
    transcript_cache: TranscriptCache | None = None,
) -> list[tuple[list[float], list[float]]]:
    """Sum and mean log-probability of every option of every item, as `prompt + option` sequences in batches.

    `prompts[i]` are the token ids of item i's prompt (audio placeholders already expanded when `clips[i]` is
    its audio); `options[i]` the token ids of its options. Sequences are right-padded; only the positions that
    predict option tokens go through the LM head. `transcript_cache` keeps the clips' Whisper transcripts
    (`audio_inputs`).
    """
    sequences = [(i, k) for i in range(len(prompts)) for k in range(len(options[i]))]
    results = [([0.0] * len(opts), [0.0] * len(opts)) for opts in options]
    device = next(model.parameters()).device
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        rows = [prompts[i] + options[i][k] for i, k in batch]
        longest = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for r, row in enumerate(rows):
            input_ids[r, : len(row)] = torch.tensor(row)
            attention_mask[r, : len(row)] = 1
        inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        if clips is not None:
            clip_of_row = [i for i, _ in batch]
            inputs.update(audio_inputs(model, processor, clips, clip_of_row, device, transcript_cache))
        hidden, head = hidden_states_and_head(model, inputs)
        for r, (i, k) in enumerate(batch):
            begin, option = len(prompts[i]), options[i][k]
            logits = head(hidden[r, begin - 1 : begin - 1 + len(option)])
            results[i][0][k], results[i][1][k] = option_scores(logits, option)
    return results


def option_scores(logits: torch.Tensor, option: list[int]) -> tuple[float, float]:
    """Sum and mean log-probability of an option's tokens, from the logits of the positions that predict them
    (`[len(option), vocab]`, any float dtype: the softmax is taken in fp32). Every system scores options here."""
    token_logprobs = torch.log_softmax(logits.float(), dim=-1)[
        torch.arange(len(option)), torch.tensor(option)
    ]
    return float(token_logprobs.sum()), float(token_logprobs.mean())


def score_text_items(
    model, tokenizer, items: Sequence[MultipleChoiceItem], prompts: Sequence[str], batch_size: int = 16
) -> list[ItemScores]:
    """Options after text prompts, for a causal LM or a SALAD model (no audio)."""
    prompt_ids = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    option_ids = [option_token_ids(tokenizer, item.options) for item in items]
    scores = score_sequences(model, prompt_ids, option_ids, pad_id(tokenizer), batch_size=batch_size)
    return [ItemScores(item.id, sums, means) for item, (sums, means) in zip(items, scores)]


def score_speech_items(
    model,
    processor,
    items: Sequence[MultipleChoiceItem],
    clips: Sequence[np.ndarray],
    prompt: str,
    batch_size: int = 16,
    transcript_cache: TranscriptCache | None = None,
) -> list[ItemScores]:
    """Options after each spoken item (one clip at the processor's rate) in `prompt`, a prompt holding one
    audio token where the question's text would be (`text_prompt(processor.audio_token, shots)`).
    `transcript_cache`: see `score_sequences`."""
    prompt_ids = [
        processor.expand_placeholders([prompt], [processor.length_spec.num_tokens(clip.size)])[0]
        for clip in clips
    ]
    prompt_ids = [processor.tokenizer(text)["input_ids"] for text in prompt_ids]
    option_ids = [option_token_ids(processor.tokenizer, item.options) for item in items]
    scores = score_sequences(
        model, prompt_ids, option_ids, pad_id(processor.tokenizer), clips=clips, processor=processor,
        batch_size=batch_size, transcript_cache=transcript_cache,
    )  # fmt: skip
    return [ItemScores(item.id, sums, means) for item, (sums, means) in zip(items, scores)]


def pad_id(tokenizer) -> int:
    """The id right padding is written with: any id serves, since padded positions are masked and come after every
    scored token; the tokenizer's pad or end token where it has one (a tekken file loaded as another class has
    neither)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


class LoraOffLM(torch.nn.Module):
    """The SALAD model's own LLM with LoRA switched off: the original text LLM when it was frozen or LoRA-tuned."""

    def __init__(self, model: SaladForConditionalGeneration):
        super().__init__()
        self.model = model

    def hidden_states_and_head(self, **inputs) -> tuple[torch.Tensor, torch.nn.Module]:
        with self.model.lora_disabled():
            hidden = self.model.language_model.get_decoder()(**inputs).last_hidden_state
        return hidden, self.model.get_output_embeddings()
