"""The `"whisper_decoder"` adapter: Whisper's own decoder transcribes each window, the LM's tokenizer reads the
transcript as text, and each of its tokens becomes one LM embedding (the LM's own, plus a trained residual),
right-aligned in the window's audio-token slots; the LM reads the filled slots as if the empty ones were not there,
and a fresh adapter hands it exactly what a cascade of the same two models would."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    DECODER_END as END,
)
from conftest import (
    DECODER_PIECES,
    OTHER_INSTANCE_ULPS,
    OTHER_PATH_ULPS,
    assert_close_in_dtype,
    backward_through_the_lm,
    decoder_tiny,
    make_speech_tokenizer,
    make_tokenizer,
    tone,
)
from conftest import (
    DECODER_PROMPT as PROMPT,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers import (
    DynamicCache,
    GenerationMixin,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutput

from modeling_salad import SaladConfig, SaladForConditionalGeneration, TranscriptTokenizers
from modeling_salad.adapters_salad import (
    SPEECH_TOKENIZER_FOLDER,
    AudioWindows,
    WhisperTranscript,
    right_align,
    vocabulary_logits,
)
from modeling_salad.modeling_salad import whisper_padded_features, window_lengths
from trainers.assets import load_salad
from trainers.distillation.config import SaladModelArguments
from trainers.distillation.train import load_model_and_processor

SR = 16000


def end_text_after(model, num_tokens: int) -> None:
    """Make the tiny decoder write text for exactly `num_tokens` steps and then the end of text: its positions
    past `num_tokens` (the prompt counts) push every state towards the end token's embedding."""
    decoder = model.adapter.decoder
    with torch.no_grad():
        decoder.embed_positions.weight[len(PROMPT) - 1 + num_tokens :] += (
            50.0 * decoder.embed_tokens.weight[END]
        )
        decoder.layer_norm.weight.fill_(1.0)


def decoder_embeddings(model, input_features, input_features_mask):
    """`(embeds, keep, token_mask)` of the adapter's one call on the model's encoded windows."""
    windows = model.encode_windows(input_features, input_features_mask)
    embeds, keep = model.adapter(windows, model.get_input_embeddings().weight)
    return embeds, keep, windows.token_mask


def test_right_align_moves_each_windows_tokens_to_the_end_of_its_slots():
    embeds = torch.arange(1.0, 7.0).reshape(2, 3, 1)  # window 0: tokens 1, 2, 3; window 1: 4, 5, 6
    token_mask = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    aligned, keep = right_align(embeds, torch.tensor([2, 3]), token_mask)
    assert keep.tolist() == [[False, False, True, True, False], [False, False, True, True, True]]
    assert aligned[..., 0].tolist() == [[0, 0, 1, 2, 0], [0, 0, 4, 5, 6]]


def piece_ids(*pieces: str) -> list[int]:
    return [DECODER_PIECES.index(piece) for piece in pieces]


def test_the_lm_reads_whispers_transcript_as_its_own_tokenizer_writes_it():
    tokenizers = TranscriptTokenizers(speech=make_speech_tokenizer(), text=make_tokenizer())
    whisper = piece_ids("\u0120what", "\u0120is", "\u0120qu", "ick", "\u012042", "?")
    ids, sources = tokenizers.read(whisper, opens_with_space=False)
    assert ids == tokenizers.text("what is quick 42?", add_special_tokens=False)["input_ids"]
    assert tokenizers.text.decode(ids) == "what is quick 42?"
    # each LM token reads the state of the Whisper token its text starts in ("quick" starts in "qu")
    starts = [tokenizers.text.decode(ids[:k]) for k in range(len(ids))]
    assert sources == [sum(len(tokenizers.speech.decode(whisper[: j + 1]).lstrip()) <= len(start) for j in
                           range(len(whisper))) for start in starts]  # fmt: skip
    spaced, _ = tokenizers.read(whisper, opens_with_space=True)
    assert spaced == tokenizers.text(" what is quick 42?", add_special_tokens=False)["input_ids"]
    assert tokenizers.read([], opens_with_space=True) == ([], [])


def test_special_tokens_spelled_out_in_a_transcript_are_read_as_text():
    speech = make_speech_tokenizer()
    speech.add_tokens(["<|audio|>"])  # a Whisper that can spell the LM's placeholder out
    tokenizers = TranscriptTokenizers(speech=speech, text=make_tokenizer())
    ids, _ = tokenizers.read([*piece_ids("\u0120the"), speech.convert_tokens_to_ids("<|audio|>")], False)
    assert tokenizers.text.convert_tokens_to_ids("<|audio|>") not in ids
    assert tokenizers.text.decode(ids) == "the<|audio|>"


