"""Whisper's transcripts of audio windows, computed once and kept, so that a training step runs only what trains.

A `"whisper_decoder"` model's Whisper (encoder and decoder) is frozen, and its transcript of an audio window, the
tokens it writes and the decoder state that chose each, depends on nothing but the window's features and those
frozen weights. Yet it is most of a training step's cost: the encoder reads 30 s of padded input per window, and the
decoder writes one token at a time. `TranscriptCache` keys each window's transcript by a hash of its features and of
the frozen weights, computes it the first time a window is seen, and hands it to the model
(`SaladForConditionalGeneration.forward(whisper_transcript=...)`) every later time: later epochs, and, with a
folder, later runs on the same rows. The adapter's residual and the LLM see exactly what they would have seen.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from modeling_salad import SaladForConditionalGeneration, WhisperTranscript
from modeling_salad.adapters_salad import pad_right


def frozen_fingerprint(model: SaladForConditionalGeneration) -> str:
    """A hash of what a window's transcript depends on besides its features: Whisper's weights (encoder and
    decoder, in the dtype they run in), what Whisper reads (the silence after a window) and how the decoder searches
    (its prompt, beams and suppressed tokens) and how long a window's transcript may be (its slots, from the stack
    factor)."""
    adapter = model.adapter
    search = (adapter.prompt_ids, adapter.num_beams, adapter.suppressed, adapter.suppressed_first)
    pad_seconds = model.config.adapter_decoder_pad_seconds
    # Whisper's full 30 s, the default, keeps the fingerprint of the caches written before this setting existed;
    # a short read is retried over 30 s where Whisper fails to stop (`transcribe_windows`), since the caches
    # written before that came in were keyed without the retry
    if pad_seconds is not None:
        search = (*search, float(pad_seconds), "retried over 30 s")
    digest = hashlib.sha256(repr((*search, model.config.audio_length_spec.to_dict())).encode())
    for module in (model.audio_tower, model.adapter.decoder):
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def window_key(features: torch.Tensor) -> str:
    """A hash of one window's valid features `[mels, frames]` (their values, dtype and shape)."""
    features = features.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{features.dtype}{tuple(features.shape)}".encode())
    digest.update(features.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TranscriptCache:
    """Each audio window's Whisper transcript, by content: in `directory` when one is given, else in memory.

    Args:
        model: the `"whisper_decoder"` model whose frozen Whisper writes the transcripts.
        directory: a folder that keeps them across runs (one file per window, under a subfolder named after the
            fingerprint of the frozen Whisper and its search, so another Whisper never reads them); None: this
            run's memory, about 1.5 KB per transcript token with Whisper tiny (a million windows of speech take
            tens of GB: give a folder for data that large).
    """

    def __init__(self, model: SaladForConditionalGeneration, directory: str | os.PathLike | None = None):
        if not model.adapter.writes_text:
            raise ValueError(
                f"A TranscriptCache keeps the transcripts of a 'whisper_decoder' adapter; this model's adapter is "
                f"{model.config.adapter_type!r}, which writes none: leave the transcript cache (`transcript_cache_dir`) out "
                f"for this model."
            )
        self.fingerprint = frozen_fingerprint(model)
        self.directory = None if directory is None else Path(directory) / self.fingerprint
        self.memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = 0

    def transcripts(
        self,
        model: SaladForConditionalGeneration,
        input_features: torch.Tensor,
        input_features_mask: torch.Tensor,
    ) -> WhisperTranscript:
        """`model.transcribe(input_features, input_features_mask)`, computing only the windows never seen before.

        New windows are transcribed at full precision (outside any autocast), so that a window's transcript is
        the same whichever run or step first met it."""
        lengths = input_features_mask.sum(-1).tolist()
        keys = [window_key(input_features[i, ..., :length]) for i, length in enumerate(lengths)]
        rows = [self.lookup(key) for key in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        self.hits += len(rows) - len(missing)
        self.misses += len(missing)
        if missing:
            with torch.autocast(input_features.device.type, enabled=False):
                fresh = model.transcribe(input_features[missing], input_features_mask[missing])
            for row, i in enumerate(missing):
                count = int(fresh.counts[row])
                # copies: a view would keep the whole batch's tensors alive in the cache
                rows[i] = (fresh.ids[row, :count].cpu().clone(), fresh.states[row, :count].cpu().clone())
                self.store(keys[i], rows[i])
        return self.assemble(rows, input_features.device)

    def lookup(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = self.path(key)
        if path is None:
            return self.memory.get(key)
        if not path.is_file():
            return None
        stored = load_file(path)
        return stored["ids"], stored["states"]

    def store(self, key: str, row: tuple[torch.Tensor, torch.Tensor]) -> None:
        path = self.path(key)
        if path is None:
            self.memory[key] = row
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # written beside its place and renamed into it: a reader never sees half a file
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        os.close(handle)
        save_file({"ids": row[0].contiguous(), "states": row[1].contiguous()}, temporary)
        os.replace(temporary, path)

    def path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / key[:2] / f"{key}.safetensors"

    @staticmethod
    def assemble(rows: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> WhisperTranscript:
        """One `WhisperTranscript` of the windows' rows, padded to the longest."""
        ids = pad_right([row[0].tolist() for row in rows], device)
        width = rows[0][1].shape[-1]
        states = torch.zeros(len(rows), ids.shape[1], width, dtype=rows[0][1].dtype, device=device)
        for i, (_, row_states) in enumerate(rows):
            states[i, : row_states.shape[0]] = row_states.to(device)
        counts = torch.tensor([row[0].shape[0] for row in rows], dtype=torch.long, device=device)
        return WhisperTranscript(ids, states, counts)
