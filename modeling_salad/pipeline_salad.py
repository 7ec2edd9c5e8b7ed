"""SALAD's pipelines: `salad-speech-to-text` (raw audio in, text out) and the `any-to-any` task for SALAD
checkpoints (transformers' chat pipeline, batching audio of any length)."""

from __future__ import annotations

from collections.abc import Sized
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import BatchFeature, Pipeline
from transformers.pipelines.any_to_any import AnyToAnyPipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .processing_salad import load_audio

PIPELINE_TASK = "salad-speech-to-text"
ANY_TO_ANY_TASK = "any-to-any"


class AudioWindowBatching:
    """Batches (`batch_size > 1`) of samples whose audio spans different numbers of windows and frames.

    transformers' collate pads each key of a sample as a single row along its second dimension: it would pad the
    mel bins of `input_features` `[windows, mels, frames]` and keep only a sample's first window. Here every
    window of every sample is kept, in order, and padded along its frames (`collate_model_inputs`).
    """

    def get_iterator(
        self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
    ):
        if batch_size == 1:
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:  # a generator can be read by one worker only
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
            num_workers = min(num_workers, 1)
        collate = partial(collate_model_inputs, pad_token_id=self.processor.tokenizer.pad_token_id)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=collate)
        generated = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(generated, self.postprocess, postprocess_params)