def test_a_fresh_adapter_hands_the_lm_exactly_the_tokens_of_the_cascade():
    """Residual at zero: the LM's input embeddings are exactly those of its tokenizer's ids for the prompt with
    Whisper's transcript written in place of the clip, and its logits are the LM's on that text."""
    model, processor = decoder_tiny()
    end_text_after(model, 3)
    model.adapter.init_weights()  # what from_pretrained_components does: the residual at zero
    assert model.adapter.down_proj.weight.abs().sum() == 0
    for clip in (tone(1.0, SR), tone(1.6, SR, 500, seed=1)):
        inputs = processor(text="Question: <|audio|>\nAnswer:", audio=clip, sampling_rate=SR)
        with torch.no_grad():
            transcript = model.transcribe(inputs["input_features"], inputs["input_features_mask"])
            embeds, dropped = model.embed_inputs(
                inputs["input_ids"], inputs["input_features"], inputs["input_features_mask"]
            )
            spoken = model.adapter.tokenizers.speech.decode(transcript.ids[0, : transcript.counts[0]])
            text = processor.tokenizer(f"Question: {spoken.strip()}\nAnswer:", return_tensors="pt")
            assert torch.equal(  # bitwise: the same embedding rows, plus a residual of exactly zero
                embeds[0, ~dropped[0]], model.get_input_embeddings()(text["input_ids"])[0]
            )
            assert_close_in_dtype(
                model(**inputs).logits[0, -1],
                model.language_model(**text).logits[0, -1],
                ulps=OTHER_PATH_ULPS,
            )


def test_the_prompts_space_before_a_clip_is_taken_over_and_a_long_clips_windows_follow_each_other():
    model, processor = decoder_tiny()
    end_text_after(model, 2)
    tokenizer = processor.tokenizer
    space, audio = model.adapter.tokenizers.space_id, processor.audio_token_id
    for text, opens, absorbed in [
        ("Question: <|audio|>", [True], 1),
        ("Question:<|audio|>", [True], 0),  # after a mark, as after a word: running text
        ("Question:\n<|audio|>", [False], 0),
        ("<|im_start|><|audio|>", [False], 0),  # after markup
        ("<|audio|> and <|audio|>", [False, True], 1),
    ]:
        inputs = processor(text=text, audio=[tone(0.5, SR)] * text.count("<|audio|>"), sampling_rate=SR)
        input_ids = inputs["input_ids"]
        placeholder = input_ids == audio
        windows = model.encode_windows(inputs["input_features"], inputs["input_features_mask"])
        opens_with_space, dropped = model.spaces_before_windows(
            input_ids, placeholder, windows.token_mask.sum(-1)
        )
        assert opens_with_space.tolist() == opens, text
        assert int(dropped.sum()) == absorbed and bool((input_ids[dropped] == space).all()), text
    # a 45 s clip is cut into two windows: the second continues the first, with a space
    inputs = processor(text="Question:\n<|audio|>", audio=tone(45.0, SR), sampling_rate=SR)
    windows = model.encode_windows(inputs["input_features"], inputs["input_features_mask"])
    opens_with_space, dropped = model.spaces_before_windows(
        inputs["input_ids"], inputs["input_ids"] == audio, windows.token_mask.sum(-1)
    )
    assert opens_with_space.tolist() == [False, True] and not dropped.any()
    assert tokenizer.convert_ids_to_tokens([space]) == ["\u0120"]


def test_a_transcript_longer_than_its_slots_in_lm_tokens_is_cut_there_with_a_warning(caplog):
    model, _ = decoder_tiny()
    whisper = piece_ids("\u012042", "\u012042")  # two Whisper tokens, six LM tokens: " ", "4", "2" twice
    transcript = WhisperTranscript(
        ids=torch.tensor([whisper, whisper]), states=torch.zeros(2, 2, 8), counts=torch.tensor([2, 1])
    )
    windows = AudioWindows(
        features=torch.zeros(2, 1, 1), feature_lengths=torch.ones(2, dtype=torch.long), encoder_states=torch.zeros(1),
        token_mask=torch.tensor([[True] * 4, [True] * 4]), opens_with_space=torch.tensor([True, True]),
    )  # fmt: skip
    full = model.adapter.tokenizers.read(whisper, opens_with_space=True)[0]
    assert len(full) == 6
    with caplog.at_level(logging.WARNING):
        ids, sources, counts = model.adapter.transcript_tokens(transcript, windows)
    assert counts.tolist() == [4, 3] and ids[0].tolist() == full[:4] and sources[0].tolist() == [0, 0, 0, 1]
    assert ids[1, :3].tolist() == full[:3] and sources[1, :3].tolist() == [0, 0, 0]
    assert "came to more LM tokens (6) than the window has audio-token slots (4)" in caplog.text


def test_a_model_without_its_tokenizers_says_how_to_attach_them():
    model, processor = decoder_tiny()
    model.adapter.tokenizers = None
    inputs = processor(text="Say <|audio|>", audio=tone(0.5, SR), sampling_rate=SR)
    with pytest.raises(ValueError, match="TranscriptTokenizers"):
        model(**inputs)


