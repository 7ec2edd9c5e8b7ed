"""The spoken side of the harness: items spoken (their recordings, or a TTS voice) and transcribed (the cascade's
ASR, or the SALAD model repeating what it heard)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import pipeline

from modeling_salad import load_audio, resample
from trainers.assets import resolve_checkpoint
from trainers.assets.models import cache_dir as default_cache_dir
from trainers.distillation.probes import ProbeRow, RepeatPrompt, greedy_repeats
from trainers.tts import get_backend, synthesize_many

from .tasks import MultipleChoiceItem

#: the voices every evaluation here hears the built-in set in, by name: (TTS backend, voice). Training never uses
#: them (`PrepareArguments.held_out_voices`): espeak-ng `en-us` (Whisper tiny.en's WER about 30%) and flite `slt`
#: (about 7%)
HELD_OUT_VOICES = {"en-us": ("espeak-ng", "en-us"), "slt": ("flite", "slt")}


def synthesize_items(
    items: list[MultipleChoiceItem],
    sampling_rate: int,
    *,
    backend: str = "espeak-ng",
    voice: str | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Spoken versions of the items at the model's sampling rate: an item's own recording (`audio_path`) when
    it has one, else the speech of the TTS `backend` in `voice` (cached in `cache_dir`, by default `tts/` under
    `$SALAD_CACHE` or ~/.cache/salad)."""
    clips: list[np.ndarray | None] = [None] * len(items)
    for index, item in enumerate(items):
        if item.audio_path is not None:
            if not Path(item.audio_path).is_file():
                raise FileNotFoundError(f"Item {item.id!r}: its recording {item.audio_path} does not exist.")
            clips[index] = load_audio(item.audio_path, sampling_rate)
    to_speak = [index for index, clip in enumerate(clips) if clip is None]
    if to_speak:
        results = synthesize_many(
            [items[index].spoken_text for index in to_speak], get_backend(backend),
            voices=[voice] if voice else None, num_workers=0,
            cache_dir=Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "tts",
            seed=seed,
        )  # fmt: skip
        for index, result in zip(to_speak, results):
            clips[index] = resample(result.audio, result.sampling_rate, sampling_rate)
    return clips


def transcribe(asr_model: str, clips: list[np.ndarray], sampling_rate: int) -> list[str]:
    """The cascade's first half: Whisper transcripts of the clips, one clip at a time (batched Whisper
    generation pads every clip to 30 s and was over ten times slower on a 2-core CPU)."""
    asr = pipeline("automatic-speech-recognition", model=resolve_checkpoint(asr_model))
    generate_kwargs = english_generate_kwargs(asr.model.generation_config)
    return [
        asr({"raw": clip, "sampling_rate": sampling_rate}, generate_kwargs=generate_kwargs)["text"].strip()
        for clip in tqdm(clips, desc="cascade ASR", leave=False)
    ]


def own_whisper_transcribe(model, processor, clips: list[np.ndarray], batch_size: int) -> list[str]:
    """The cascade's first half for a SALAD model whose adapter reads Whisper's own decoder: that Whisper
    transcribes each clip as its ASR pipeline does, over its full 30 s (`encode_windows(..., full_windows=True)`)
    and up to the decoder's 448 positions rather than the window's slots (on a clip of one window, the pipeline's
    tokens, tested), `batch_size` clips at a time. The cascade made of the model's own parts, at a fraction of the
    pipeline's time: the search's steps read Whisper's weights once for the whole batch. A clip of several windows
    gets their transcripts joined."""
    adapter, texts = model.adapter, []
    for start in tqdm(
        range(0, len(clips), batch_size), desc="cascade ASR (the model's Whisper)", leave=False
    ):
        prepared = processor.prepare_audio(clips[start : start + batch_size])
        features, mask = (
            torch.from_numpy(prepared.inputs[key]) for key in ("input_features", "input_features_mask")
        )
        with torch.no_grad():
            windows = model.encode_windows(features, mask, full_windows=True)
            limit = torch.full_like(windows.feature_lengths, adapter.decoder_max_tokens)
            per_window = adapter.transcript_texts(adapter.search(windows, max_tokens=limit))
        for count in prepared.windows_per_clip:
            texts.append(" ".join(text for text in per_window[:count] if text))
            per_window = per_window[count:]
    return texts


def english_generate_kwargs(generation_config) -> dict:
    """Generation settings that make a Whisper transcribe English: the task set is spoken in English, and a
    multilingual Whisper left to detect each clip's language hears some robotic TTS voices as another language
    (Whisper base wrote one held-out clip in Turkish) and then transcribes or translates into it. English-only
    checkpoints (tiny.en) have no language token to set."""
    if getattr(generation_config, "is_multilingual", False):
        return {"language": "en", "task": "transcribe"}
    return {}


def self_transcribe(model, processor, items, clips, chat: bool) -> list[str]:
    """The self-cascade's first half: the SALAD model asked to repeat each clip (the alignment probes' repeat
    prompt, greedy; in the chat template with `chat`). Read by the base LLM as text, these transcripts separate
    the two failures that a spoken accuracy at the prior mixes: the adapter losing the words, or the LLM not
    using words it was given as audio. An item's text only bounds the length of its transcript."""
    rows = [ProbeRow(item.spoken_text, clip) for item, clip in zip(items, clips)]
    return greedy_repeats(model, processor, rows, prompt=RepeatPrompt(chat=chat))
