"""Multiple-choice scoring by the log-probability of each option as a continuation of the prompt.

The prompt of every system is few-shot text examples followed by the item, then `Answer:`; each option is
scored as the continuation ` <option>`:

- `text`: the item's context and question as text (base LLM: the reference; SALAD model: retention);
- `speech`: the context and question spoken (one `<|audio|>` clip), the few-shot examples and the options
  as text: the question is heard, the answer is read;
- `cascade`: the clip transcribed by an ASR model, then the `text` prompt with the transcript;
- `prior`: the options with the item left out entirely (the option-prior control).

Scores: `logprob` is the sum of the option tokens' log-probabilities; `logprob_norm` divides it by the number
of option tokens (the length normalization the paper uses, so long options are not penalized for their
length). Accuracy is reported for both. The prompt runs once per item (with its audio); the options then run
as one batch on a copy of the prompt's KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

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


@torch.no_grad()
def score_continuations(
    model, prompt_inputs: dict, option_ids: list[list[int]], pad_token_id: int
) -> tuple[list[float], list[float]]:
    """Sum and mean log-probability of each option's tokens after one prompt (batch of one).

    The prompt (with its audio, if any) runs once; its KV cache is repeated for the options, which run as one
    right-padded batch continuing at the prompt's positions.
    """
    prompt = model(**prompt_inputs, use_cache=True, logits_to_keep=1)
    prompt_length = prompt_inputs["input_ids"].shape[1]
    first_logprobs = torch.log_softmax(prompt.logits[0, -1].float(), dim=-1)
    num_options = len(option_ids)
    longest = max(len(ids) for ids in option_ids)
    ids = torch.full((num_options, longest), pad_token_id, dtype=torch.long)
    mask = torch.zeros((num_options, longest), dtype=torch.long)
    for row, option in enumerate(option_ids):
        ids[row, : len(option)] = torch.tensor(option)
        mask[row, : len(option)] = 1
    cache = prompt.cache if hasattr(prompt, "cache") else prompt.past_key_values
    cache.batch_repeat_interleave(num_options)
    prompt_mask = prompt_inputs["attention_mask"].repeat(num_options, 1)
    positions = torch.arange(prompt_length, prompt_length + longest)[None].expand(num_options, -1)
    options = model(
        input_ids=ids.to(prompt_mask.device),
        attention_mask=torch.cat([prompt_mask, mask.to(prompt_mask.device)], dim=1),
        position_ids=positions.to(prompt_mask.device),
        cache=cache,
        use_cache=True,
    )
    logprobs = torch.log_softmax(options.logits.float(), dim=-1).cpu()
    sums, means = [], []
    for row, option in enumerate(option_ids):
        token_logprobs = [first_logprobs[option[0]].item()]
        token_logprobs += [logprobs[row, k - 1, option[k]].item() for k in range(1, len(option))]
        sums.append(float(np.sum(token_logprobs)))
        means.append(float(np.mean(token_logprobs)))
    return sums, means


def option_token_ids(tokenizer, options: Sequence[str]) -> list[list[int]]:
    ids = [tokenizer(" " + option, add_special_tokens=False)["input_ids"] for option in options]
    if any(not option for option in ids):
        raise ValueError(f"An option tokenizes to nothing: {options!r}.")
    return ids


def score_text(model, tokenizer, item: MultipleChoiceItem, prompt: str) -> ItemScores:
    """Options after a text prompt, for a causal LM or a SALAD model (no audio)."""
    inputs = tokenizer(prompt, return_tensors="pt")
    inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    inputs = {key: value.to(model.device) for key, value in inputs.items()}
    sums, means = score_continuations(
        model, inputs, option_token_ids(tokenizer, item.options), _pad_id(tokenizer)
    )
    return ItemScores(item.id, sums, means)


def score_speech(model, processor, item: MultipleChoiceItem, audio: np.ndarray, shots: str) -> ItemScores:
    """Options after the spoken item (one clip at the processor's sampling rate) framed by the text prompt."""
    prompt = text_prompt(processor.audio_token, shots)
    inputs = processor(text=prompt, audio=audio, sampling_rate=processor.sampling_rate)
    inputs = {key: value.to(model.device) for key, value in inputs.items()}
    if "input_features" in inputs:
        inputs["input_features"] = inputs["input_features"].to(model.dtype)
    option_ids = option_token_ids(processor.tokenizer, item.options)
    sums, means = score_continuations(model, inputs, option_ids, _pad_id(processor.tokenizer))
    return ItemScores(item.id, sums, means)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