def test_transcripts_end_at_the_end_of_text_or_at_the_slots_with_a_warning(caplog):
    model, processor = decoder_tiny()
    end_text_after(model, 3)
    clips = [tone(1.0, SR), tone(0.05, SR, 600, seed=1)]  # 26 slots, and 2: too few for 3 tokens
    inputs = processor(audio=clips, sampling_rate=SR)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        _, keep, token_mask = decoder_embeddings(
            model, inputs["input_features"], inputs["input_features_mask"]
        )
        transcript = model.transcribe(inputs["input_features"], inputs["input_features_mask"])
    assert token_mask.sum(-1).tolist() == [26, 2] and transcript.counts.tolist() == [3, 2]
    lm_tokens = len(model.adapter.tokenizers.read(transcript.ids[0, :3].tolist(), opens_with_space=False)[0])
    assert keep.sum(-1).tolist() == [lm_tokens, 2]
    assert "1 audio window(s) filled all their audio-token slots" in caplog.text


def test_windows_transcribed_in_a_batch_equal_each_alone():
    model, processor = decoder_tiny()
    end_text_after(model, 4)
    clips = [tone(1.3, SR), tone(0.7, SR, 500, seed=2), tone(2.1, SR, 800, seed=3)]
    batch = processor(audio=clips, sampling_rate=SR)
    with torch.no_grad():
        embeds, keep, token_mask = decoder_embeddings(
            model, batch["input_features"], batch["input_features_mask"]
        )
        for row, clip in enumerate(clips):
            single = processor(audio=clip, sampling_rate=SR)
            alone, alone_keep, _ = decoder_embeddings(
                model, single["input_features"], single["input_features_mask"]
            )
            length = int(token_mask[row].sum())
            assert keep[row, :length].tolist() == alone_keep[0].tolist()
            assert_close_in_dtype(embeds[row, :length], alone[0], ulps=OTHER_PATH_ULPS)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_with_less_silence_whisper_reads_less_and_a_batch_still_equals_each_window_alone(num_beams):
    """With `adapter_decoder_pad_seconds` (here 1 s) Whisper reads each window followed by at least that much
    silence, up to a whole number of seconds: windows of 1.3, 0.7 and 0.2 s are read as 3, 2 and 2 s instead of 30
    s, and one of 29.5 s as 30 s. Windows read at different lengths share a batch, and each is transcribed as it is
    alone: its encoder frames are masked past its own length, and the decoder reads each length on its own (two
    windows of one length, with different slots, end at different steps of one search)."""
    model, processor = decoder_tiny(adapter_decoder_pad_seconds=1.0, adapter_decoder_num_beams=num_beams)
    lean_towards_the_end(model, 0.3)
    clips = [
        tone(1.3, SR),
        tone(0.7, SR, 500, seed=2),
        tone(0.2, SR, 800, seed=3),
        tone(29.5, SR, 600, seed=4),
    ]
    batch = processor(audio=clips, sampling_rate=SR)
    frames = model.whisper_input_frames(window_lengths(batch["input_features_mask"]), pad_seconds=1.0)
    assert frames.tolist() == [300, 200, 200, 3000]  # at most Whisper's 30 s
    with torch.no_grad():
        windows = model.encode_windows(batch["input_features"], batch["input_features_mask"])
        transcript = model.adapter.transcribe(windows)
        assert windows.encoder_lengths.tolist() == [150, 100, 100, 1500]
        for row, clip in enumerate(clips):
            single = processor(audio=clip, sampling_rate=SR)
            alone_windows = model.encode_windows(single["input_features"], single["input_features_mask"])
            alone = model.adapter.transcribe(alone_windows)
            length = int(windows.encoder_lengths[row])
            assert alone_windows.encoder_states.shape[1] == length
            assert_close_in_dtype(
                windows.encoder_states[row, :length], alone_windows.encoder_states[0], ulps=OTHER_PATH_ULPS
            )
            count = int(alone.counts[0])
            assert int(transcript.counts[row]) == count and count > 0
            assert transcript.ids[row, :count].tolist() == alone.ids[0, :count].tolist()
            assert_close_in_dtype(
                transcript.states[row, :count], alone.states[0, :count], ulps=OTHER_PATH_ULPS
            )