class SaladSpeechToTextPipeline(AudioWindowBatching, Pipeline):
    """Answer spoken input with a SALAD model.

    Each input is a file path, raw file bytes, a `{"array": ..., "sampling_rate": ...}` dict, or an array with
    `sampling_rate=` given to the call; a list of them is a batch. Audio is decoded with soundfile, down-mixed
    to mono and resampled to the encoder's rate. An optional `prompt` (text after the audio in the user turn)
    steers the answer; the LLM's chat template is used when it has one.

    An app that takes audio from anyone can ask for stricter checks: `max_audio_seconds` refuses longer clips and
    `min_peak_dbfs` refuses clips whose loudest sample is quieter (a microphone that recorded nothing), each with a
    `ValueError` that says so. With a `"whisper_decoder"` adapter, `return_transcript=True` adds what Whisper's
    decoder wrote (`"transcript"`), which is what the LLM read; the answer is generated from that same transcript.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> pipe = pipeline("salad-speech-to-text", model="path/to/salad-checkpoint", trust_remote_code=True)
    >>> pipe("question.wav", prompt="Answer the question.", max_new_tokens=32)
    {'generated_text': '...'}
    ```
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _pipeline_calls_generate = True

    def _sanitize_parameters(
        self,
        prompt=None,
        sampling_rate=None,
        max_new_tokens=None,
        generate_kwargs=None,
        return_transcript=None,
        max_audio_seconds=None,
        min_peak_dbfs=None,
    ):
        preprocess_params = {
            "prompt": prompt,
            "sampling_rate": sampling_rate,
            "max_audio_seconds": max_audio_seconds,
            "min_peak_dbfs": min_peak_dbfs,
        }
        forward_params = dict(generate_kwargs or {})
        if max_new_tokens is not None:
            forward_params["max_new_tokens"] = max_new_tokens
        if return_transcript:
            forward_params["return_transcript"] = True
        return preprocess_params, forward_params, {}

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, (list, tuple)) and not inputs:
            raise ValueError("The pipeline got an empty list: give one audio input or a list of them.")
        return super().__call__(inputs, **kwargs)

    def decode_input(self, inputs, sampling_rate: int | None) -> np.ndarray:
        if isinstance(inputs, dict):
            array = inputs.get("array", inputs.get("raw"))
            if array is None or "sampling_rate" not in inputs:
                raise ValueError("An audio dict needs 'array' (or 'raw') and 'sampling_rate'.")
            return load_audio(array, self.processor.sampling_rate, inputs["sampling_rate"])
        if isinstance(inputs, (str, Path, bytes, bytearray)):
            return load_audio(inputs, self.processor.sampling_rate)
        if sampling_rate is None:
            raise ValueError(
                "An audio array needs its sampling rate: call the pipeline with `sampling_rate=...` or pass "
                "{'array': audio, 'sampling_rate': rate}."
            )
        if hasattr(inputs, "detach"):
            inputs = inputs.detach().cpu().numpy()
        return load_audio(inputs, self.processor.sampling_rate, sampling_rate)

    def preprocess(self, inputs, prompt=None, sampling_rate=None, max_audio_seconds=None, min_peak_dbfs=None):
        audio = self.decode_input(inputs, sampling_rate)
        check_audio_limits(audio, self.processor.sampling_rate, max_audio_seconds, min_peak_dbfs)
        model_inputs = self.prompt_inputs(audio, prompt)
        context = getattr(self.model.config.text_config, "max_position_embeddings", None)
        length = model_inputs["input_ids"].shape[1]
        if context is not None and length > context:
            raise ValueError(
                f"The input is {length:,} tokens ({audio.size / self.processor.sampling_rate:.0f} s of audio), past "
                f"the LLM's {context:,}-token context: split the audio into shorter clips."
            )
        return model_inputs

    def prompt_inputs(self, audio: np.ndarray, prompt: str | None):
        """The model inputs of one clip and its prompt: through the chat template when the LLM has one."""
        if self.processor.tokenizer.chat_template is None:
            return self.processor(
                text=self.processor.audio_token + (prompt or ""), audio=audio, return_tensors="pt"
            )
        content = [{"type": "audio", "audio": audio}]
        if prompt:
            content.append({"type": "text", "text": prompt})
        return self.processor.apply_chat_template(
            [{"role": "user", "content": content}],
            tokenize=True,
            return_dict=True,
            add_generation_prompt=True,
            return_tensors="pt",
        )

    def _forward(self, model_inputs, return_transcript=False, **generate_kwargs):
        prompt_length = model_inputs["input_ids"].shape[1]
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs)
        transcript = self.transcript_of(model_inputs, generate_kwargs) if return_transcript else None
        generated = self.model.generate(**model_inputs, whisper_transcript=transcript, **generate_kwargs)
        outputs = {"generated_ids": generated[:, prompt_length:]}
        if transcript is not None:
            outputs["transcript"] = " ".join(self.model.adapter.transcript_texts(transcript))
        return outputs

    def transcript_of(self, model_inputs, generate_kwargs: dict):
        """Whisper's transcript of one sample's clip (`return_transcript=True`), computed once: the answer is
        generated from it too, as one sequence."""
        if self.model.config.adapter_type != "whisper_decoder":
            raise ValueError(
                f"return_transcript=True needs a 'whisper_decoder' adapter, which transcribes inside the model; "
                f"this model's adapter is {self.model.config.adapter_type!r} and writes no transcript."
            )
        if model_inputs["input_ids"].shape[0] != 1:
            raise ValueError("return_transcript=True works on one clip at a time: call it with batch_size=1.")
        config = generate_kwargs.get("generation_config") or self.model.generation_config
        beams = generate_kwargs.get("num_beams", config.num_beams) or 1
        sequences = generate_kwargs.get("num_return_sequences", config.num_return_sequences) or 1
        if max(beams, sequences) > 1:
            raise ValueError(
                "return_transcript=True generates one answer with one beam: leave num_beams and "
                "num_return_sequences at 1, or leave return_transcript out."
            )
        return self.model.transcribe(model_inputs["input_features"], model_inputs["input_features_mask"])

    def postprocess(self, model_outputs):
        answer = {
            "generated_text": self.processor.decode(
                model_outputs["generated_ids"][0], skip_special_tokens=True
            )
        }
        if "transcript" in model_outputs:
            answer["transcript"] = model_outputs["transcript"]
        return answer


def check_audio_limits(
    audio: np.ndarray, sampling_rate: int, max_seconds: float | None, min_peak_dbfs: float | None
) -> None:
    """The stricter checks an app can ask of a clip: no longer than `max_seconds`, and a loudest sample at least
    `min_peak_dbfs` (decibels relative to full scale, where 1.0 is 0 dBFS)."""
    seconds = audio.size / sampling_rate
    if max_seconds is not None and seconds > max_seconds:
        raise ValueError(
            f"The clip is {seconds:.1f} s long, past the limit of {max_seconds:g} s: send a shorter clip, or cut "
            "it into parts and ask about each."
        )
    if min_peak_dbfs is not None:
        peak = float(np.abs(audio).max()) if audio.size else 0.0
        level = 20 * np.log10(peak) if peak > 0 else -np.inf
        if level < min_peak_dbfs:
            raise ValueError(
                f"The clip is silent: its loudest sample is at {level:.0f} dBFS, below {min_peak_dbfs:g} dBFS. "
                "Check that the right microphone is selected and not muted, and record again."
            )


class SaladAnyToAnyPipeline(AudioWindowBatching, AnyToAnyPipeline):
    """transformers' `any-to-any` pipeline for SALAD checkpoints, which name it in their `custom_pipelines`.

    It answers chats and prompts exactly as the built-in pipeline does; on top, `batch_size > 1` batches clips of
    any length, and an empty batch or an empty chat is refused with a `ValueError` rather than an `IndexError`.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> chat = pipeline("any-to-any", model="path/to/salad-checkpoint", trust_remote_code=True)
    >>> messages = [{"role": "user", "content": [{"type": "audio", "audio": "question.wav"}]}]
    >>> chat(text=messages, max_new_tokens=32, return_full_text=False)
    [{'input_text': ..., 'generated_text': '...'}]
    ```
    """

    def __call__(self, text=None, images=None, videos=None, audio=None, **kwargs):
        if isinstance(text, (list, tuple)):
            if not text:
                raise ValueError("The pipeline got an empty list: give a prompt, a chat, or a list of them.")
            empty = [index for index, chat in enumerate(text) if isinstance(chat, (list, tuple)) and not chat]
            if empty:
                raise ValueError(
                    f"Chat(s) {empty} have no messages: give each chat at least one "
                    "{'role': ..., 'content': ...} message."
                )
        return super().__call__(text=text, images=images, videos=videos, audio=audio, **kwargs)


def collate_model_inputs(samples: list[dict], pad_token_id: int) -> BatchFeature:
    """One batch from single samples of the processor: prompts padded on the left (generation reads each row's last
    position), and the audio windows of every sample in order, padded with zeros to the longest (their
    `input_features_mask` says where). Any other key (the any-to-any pipeline's prompt `text`) becomes a list with
    one entry per sample, as in transformers' own collate."""
    if pad_token_id is None:
        raise ValueError(
            "Batching needs the tokenizer's pad token: set `tokenizer.pad_token` or use batch_size=1."
        )
    longest = max(sample["input_ids"].shape[1] for sample in samples)
    batch = {
        "input_ids": torch.cat([pad_left(s["input_ids"], longest, pad_token_id) for s in samples]),
        "attention_mask": torch.cat([pad_left(s["attention_mask"], longest, 0) for s in samples]),
    }
    with_audio = [sample for sample in samples if sample.get("input_features") is not None]
    if with_audio:
        frames = max(sample["input_features"].shape[-1] for sample in with_audio)
        for key in ("input_features", "input_features_mask"):
            batch[key] = torch.cat(
                [torch.nn.functional.pad(s[key], (0, frames - s[key].shape[-1])) for s in with_audio]
            )
    others = set().union(*samples) - set(batch) - {"input_features", "input_features_mask"}
    return BatchFeature({**batch, **{key: [sample.get(key) for sample in samples] for key in sorted(others)}})


def pad_left(rows: torch.Tensor, length: int, value: int) -> torch.Tensor:
    """`[n, t]` rows padded with `value` on the left to `[n, length]`."""
    return torch.nn.functional.pad(rows, (length - rows.shape[1], 0), value=value)


__all__ = ["ANY_TO_ANY_TASK", "PIPELINE_TASK", "SaladAnyToAnyPipeline", "SaladSpeechToTextPipeline"]
