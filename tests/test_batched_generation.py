"""A batch generates what its samples generate one by one (issue 31): for every adapter, clips from 0.3 to 40 s,
batches padded on either side, and both pipelines (speech-to-text, any-to-any) at batch size 1 and 3. Generated tokens are
compared, not only logits: a right-padded row predicts its first new token from a padding position."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_tiny, decoder_tiny, tone
from transformers import GenerationMixin, pipeline

from modeling_salad.modeling_salad import left_pad
from modeling_salad.pipeline_salad import SaladSpeechToTextPipeline

SR = 16000
SECONDS = [1.9, 0.3, 12.0, 40.0]
PROMPT = "<|audio|> In one word, the topic is"
NEW_TOKENS = 6


def tiny(adapter_type: str):
    return decoder_tiny() if adapter_type == "whisper_decoder" else build_tiny("whisper", adapter_type)


def clips() -> list:
    return [tone(seconds, SR, freq=200 + 150 * index, seed=index) for index, seconds in enumerate(SECONDS)]


def new_tokens(model, inputs) -> list[list[int]]:
    """Greedy new tokens of each row, up to and with the first end of sequence (a finished row is padded after)."""
    generated = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    rows = []
    for row in generated[:, inputs["input_ids"].shape[1] :].tolist():
        end = model.generation_config.eos_token_id
        rows.append(row[: row.index(end) + 1] if end in row else row)
    return rows


def test_left_pad_moves_trailing_padding_to_the_front_and_keeps_left_padded_rows():
    input_ids = torch.tensor([[5, 6, 7, 0, 0], [0, 8, 9, 4, 3], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    ids, moved = left_pad(input_ids, mask)
    assert ids.tolist() == [[0, 0, 5, 6, 7], [0, 8, 9, 4, 3], [1, 2, 3, 4, 5]]  # bitwise: integer token ids
    assert moved.tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]


@pytest.mark.slow
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("adapter_type", ["mlp", "transformer", "whisper_decoder"])
def test_batched_generation_equals_one_by_one(adapter_type, padding_side):
    model, processor = tiny(adapter_type)
    audio = clips()
    batch = processor(text=[PROMPT] * len(audio), audio=audio, sampling_rate=SR, padding_side=padding_side)
    assert len(set(batch["attention_mask"].sum(-1).tolist())) == len(audio), (
        "the rows should differ in length"
    )
    with torch.no_grad():
        batched = new_tokens(model, batch)
        alone = [new_tokens(model, processor(text=PROMPT, audio=clip, sampling_rate=SR))[0] for clip in audio]
    assert batched == alone


@pytest.mark.slow
@pytest.mark.parametrize("adapter_type", ["mlp", "whisper_decoder"])
def test_the_pipeline_batches_clips_of_any_length_as_it_answers_them_one_by_one(adapter_type):
    model, processor = tiny(adapter_type)
    pipe = SaladSpeechToTextPipeline(model=model, processor=processor)
    inputs = [{"array": clip, "sampling_rate": SR} for clip in clips()]
    kwargs = {"prompt": "What was said?", "max_new_tokens": NEW_TOKENS}
    alone = [pipe(item, **kwargs)["generated_text"] for item in inputs]
    for batch_size in (1, 3):
        assert [out["generated_text"] for out in pipe(inputs, batch_size=batch_size, **kwargs)] == alone


@pytest.mark.slow
@pytest.mark.parametrize("adapter_type", ["mlp", "whisper_decoder"])
def test_the_any_to_any_pipeline_batches_chats_with_clips_of_any_length(adapter_type, tmp_path):
    """Loaded the README's way, from a checkpoint folder: its config names our any-to-any pipeline."""
    model, processor = tiny(adapter_type)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    pipe = pipeline("any-to-any", model=str(tmp_path), trust_remote_code=True)
    chats = [
        [
            {
                "role": "user",
                "content": [{"type": "audio", "audio": clip}, {"type": "text", "text": "What was said?"}],
            }
        ]
        for clip in clips()
    ]
    kwargs = {"max_new_tokens": NEW_TOKENS, "return_full_text": False}
    alone = [pipe(text=chat, **kwargs)[0]["generated_text"] for chat in chats]
    for batch_size in (1, 3):
        batched = pipe(text=chats, batch_size=batch_size, **kwargs)
        assert [answers[0]["generated_text"] for answers in batched] == alone


def a_model_that_prefers_the_placeholder():
    """A tiny model whose LM head makes `<|audio|>` its likeliest next token, its processor, and a prompt with a clip."""
    model, processor = build_tiny("whisper", "mlp")
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[model.config.audio_token_id] = head.abs().max() * 50
    inputs = processor(text="Hear <|audio|>", audio=tone(0.5), return_tensors="pt")
    return model, processor, inputs


def test_the_audio_placeholder_is_never_generated():
    """A model that would write `<|audio|>` (here: its LM head made to prefer it) writes its next choice instead:
    a written placeholder would stand for audio that is not there, and the next step would have to refuse it."""
    model, processor, inputs = a_model_that_prefers_the_placeholder()
    audio_token = model.config.audio_token_id
    prompt_length = inputs["input_ids"].shape[1]
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False, suppress_tokens=[5])
    assert audio_token not in generated[0, prompt_length:].tolist()
    assert 5 not in generated[0, prompt_length:].tolist()  # the caller's own suppressions still hold
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    assert logits.argmax() == audio_token  # without the suppression, the placeholder would have been written


def test_a_callers_generation_config_keeps_the_placeholder_out_without_a_deprecation(monkeypatch):
    """With the caller's `generation_config`, the placeholder goes into a copy of it, not into a `suppress_tokens`
    argument beside it (which `generate` deprecates); the caller's config is left as it was."""
    model, processor, inputs = a_model_that_prefers_the_placeholder()
    audio_token = model.config.audio_token_id
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens, config.do_sample = 4, False
    received = {}
    generate = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        received.update(kwargs)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    generated = model.generate(**inputs, generation_config=config)
    assert audio_token not in generated[0, inputs["input_ids"].shape[1] :].tolist()
    assert "suppress_tokens" not in received
    assert audio_token in received["generation_config"].suppress_tokens
    assert (
        config.suppress_tokens == model.generation_config.suppress_tokens
    )  # the caller's config is unchanged