@pytest.mark.parametrize("num_beams", [1, 3])
def test_a_window_whisper_fails_to_stop_on_short_silence_is_read_again_over_30_s(num_beams):
    """With `adapter_decoder_pad_seconds`, a window whose short read runs to its slots is read again as by default
    (30 s): its transcript is the 30 s model's, while a window of the same batch whose short read ended keeps it.
    Here the decoder ends after 4 tokens: the 0.1 s window has fewer slots and is cut, the 2 s window is not."""
    model, processor = decoder_tiny(adapter_decoder_pad_seconds=1.0, adapter_decoder_num_beams=num_beams)
    full, _ = decoder_tiny(adapter_decoder_num_beams=num_beams)
    end_text_after(model, 4)
    full.load_state_dict(model.state_dict())
    clips = [tone(0.1, SR), tone(2.0, SR, 500, seed=2)]
    batch = processor(audio=clips, sampling_rate=SR)
    with torch.no_grad():
        windows = model.encode_windows(batch["input_features"], batch["input_features_mask"])
        short = model.adapter.search(windows)
        slots = model.adapter.max_tokens(windows)
        assert model.adapter.failed_to_stop(short, windows).tolist() == [True, False]
        assert int(short.counts[0]) == int(slots[0]) < 4 == int(short.counts[1])
        transcript = model.transcribe(batch["input_features"], batch["input_features_mask"])
        again = full.transcribe(batch["input_features"], batch["input_features_mask"])
    count = int(again.counts[0])
    assert int(transcript.counts[0]) == count
    assert transcript.ids[0, :count].tolist() == again.ids[0, :count].tolist()
    assert_close_in_dtype(transcript.states[0, :count], again.states[0, :count], ulps=OTHER_PATH_ULPS)
    assert not torch.allclose(transcript.states[0, :count], short.states[0, :count])  # it was read again
    assert transcript.ids[1, :4].tolist() == short.ids[1, :4].tolist() and int(transcript.counts[1]) == 4
    assert_close_in_dtype(transcript.states[1, :4], short.states[1, :4], ulps=OTHER_PATH_ULPS)


def test_full_windows_reads_every_window_over_30_s_as_the_cascade_does():
    """`encode_windows(..., full_windows=True)` of a model that reads short gives the 30 s model's transcript (the
    cascade's), computed the same way, and a window already read over 30 s is never read again."""
    model, processor = decoder_tiny(adapter_decoder_pad_seconds=1.0, adapter_decoder_num_beams=3)
    full, _ = decoder_tiny(adapter_decoder_num_beams=3)
    end_text_after(model, 4)
    full.load_state_dict(model.state_dict())
    batch = processor(audio=[tone(0.1, SR), tone(2.0, SR, 500, seed=2)], sampling_rate=SR)
    features, mask = batch["input_features"], batch["input_features_mask"]
    with torch.no_grad():
        assert model.read_short(model.encode_windows(features, mask)).tolist() == [True, True]
        windows = model.encode_windows(features, mask, full_windows=True)
        assert not model.read_short(windows).any()
        transcript = model.transcribe_windows(windows)
        expected = full.transcribe(features, mask)
    assert torch.equal(transcript.counts, expected.counts) and torch.equal(transcript.ids, expected.ids)
    assert torch.equal(transcript.states, expected.states)


def test_a_window_read_again_under_bf16_autocast_joins_the_batch_in_one_dtype():
    """Under bf16 autocast (the trainer's on a CPU with bf16 units) the 30 s read goes through Whisper's own encoder
    and the short read through our layer loop, whose states come out in different dtypes; the windows read again
    and those kept still make one transcript (`make demo` failed here after its training step)."""
    model, processor = decoder_tiny(adapter_decoder_pad_seconds=1.0, adapter_decoder_num_beams=3)
    end_text_after(model, 4)
    batch = processor(audio=[tone(0.1, SR), tone(2.0, SR, 500, seed=2)], sampling_rate=SR)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        transcript = model.transcribe(batch["input_features"], batch["input_features_mask"])
    assert transcript.counts[1] == 4 and transcript.states.dtype == torch.float32
    assert torch.isfinite(transcript.states).all()


def test_a_transcript_that_repeats_four_tokens_failed_to_stop():
    """Whisper writing its sentence again on short silence shows as a run of `REPEAT_NGRAM` tokens that comes
    twice; three repeated tokens, or a repeat past the transcript's end (padding), do not count."""
    model, _ = decoder_tiny()
    ids = torch.tensor(
        [[5, 6, 7, 8, 9, 5, 6, 7, 8, 0], [5, 6, 7, 8, 9, 5, 6, 7, 0, 0], [5, 6, 7, 8, 5, 6, 7, 8, 0, 0]]
    )
    transcript = WhisperTranscript(ids, torch.zeros(3, 10, 4), torch.tensor([9, 8, 4]))
    windows = AudioWindows(
        features=torch.zeros(3, 4, 8), feature_lengths=torch.full((3,), 8), encoder_states=None,
        token_mask=torch.ones(3, 12, dtype=torch.bool),
    )  # fmt: skip
    assert model.adapter.failed_to_stop(transcript, windows).tolist() == [True, False, False]


def tiny_whisper_like(model) -> WhisperForConditionalGeneration:
    """transformers' own Whisper with the weights of a tiny SALAD model's encoder and decoder."""
    whisper = WhisperForConditionalGeneration(model.config.audio_config).eval()
    whisper.model.encoder.load_state_dict(model.audio_tower.state_dict())
    whisper.model.decoder.load_state_dict(model.adapter.decoder.state_dict())
    return whisper


def lean_towards_the_end(model, strength: float) -> None:
    """Make the end of text likelier at every step past the prompt, by `strength` of its embedding."""
    decoder = model.adapter.decoder
    with torch.no_grad():
        decoder.embed_positions.weight[len(PROMPT) :] += strength * decoder.embed_tokens.weight[END]
        decoder.layer_norm.weight.fill_(1.0)


@pytest.mark.parametrize("ending", ["at the slots", "after 3 tokens", "beam by beam"])
def test_the_beam_search_finds_what_transformers_generate_finds(ending):
    """With `num_beams` > 1 the decoder searches as `generate` does (the speech-recognition pipeline's 5 beams), with
    its finished-beam bookkeeping, mean log-probability scores and early stop, so the LLM reads the cascade's
    transcript: windows that run to their slots (the random decoder rarely ends), that all end after 3 tokens, and
    whose beams end at different lengths (the best is not the longest: 7 tokens against 9 and 10). The states are
    the decoder's at each chosen token."""
    model, processor = decoder_tiny(adapter_decoder_num_beams=4)
    if ending == "after 3 tokens":
        end_text_after(model, 3)
    elif ending == "beam by beam":
        lean_towards_the_end(model, 0.5)
    clips = [tone(0.9, SR), tone(0.9, SR, 500, seed=2), tone(0.9, SR, 800, seed=3)]  # equal slots: one limit
    inputs = processor(audio=clips, sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        windows = model.encode_windows(inputs["input_features"], inputs["input_features_mask"])
        slots = windows.token_mask.sum(-1)
        ours = model.adapter.transcribe(windows)
        reference = GenerationMixin.generate(
            tiny_whisper_like(model), encoder_outputs=BaseModelOutput(last_hidden_state=windows.encoder_states),
            decoder_input_ids=torch.tensor([PROMPT] * len(clips)), num_beams=4, max_new_tokens=int(slots[0]),
            eos_token_id=END, pad_token_id=END, suppress_tokens=model.adapter.suppressed,
            begin_suppress_tokens=model.adapter.suppressed_first, do_sample=False, length_penalty=1.0,
        )  # fmt: skip
        whisper = tiny_whisper_like(model)
        reference_states = whisper.model.decoder(
            input_ids=reference, encoder_hidden_states=windows.encoder_states
        ).last_hidden_state[:, len(PROMPT) - 1 :]
    for row, tokens in enumerate(reference[:, len(PROMPT) :].tolist()):
        expected = tokens[: tokens.index(END)] if END in tokens else tokens
        assert ours.ids[row, : ours.counts[row]].tolist() == expected
        # the state behind each token: the decoder's output at the position before it
        assert_close_in_dtype(
            ours.states[row, : len(expected)],
            reference_states[row, : len(expected)],
            ulps=OTHER_INSTANCE_ULPS,
        )
    expected_counts = {"at the slots": int(slots[0]), "after 3 tokens": 3, "beam by beam": 7}[ending]
    assert ours.counts.tolist() == [expected_counts] * len(clips)


def test_the_lm_reads_only_the_filled_slots_in_forward_and_generation():
    model, processor = decoder_tiny()
    end_text_after(model, 2)
    texts = ["Hear <|audio|>:", "A longer prompt first, then <|audio|> and a question:"]
    clips = [tone(1.2, SR), tone(0.8, SR, 600, seed=3)]
    batch = processor(text=texts, audio=clips, sampling_rate=SR, padding_side="left")
    kwargs = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
    generated = model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1] :]
    for row, (text, clip) in enumerate(zip(texts, clips)):
        single = processor(text=text, audio=clip, sampling_rate=SR)
        with torch.no_grad():
            embeds, dropped = model.embed_inputs(
                single["input_ids"], single["input_features"], single["input_features_mask"]
            )
            transcript = model.transcribe(single["input_features"], single["input_features_mask"])
        lm_tokens = model.adapter.tokenizers.read(transcript.ids[0, :2].tolist(), opens_with_space=True)[0]
        assert transcript.counts.tolist() == [2] and lm_tokens
        assert int((~dropped[0] & (single["input_ids"][0] == processor.audio_token_id)).sum()) == len(
            lm_tokens
        )
        reference = model.language_model.generate(inputs_embeds=embeds[:, ~dropped[0]], **kwargs)
        assert generated[row].tolist() == reference[0, -5:].tolist()
    uncached = model.generate(**batch, **kwargs, use_cache=False)[:, batch["input_ids"].shape[1] :]
    assert generated.tolist() == uncached.tolist()


def test_forward_equals_the_lm_on_the_sequence_without_the_empty_slots():
    """Right-padded rows with several clips: the logits at every real, filled position are the LM's on the row with
    the empty slots removed, and the output's attention mask counts exactly those positions."""
    model, processor = decoder_tiny()
    end_text_after(model, 2)
    texts = ["Say <|audio|> again", "<|audio|> then more words, and <|audio|> at the end"]
    clips = [tone(0.9, SR, 300), tone(1.3, SR, 500, seed=1), tone(0.6, SR, 700, seed=2)]
    inputs = processor(text=texts, audio=clips, sampling_rate=SR, padding_side="right")
    with torch.no_grad():
        output = model(**inputs)
        embeds, dropped = model.embed_inputs(
            inputs["input_ids"], inputs["input_features"], inputs["input_features_mask"]
        )
        assert dropped.any() and not dropped.all()
        for row in range(embeds.shape[0]):
            keep = inputs["attention_mask"][row].bool() & ~dropped[row]
            reference = model.language_model(inputs_embeds=embeds[row][keep][None]).logits[0]
            assert_close_in_dtype(output.logits[row][keep], reference, ulps=OTHER_PATH_ULPS)
            assert output.attention_mask[row].sum() == keep.sum()


def test_hidden_states_for_training_leave_the_empty_slots_out_and_equal_the_masked_sequences():
    """`return_last_hidden_state` (training, scoring) computes the LM on the kept positions only: right-padded rows
    with several clips come back in the input's layout, equal to the masked sequence's states at every position
    the LM reads and zero elsewhere, and the residual's gradient through them is the masked path's."""
    model, processor = decoder_tiny()
    end_text_after(model, 2)
    texts = ["Say <|audio|> again", "<|audio|> then more words, and <|audio|> at the end"]
    clips = [tone(0.9, SR, 300), tone(1.3, SR, 500, seed=1), tone(0.6, SR, 700, seed=2)]
    inputs = processor(text=texts, audio=clips, sampling_rate=SR, padding_side="right")
    residual = [p for name, p in model.adapter.named_parameters() if not name.startswith("decoder.")]

    def states_and_gradients(hidden_of):
        model.zero_grad(set_to_none=True)
        hidden = hidden_of()
        (hidden[keep] * weights).sum().backward()
        return hidden.detach(), [p.grad.clone() for p in residual]

    with torch.no_grad():
        _, dropped = model.embed_inputs(
            inputs["input_ids"], inputs["input_features"], inputs["input_features_mask"]
        )
    keep = inputs["attention_mask"].bool() & ~dropped
    assert dropped.any() and (~keep).sum() > int(dropped.sum())  # empty slots and padding both left out
    weights = torch.randn(
        int(keep.sum()),
        model.config.get_text_config().hidden_size,
        generator=torch.Generator().manual_seed(0),
    )

    def masked():
        embeds, dropped = model.embed_inputs(
            inputs["input_ids"], inputs["input_features"], inputs["input_features_mask"]
        )
        mask, positions = model.mask_dropped_positions(dropped, inputs["attention_mask"], past_length=0)
        return model.language_model.get_decoder()(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        ).last_hidden_state

    short, short_gradients = states_and_gradients(
        lambda: model(**inputs, return_last_hidden_state=True).last_hidden_state
    )
    full, full_gradients = states_and_gradients(masked)
    assert short.shape == full.shape
    assert_close_in_dtype(short[keep], full[keep], ulps=OTHER_PATH_ULPS)
    assert short[~keep].abs().sum() == 0  # bitwise: left out, never computed
    for own, reference in zip(short_gradients, full_gradients):
        assert own.abs().sum() > 0
        assert_close_in_dtype(own, reference, ulps=OTHER_PATH_ULPS)


def test_only_the_residual_trains_and_the_decoder_gets_no_gradient():
    model, processor = decoder_tiny()
    backward_through_the_lm(model, processor)
    residual = [p for name, p in model.adapter.named_parameters() if not name.startswith("decoder.")]
    assert residual and all(p.grad is not None and p.grad.abs().sum() > 0 for p in residual)
    assert all(p.grad is None for p in model.adapter.decoder.parameters())


def test_save_load_round_trip_keeps_the_decoder_and_both_tokenizers(tmp_path):
    model, processor = decoder_tiny()
    model.save_pretrained(tmp_path)
    assert (tmp_path / SPEECH_TOKENIZER_FOLDER / "tokenizer.json").is_file()
    reloaded = SaladForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.adapter_decoder_prompt_ids == PROMPT
    whisper = piece_ids("\u0120what", "\u0120is", "\u012042", "?")
    assert reloaded.adapter.tokenizers.read(whisper, False) == model.adapter.tokenizers.read(whisper, False)
    inputs = processor(text="Say <|audio|>", audio=tone(0.8, SR), sampling_rate=SR)
    with torch.no_grad():
        assert_close_in_dtype(model(**inputs).logits, reloaded(**inputs).logits, ulps=OTHER_INSTANCE_ULPS)


def test_a_checkpoint_without_the_speech_tokenizer_is_refused_with_the_fix(tmp_path):
    model, _ = decoder_tiny()
    model.save_pretrained(tmp_path)
    for path in sorted((tmp_path / SPEECH_TOKENIZER_FOLDER).iterdir()):
        path.unlink()
    with pytest.raises(ValueError, match=f"{SPEECH_TOKENIZER_FOLDER}/"):
        SaladForConditionalGeneration.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"adapter_decoder_prompt_ids": None}, "adapter_decoder_prompt_ids"),
        ({"audio_config": {"model_type": "mimi"}, "adapter_decoder_prompt_ids": [1]}, "Whisper checkpoint"),
        ({"adapter_decoder_prompt_ids": [1], "adapter_decoder_pad_seconds": 0}, "positive number of seconds"),
    ],
)
def test_config_refuses_a_decoder_adapter_it_cannot_run(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SaladConfig(adapter_type="whisper_decoder", **kwargs)


@settings(max_examples=30, deadline=None)
@given(
    seconds=st.floats(min_value=0.01, max_value=100.0),
    stack_factor=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 2**16),
)
@example(seconds=30.0 + 1 / 16000, stack_factor=4, seed=0)
def test_quiet_cuts_keep_every_clip_at_its_token_count(seconds, stack_factor, seed):
    """Property: wherever the audio puts the quiet cuts, the windows cover the clip and its end silence, each but the
    last is a whole number of token hops, none is longer than the window, and the clip makes exactly `num_tokens(samples)` tokens, the count the collators and the
    harness use without the audio."""
    spec = decoder_tiny()[0].config.audio_length_spec
    spec = replace(spec, stack_factor=stack_factor)
    assert spec.quiet_cuts and spec.token_hop == 160 * 2 * stack_factor
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal(int(seconds * SR)) * rng.uniform(0, 1, int(seconds * SR)) ** 4).astype(
        np.float32
    )
    lengths = spec.window_lengths(audio)
    assert sum(lengths) == audio.size + spec.end_silence(audio.size) and max(lengths) <= spec.chunk_samples
    assert all(length % spec.token_hop == 0 for length in lengths[:-1])
    tokens = sum(int(spec.tokens_from_features(spec.features_from_samples(n))) for n in lengths)
    assert tokens == spec.num_tokens(audio.size)


def test_whisper_reads_each_clip_as_its_own_feature_extractor_pads_it():
    """The decoder's input is the extractor's features of the clip zero-padded to 30 s, frame for frame: the frames
    into which a clip that ends mid-sound fades too (with those frames at silence, the real tiny.en wrote another
    transcript than its `generate` for 5 of the first 40 built-in questions in espeak-ng `en-us`, e.g. "in the
    capital city of Australia." for "What is the capital city of Australia?")."""
    _, processor = decoder_tiny()
    clips = [tone(0.5, SR), tone(1.237, SR, 300, seed=1), tone(0.01, SR)]  # each ends at full volume
    inputs = processor(audio=clips, sampling_rate=SR, return_tensors="pt")
    padded = whisper_padded_features(
        inputs["input_features"], inputs["input_features_mask"].sum(-1), num_frames=3000
    )
    expected = WhisperFeatureExtractor(feature_size=80)(clips, sampling_rate=SR, return_tensors="pt")
    assert_close_in_dtype(padded, expected["input_features"], ulps=OTHER_INSTANCE_ULPS)


def test_long_clips_are_cut_at_their_quietest_stretch():
    """A 70 s clip of loud noise with 0.3 s pauses at 20 s and 50 s is cut in both pauses, not at 30 s and 60 s."""
    model, processor = decoder_tiny()
    audio = 0.3 * np.random.default_rng(0).standard_normal(70 * SR).astype(np.float32)
    for pause in (20, 50):
        audio[pause * SR : pause * SR + 3 * SR // 10] = 0.0
    starts = np.cumsum([0, *processor.length_spec.window_lengths(audio)])[1:-1] / SR
    assert len(starts) == 2 and all(abs(start - pause) < 0.3 for start, pause in zip(starts, (20, 50)))
    inputs = processor(audio=audio, sampling_rate=SR)
    assert inputs["input_features"].shape[0] == 3


def test_a_loud_window_that_comes_out_nearly_empty_is_reported_and_silence_is_not(caplog):
    model, processor = decoder_tiny()
    end_text_after(model, 2)  # two tokens for any window
    for audio, reported in [
        (tone(8.0, SR), True),
        (np.zeros(8 * SR, np.float32), False),
        (tone(3.0, SR), False),
    ]:
        inputs = processor(audio=audio, sampling_rate=SR)
        caplog.clear()
        with caplog.at_level(logging.WARNING), torch.no_grad():
            decoder_embeddings(model, inputs["input_features"], inputs["input_features_mask"])
        assert ("sound like speech" in caplog.text) == reported, audio.size / SR


@pytest.mark.parametrize("setting", ["adapter_top_k", "adapter_ctc_top_k"])
def test_a_checkpoint_of_the_mixture_interface_is_refused_with_the_reason(tmp_path, setting):
    """Saved before issue 33, a whisper_decoder checkpoint's residual was trained for another input."""
    model, _ = decoder_tiny()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, setting: 8}))
    with pytest.raises(ValueError, match="saved before issue 33"):
        SaladForConditionalGeneration.from_pretrained(tmp_path)
    mlp = SaladConfig(adapter_type="mlp", **{setting: 8})  # other adapters never read it
    assert not hasattr(mlp, setting)


def test_a_benchmark_loads_a_checkpoint_with_its_decoder_settings_in_place_of_the_checkpoints(
    tmp_path, monkeypatch
):
    """The benchmarks' levers (`--decoder_num_beams 3 --decoder_pad_seconds full`) load the checkpoint with those
    settings (`load_salad(..., **config_overrides)`) and leave the others as saved."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from decoder_settings import add_decoder_arguments, decoder_arguments, decoder_overrides

    model, processor = decoder_tiny(adapter_decoder_pad_seconds=2.0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    parser = argparse.ArgumentParser()
    add_decoder_arguments(parser)
    args = parser.parse_args(["--decoder_num_beams", "3", "--decoder_pad_seconds", "full"])
    overrides = decoder_overrides(args)
    assert overrides == {"adapter_decoder_num_beams": 3, "adapter_decoder_pad_seconds": None}
    assert decoder_overrides(parser.parse_args(decoder_arguments(args))) == overrides
    loaded, _ = load_salad(str(tmp_path), **overrides)
    assert loaded.adapter.num_beams == 3 and loaded.config.adapter_decoder_pad_seconds is None
    as_saved, _ = load_salad(str(tmp_path), **decoder_overrides(parser.parse_args([])))
    assert as_saved.adapter.num_beams == 1 and as_saved.config.adapter_decoder_pad_seconds == 2.0


def test_training_continues_a_checkpoint_with_other_decoding_settings_but_not_another_adapter_shape(tmp_path):
    """`salad-train --model_name_or_path X --adapter_decoder_pad_seconds 2` trains X on transcripts read so; an
    adapter setting that shapes weights (`--adapter_stack_factor`) is refused instead of silently ignored."""
    model, processor = decoder_tiny()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, _ = load_model_and_processor(
        SaladModelArguments(model_name_or_path=str(tmp_path), adapter_decoder_pad_seconds=2.0)
    )
    assert loaded.config.adapter_decoder_pad_seconds == 2.0
    with pytest.raises(ValueError, match="adapter_stack_factor shape the adapter of a new model"):
        load_model_and_processor(
            SaladModelArguments(model_name_or_path=str(tmp_path), adapter_stack_factor=2)
        )


@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vocabulary_logits_are_the_states_times_the_head_in_fp32(dtype, rows):
    """The decoder's logits with the weight as the left operand: the products of `states @ head.T`, summed in another
    order, so equal to them in fp32 within rounding, for a model in any dtype, shape `[rows, vocab]`; one row (a
    greedy step) too, which goes through the matrix-matrix product twice over."""
    generator = torch.Generator().manual_seed(0)
    states, head = (torch.randn(shape, generator=generator).to(dtype) for shape in ((rows, 48), (300, 48)))
    logits = vocabulary_logits(states, head)
    assert logits.shape == (rows, 300) and logits.dtype == torch.float32
    assert_close_in_dtype(logits, states.float() @ head.float().T, ulps=OTHER_PATH_ULPS)


def test_the_prefill_leaves_empty_slots_out_and_generates_what_masking_them_generates():
    """`generate`'s prefill (an empty cache, one position's logits) computes only the positions the LM reads: its
    cache holds the prompt without the empty audio slots, its next-token logits equal those of the masked prompt
    within fp32 rounding, and a batch of clips with different numbers of empty slots generates the same tokens
    either way (asked with `logits_to_keep=0`, the prefill masks the slots instead)."""
    model, processor = decoder_tiny()
    end_text_after(model, 3)
    clips = [tone(seconds, SR, 300 + 100 * k, seed=k) for k, seconds in enumerate((1.0, 2.5, 0.6))]
    prompts = ["Say <|audio|> now", "<|audio|>", "the quick brown fox says <|audio|> and one two three"]
    batch = processor(text=prompts, audio=clips, sampling_rate=SR, padding_side="left")  # as generate pads
    with torch.no_grad():
        _, dropped = model.embed_inputs(
            batch["input_ids"], batch["input_features"], batch["input_features_mask"]
        )
        read = (batch["attention_mask"].bool() & ~dropped).sum(-1)
        assert (
            len(set(read.tolist())) == 3 and int(dropped.sum()) > 0
        )  # rows of different lengths once dropped
        cache = DynamicCache(config=model.config.get_text_config())
        short = model(**batch, cache=cache, use_cache=True, logits_to_keep=1)
        masked = model(**batch, use_cache=True, logits_to_keep=1)
        assert cache.get_seq_length() == int(read.max()) < batch["input_ids"].shape[1]
        assert short.attention_mask.sum(-1).tolist() == read.tolist()
        assert_close_in_dtype(short.logits, masked.logits, ulps=OTHER_PATH_ULPS)
        generated = model.generate(**batch, max_new_tokens=6, do_sample=False)
        masked_generated = model.generate(**batch, max_new_tokens=6, do_sample=False, logits_to_keep=0)
    assert generated.tolist() == masked_generated.tolist()  # bitwise: token ids
