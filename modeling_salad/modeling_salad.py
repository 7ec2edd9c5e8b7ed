"""SALAD speech LLM: a speech encoder, an adapter and a causal LM.

Audio clips are encoded, turned into LM-width embeddings by the adapter and written into the LM's input
embeddings at the `<|audio|>` placeholder positions (`masked_scatter`), so text and speech can be
interleaved freely in one sequence, several clips per sample.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    MimiEncoderConfig,
    MimiEncoderModel,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import logging

from .adapters_salad import (
    AudioWindows,
    SaladAdapter,
    WhisperTranscript,
    adapter_class,
    lengths_to_mask,
    merge_transcripts,
    select_windows,
)
from .checkpoint_salad import SaladCheckpointMixin
from .configuration_salad import SaladConfig
from .lora_salad import SaladLoraMixin, inject_lora, lora_config_from_settings

logger = logging.get_logger(__name__)

# Whisper's log-mel features are clamped 8 log10 units under their maximum and then divided by 4: the level
# silence (and Whisper's own zero padding) gets, 2 under a window's highest feature.
WHISPER_FEATURE_FLOOR = 2.0


def window_lengths(input_features_mask: torch.Tensor) -> torch.Tensor:
    """Feature frames (or samples) of each audio window; refuses windows that are all padding."""
    lengths = input_features_mask.sum(-1).long()
    if bool((lengths == 0).any()):
        raise ValueError(
            "An audio window in `input_features_mask` is all padding; every window needs content."
        )
    return lengths


def whisper_padded_features(
    input_features: torch.Tensor, feature_lengths: torch.Tensor, num_frames: int
) -> torch.Tensor:
    """`[n, mels, num_frames]` log-mel windows padded with silence, as Whisper's feature extractor gives a clip
    zero-padded to its full window: each window's frames past its length at its floor. The processor's features
    already hold the frames into which the clip's sound fades (`AudioLengthSpec.end_samples`), so these equal
    the extractor's to float rounding."""
    valid = lengths_to_mask(feature_lengths, input_features.shape[-1])[:, None, :]
    floor = input_features.masked_fill(~valid, float("-inf")).amax(dim=(1, 2)) - WHISPER_FEATURE_FLOOR
    padded = floor[:, None, None].expand(-1, input_features.shape[1], num_frames).clone()
    padded[..., : input_features.shape[-1]] = torch.where(valid, input_features, padded[..., :1])
    return padded


def left_pad(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's trailing padding to its start, so that its last position holds its last real token.

    A decoder-only LM predicts the first new token from a row's last position, which in a right-padded row is
    padding: generation must see the batch padded on the left. Rows already padded on the left are left as they are;
    the order of a row's tokens, and so of its audio placeholders, is kept.
    """
    length = attention_mask.shape[1]
    real = attention_mask.bool()
    last_real = torch.where(real, torch.arange(length, device=real.device), -1).amax(-1)
    trailing = (length - 1 - last_real).clamp_max(length - 1)[:, None]
    source = (torch.arange(length, device=real.device)[None] - trailing) % length
    return input_ids.gather(1, source), attention_mask.gather(1, source)


@dataclass
class SaladCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    attention_mask (`torch.LongTensor`, *optional*):
        The attention mask the LM used, `[batch, past + seq]`: the input's, with the audio slots the adapter left
        empty set to 0. `generate` carries it to the following steps.
    position_ids (`torch.LongTensor`, *optional*):
        `[batch, past + seq]` positions the LM used: dropped positions take no position, so the kept ones
        follow each other as in text.
    """

    attention_mask: torch.LongTensor | None = None
    position_ids: torch.LongTensor | None = None


class SaladPreTrainedModel(SaladCheckpointMixin, PreTrainedModel):
    config: SaladConfig
    config_class = SaladConfig
    base_model_prefix = ""
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _skip_keys_device_placement = "cache"

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SaladAdapter):
            module.init_weights()


class SaladForConditionalGeneration(SaladLoraMixin, SaladPreTrainedModel, GenerationMixin):
    """Speech encoder -> adapter -> causal LM, generating text from interleaved text and speech.

    Inputs follow the processor: `input_ids` with one `<|audio|>` token per audio embedding, and
    `input_features` `[num_chunks, ...]` with `input_features_mask` `[num_chunks, frames]` for every audio
    window of the batch, in the order their placeholders appear (sample by sample, left to right).
    `input_features` are log-mel frames `[n, mels, frames]` for Whisper and waveforms `[n, samples]` for
    Mimi and wav2vec2-like encoders.
    """

    def __init__(self, config: SaladConfig):
        super().__init__(config)
        self.audio_tower = build_audio_tower(config)
        self.adapter = adapter_class(config.adapter_type)(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        if (
            config.lora is not None
        ):  # a checkpoint saved with LoRA layers: re-create them before its weights load
            inject_lora(self.language_model, lora_config_from_settings(config.lora))
        self._no_split_modules = [
            *(getattr(self.audio_tower, "_no_split_modules", None) or []),
            *(getattr(self.language_model, "_no_split_modules", None) or []),
        ]
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    # ------------------------------------------------------------------ audio
    def _encode_whisper(self, input_features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Whisper encoder on variable-length log-mel input, with padded frames masked out.

        `WhisperEncoder.forward` insists on 30 s of frames; running its layers ourselves on the real length
        (positions sliced to it, padding masked) saves up to ~4.5x of encoder compute on short clips. Each window
        comes out as it does alone, whatever the batch pads it to.
        """
        encoder = self.audio_tower
        # zero past each window's frames, in the input and between the convolutions: the convolutions' own zero
        # padding, so that a window's last frames come out as they do when it is encoded alone
        frames = lengths_to_mask(feature_lengths, input_features.shape[-1])[:, None, :]
        features = input_features.masked_fill(~frames, 0.0).to(encoder.conv1.weight.dtype)
        hidden = nn.functional.gelu(encoder.conv1(features)) * frames
        hidden = nn.functional.gelu(encoder.conv2(hidden)).transpose(1, 2)
        num_positions = hidden.shape[1]
        if num_positions > encoder.embed_positions.num_embeddings:
            raise ValueError(
                f"Audio window of {num_positions} encoder positions exceeds Whisper's "
                f"{encoder.embed_positions.num_embeddings}; the processor chunks long clips, pass its output as is."
            )
        hidden = hidden + encoder.embed_positions.weight[:num_positions].to(hidden.dtype)
        valid = lengths_to_mask(self._conv_lengths(feature_lengths), num_positions)
        attention_mask = None
        if not bool(valid.all()):
            attention_mask = torch.zeros(valid.shape, dtype=hidden.dtype, device=hidden.device)
            attention_mask = attention_mask.masked_fill(~valid, torch.finfo(hidden.dtype).min)[
                :, None, None, :
            ]
        for layer in encoder.layers:
            hidden = layer(hidden, attention_mask)
        return encoder.layer_norm(hidden)

    def _conv_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Encoder output frames (before stacking) for feature lengths, from the shared length spec."""
        spec = self.config.audio_length_spec
        for kernel, stride, padding in spec.conv_layers:
            feature_lengths = (feature_lengths + 2 * padding - kernel) // stride + 1
        return -(-feature_lengths // spec.ceil_hop)

    def _encode_waveform(self, input_features: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
        """Mimi (continuous latents before quantization) or a wav2vec2-like encoder on raw waveforms."""
        tower = self.audio_tower
        waveform = input_features.to(next(tower.parameters()).dtype)
        if self.config.audio_encoder_family == "mimi":
            # Mimi is causal end to end, so right padding cannot leak into the valid frames.
            return tower(waveform[:, None, :]).latents.transpose(1, 2)
        return tower(input_values=waveform, attention_mask=feature_mask.long()).last_hidden_state

    def audio_token_mask(self, input_features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """`[num_windows, tokens]`, True on each window's audio tokens (slots), from the shared length spec."""
        spec = self.config.audio_length_spec
        return lengths_to_mask(
            spec.tokens_from_features(feature_lengths),
            int(spec.tokens_from_features(input_features.shape[-1])),
        )

    def _encode_whisper_padded(
        self, input_features: torch.Tensor, feature_lengths: torch.Tensor, pad_seconds: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whisper's encoder on each window padded with silence as Whisper transcribes it, and the encoder frames
        of each (`whisper_input_frames`): by default its full 30 s, exactly as its feature extractor pads a clip
        (its decoder learned to read such input). A window padded less than the batch's longest is masked past
        its own frames, so that it is encoded as it would be alone."""
        frames = self.whisper_input_frames(feature_lengths, pad_seconds)
        num_frames = max(int(frames.max()), input_features.shape[-1])
        padded = whisper_padded_features(input_features, feature_lengths, num_frames)
        if pad_seconds is None:
            states = self.audio_tower(padded.to(self.audio_tower.conv1.weight.dtype)).last_hidden_state
        else:  # one code path whatever the batch, so that a window reads the same alone and among others
            states = self._encode_whisper(padded, frames)
        return states, self._conv_lengths(frames)

    def whisper_input_frames(self, feature_lengths: torch.Tensor, pad_seconds: float | None) -> torch.Tensor:
        """Feature frames Whisper reads for each window: its full 30 s (`pad_seconds` None), or the window
        followed by at least `pad_seconds` (`s`) of silence, rounded up to a multiple of `s` seconds (of `s` rounded
        up to an even number of frames: Whisper's second convolution has stride 2)."""
        full = 2 * self.audio_tower.config.max_source_positions
        if pad_seconds is None:
            return torch.full_like(feature_lengths, full)
        frames_per_second = self.config.audio_sampling_rate / self.config.audio_length_spec.feature_hop
        step = 2 * math.ceil(pad_seconds * frames_per_second / 2)
        return ((feature_lengths + 2 * step - 1) // step * step).clamp(max=full)

    def _encode_trimmed(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor, feature_lengths: torch.Tensor
    ) -> torch.Tensor:
        """The encoder on each window's real length, its frames past the window's end zeroed so that a stacked
        group at the end matches an unpadded run."""
        if self.config.audio_encoder_family == "whisper":
            hidden = self._encode_whisper(input_features, feature_lengths)
        else:
            hidden = self._encode_waveform(input_features, input_features_mask)
        frame_mask = lengths_to_mask(self._conv_lengths(feature_lengths), hidden.shape[1])
        return hidden * frame_mask[..., None].to(hidden.dtype)

    def encode_windows(
        self,
        input_features: torch.Tensor,
        input_features_mask: torch.Tensor,
        whisper_transcript: WhisperTranscript | None = None,
        full_windows: bool = False,
    ) -> AudioWindows:
        """Every audio window through the speech encoder, as the adapter reads it: trimmed to its length, or, for
        an adapter that `reads_full_windows`, padded with `adapter_decoder_pad_seconds` of silence (with
        `full_windows`, or that setting None: to the encoder's full 30 s, as Whisper's ASR pipeline reads a clip).
        Given the windows' `whisper_transcript` (see `forward`), the encoder is skipped: the adapter reads that
        instead."""
        feature_lengths = window_lengths(input_features_mask)
        encoder_states = encoder_lengths = None
        if whisper_transcript is not None:
            self.check_whisper_transcript(whisper_transcript, num_windows=input_features.shape[0])
        else:
            grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.audio_tower.parameters())
            with torch.set_grad_enabled(grad):
                if self.adapter.reads_full_windows:
                    pad_seconds = None if full_windows else self.config.adapter_decoder_pad_seconds
                    encoder_states, encoder_lengths = self._encode_whisper_padded(
                        input_features, feature_lengths, pad_seconds
                    )
                else:
                    encoder_states = self._encode_trimmed(
                        input_features, input_features_mask, feature_lengths
                    )
        return AudioWindows(
            features=input_features,
            feature_lengths=feature_lengths,
            encoder_states=encoder_states,
            encoder_lengths=encoder_lengths,
            token_mask=self.audio_token_mask(input_features, feature_lengths),
            transcript=whisper_transcript,
        )

    def check_whisper_transcript(self, transcript: WhisperTranscript, num_windows: int) -> None:
        """Refuse transcripts handed to an adapter that writes none, or that do not pair up with the windows."""
        if not self.adapter.writes_text:
            raise ValueError(
                f"`whisper_transcript` is for a 'whisper_decoder' adapter; this model's adapter is "
                f"{self.config.adapter_type!r}, which reads the encoder's states. Pass `input_features` alone."
            )
        if transcript.counts.shape[0] != num_windows or transcript.ids.shape[0] != num_windows:
            raise ValueError(
                f"`whisper_transcript` holds {transcript.counts.shape[0]} windows' transcripts but "
                f"`input_features` has {num_windows} windows: pass `model.transcribe(input_features, "
                "input_features_mask)` of the same features."
            )

    @torch.no_grad()
    def transcribe(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor
    ) -> WhisperTranscript:
        """The transcript of each window that an adapter reading Whisper's decoder (`"whisper_decoder"`) hands the
        LM, each at most its audio-token slots long; windows that sound like speech but come out (almost) empty
        are reported. Other adapters write no transcript and raise a `ValueError`."""
        return self.transcribe_windows(self.encode_windows(input_features, input_features_mask))

    def transcribe_windows(self, windows: AudioWindows) -> WhisperTranscript:
        """`transcribe` of windows the encoder has read.

        With `adapter_decoder_pad_seconds`, Whisper reads a window followed by a few seconds of silence rather
        than its full 30 s, several times faster, but with so little silence after the words it sometimes fails
        to stop: it writes the sentence again, or runs on to the window's slots. A window read short whose
        transcript does either (`SaladWhisperDecoderAdapter.failed_to_stop`) is read again as by default, padded
        to 30 s: the LM never reads such a loop, and the short read costs time only where it failed."""
        adapter = self.adapter
        transcript = adapter.search(windows)
        failed = adapter.failed_to_stop(transcript, windows) & self.read_short(windows)
        if bool(failed.any()):
            rows, kept = failed.nonzero()[:, 0], (~failed).nonzero()[:, 0]
            features, lengths = windows.features[rows], windows.feature_lengths[rows]
            with torch.no_grad():  # a transcript's tokens and states are the frozen Whisper's alone
                states, encoder_lengths = self._encode_whisper_padded(features, lengths, pad_seconds=None)
            again = replace(
                windows, features=features, feature_lengths=lengths, encoder_states=states,
                encoder_lengths=encoder_lengths, token_mask=windows.token_mask[rows], opens_with_space=None,
            )  # fmt: skip
            transcript = merge_transcripts(
                [(rows, adapter.search(again)), (kept, select_windows(transcript, kept))]
            )
        adapter.warn_about(transcript, windows)
        return transcript

    def read_short(self, windows: AudioWindows) -> torch.Tensor:
        """`[n]` True where Whisper read a window with less than its full 30 s (so a 30 s read can differ)."""
        lengths = windows.encoder_lengths
        if lengths is None:  # every frame of the states belongs to every window
            lengths = torch.full_like(windows.feature_lengths, windows.encoder_states.shape[1])
        return lengths < self.audio_tower.config.max_source_positions

    def audio_embeddings_and_keep(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio embeddings of every valid audio token, concatenated over windows, `[num_audio_tokens, hidden]`,
        and which of them the adapter filled (`[num_audio_tokens]` bool)."""
        return self.adapt_windows(self.encode_windows(input_features, input_features_mask))

    def adapt_windows(self, windows: AudioWindows) -> tuple[torch.Tensor, torch.Tensor]:
        """`audio_embeddings_and_keep` of windows the encoder has read."""
        if self.adapter.writes_text and windows.transcript is None:
            windows = replace(windows, transcript=self.transcribe_windows(windows))
        embeds, keep = self.adapter(windows, self.get_input_embeddings().weight)
        if embeds.shape[1] != windows.token_mask.shape[1]:
            raise RuntimeError(
                f"The adapter produced {embeds.shape[1]} audio tokens where the length spec predicts "
                f"{windows.token_mask.shape[1]}; `SaladConfig.audio_length_spec` does not describe this encoder."
            )
        return embeds[windows.token_mask], keep[windows.token_mask]

    def get_audio_features(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor
    ) -> torch.Tensor:
        """Audio embeddings of every valid audio token, concatenated over windows: `[num_audio_tokens, hidden]`.

        Slots an adapter leaves empty (`"whisper_decoder"`: a window's transcript is shorter than its slots) are
        zero vectors; `forward` masks them out of attention.

        Args:
            input_features: `[num_windows, mels, frames]` log-mel (Whisper) or `[num_windows, samples]` waveform.
            input_features_mask: `[num_windows, frames or samples]`, 1 on real input, 0 on padding.
        """
        return self.audio_embeddings_and_keep(input_features, input_features_mask)[0]

    def get_placeholder_mask(self, input_ids: torch.LongTensor, num_audio_tokens: int) -> torch.Tensor:
        """Where the audio embeddings go; raises when placeholders and embeddings do not pair up one to one."""
        mask = input_ids == self.config.audio_token_id
        num_placeholders = int(mask.sum())
        if num_placeholders != num_audio_tokens:
            raise ValueError(
                f"The input has {num_placeholders} audio placeholder tokens (id {self.config.audio_token_id}) but "
                f"the audio gives {num_audio_tokens} embeddings. Build inputs with SaladProcessor, which "
                "expands each `<|audio|>` to the clip's token count, and pass all of its outputs."
            )
        return mask

    def spaces_before_windows(
        self, input_ids: torch.LongTensor, placeholder: torch.Tensor, window_slots: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For an adapter that `writes_text`: which windows' text opens with a space (`[num_windows]`), and the
        prompt's lone space tokens that text takes the place of (`[batch, seq]`, to be dropped).

        As in running text, a window's text opens with a space after a word or a mark, and where it continues the
        window before it (a long clip's windows fill consecutive slots); not at the start, after a newline or
        after a chat template's markup. Where the prompt writes a lone space just before the clip, the text takes
        it over: `"Question: <|audio|>"` tokenizes as `Question`, `:`, ` `, and with that token dropped the LM
        reads `Question`, `:`, ` What`, ..., as its tokenizer writes `"Question: What ..."`.
        """
        tokenizers = self.adapter.require_tokenizers()
        batch_index, position = placeholder.nonzero(as_tuple=True)
        first_slot = window_slots.cumsum(0) - window_slots
        opens_with_space, absorbed = [], torch.zeros_like(placeholder)
        for row, column in zip(batch_index[first_slot].tolist(), position[first_slot].tolist()):
            before = int(input_ids[row, column - 1]) if column else None
            if before == tokenizers.space_id:
                absorbed[row, column - 1] = True
            opens_with_space.append(
                before == self.config.audio_token_id
                or before == tokenizers.space_id
                or (before is not None and tokenizers.opens_with_space_after(before))
            )
        return torch.tensor(opens_with_space, device=input_ids.device), absorbed

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        whisper_transcript: WhisperTranscript | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """LM input embeddings with audio embeddings written at the placeholder positions, and the positions the
        LM must not read (`[batch, seq]` bool, True where dropped; None when there are none): audio slots the
        adapter left empty, and, for an adapter that writes text, the prompt's spaces its text takes over."""
        placeholder = input_ids == self.config.audio_token_id
        # The placeholder id may lie past the LM's original vocabulary; its row is never read.
        inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(placeholder, 0))
        if input_features is None:
            if whisper_transcript is not None:
                raise ValueError("`whisper_transcript` needs the `input_features` it was computed from.")
            if bool(placeholder.any()):
                raise ValueError(
                    f"The input has {int(placeholder.sum())} audio placeholder tokens but no `input_features`."
                )
            return inputs_embeds, None
        if input_features_mask is None:
            raise ValueError("`input_features` needs its `input_features_mask` (the processor returns both).")
        windows = self.encode_windows(input_features, input_features_mask, whisper_transcript)
        window_slots = windows.token_mask.sum(-1)
        mask = self.get_placeholder_mask(input_ids, int(window_slots.sum()))
        dropped = torch.zeros_like(mask)
        if self.adapter.writes_text:
            windows.opens_with_space, dropped = self.spaces_before_windows(input_ids, mask, window_slots)
        audio_embeds, keep = self.adapt_windows(windows)
        inputs_embeds = inputs_embeds.masked_scatter(mask[..., None], audio_embeds.to(inputs_embeds.dtype))
        dropped = dropped.masked_scatter(mask, ~keep)
        return inputs_embeds, dropped if bool(dropped.any()) else None

    @staticmethod
    def mask_dropped_positions(
        dropped: torch.Tensor, attention_mask: torch.Tensor | None, past_length: int
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """The attention mask with `dropped` positions (of the current `[batch, seq]` input) set to 0, and
        positions that skip them, both `[batch, past_length + seq]`: the LM then reads the kept tokens exactly
        as if the dropped ones had never been in the sequence."""
        batch, length = dropped.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, past_length + length, dtype=torch.long, device=dropped.device)
        if attention_mask.dim() != 2:
            raise ValueError(
                "An adapter that leaves audio slots empty drops them through the 2-D attention mask; pass a 2-D "
                f"`attention_mask` (got {attention_mask.dim()}-D)."
            )
        attention_mask = attention_mask.long().clone()
        attention_mask[:, -length:] = attention_mask[:, -length:] * (~dropped).long()
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        return attention_mask, position_ids

    @staticmethod
    def drop_positions(
        inputs_embeds: torch.Tensor, dropped: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.LongTensor, torch.LongTensor]:
        """The prompt without its `dropped` positions (and its padding): each row's other positions in order, the
        rows left-padded to the longest, with the attention mask and positions of that shorter prompt. The LM then
        computes only what it reads; its last position, and what follows it in the cache, come out as with the
        dropped positions masked (`mask_dropped_positions`), within float rounding."""
        batch = dropped.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(dropped, dtype=torch.long)
        kept = attention_mask.bool() & ~dropped
        counts = kept.sum(-1)
        width = int(counts.max())
        rows = torch.arange(batch, device=dropped.device)[:, None].expand_as(kept)[kept]
        columns = ((width - counts)[:, None] + kept.long().cumsum(-1) - 1)[kept]
        embeds = inputs_embeds.new_zeros(batch, width, inputs_embeds.shape[-1])
        embeds[rows, columns] = inputs_embeds[kept]
        mask = torch.zeros(batch, width, dtype=torch.long, device=dropped.device)
        mask[rows, columns] = 1
        return embeds, mask, (mask.cumsum(-1) - 1).clamp_min(0)

    def last_hidden_state_without(
        self,
        inputs_embeds: torch.Tensor,
        dropped: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """The LM's final hidden states `[batch, seq, hidden]` computed on the prompt without its `dropped`
        positions and its padding (`drop_positions`), then put back in the input's layout, zero where a position was
        left out. Training and scoring read the states of text positions only, and the empty audio slots are most
        of a clip's slots: the LM, forward and backward, then computes about half the positions of a spoken row. The
        states equal those of the masked sequence (`mask_dropped_positions`) within float rounding."""
        embeds, mask, position_ids = self.drop_positions(inputs_embeds, dropped, attention_mask)
        hidden = self.language_model.get_decoder()(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False, **kwargs
        ).last_hidden_state
        kept = ~dropped if attention_mask is None else attention_mask.bool() & ~dropped
        full = hidden.new_zeros(*dropped.shape, hidden.shape[-1])
        full[kept] = hidden[mask.bool()]  # both list the kept positions row by row, in order
        return BaseModelOutputWithPast(last_hidden_state=full)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_last_hidden_state: bool = False,
        whisper_transcript: WhisperTranscript | None = None,
        **kwargs,
    ) -> SaladCausalLMOutputWithPast | BaseModelOutputWithPast:
        r"""
        input_features (`torch.Tensor`, *optional*):
            Audio windows from [`SaladProcessor`]: log-mel `[n, mels, frames]` or waveforms `[n, samples]`.
        input_features_mask (`torch.Tensor`, *optional*):
            `[n, frames or samples]`, 1 on real input and 0 on padding.
        whisper_transcript ([`WhisperTranscript`], *optional*):
            For a `"whisper_decoder"` adapter: `model.transcribe(input_features, input_features_mask)`, computed
            earlier. The frozen Whisper is then skipped; the features still give each window's slots. The
            transcript depends on the audio and the frozen Whisper alone, so training computes it once per clip
            and caches it (`trainers.distillation.transcript_cache`).
        labels (`torch.LongTensor`, *optional*):
            Token ids for the next-token loss; -100 is ignored. Audio placeholder positions should be -100.
        return_last_hidden_state (`bool`, *optional*, defaults to `False`):
            Stop before the LM head and return the decoder's output (`last_hidden_state`): losses computed in
            chunks from hidden states (cross-modal distillation) never need the full `[batch, seq, vocab]` logits.

        Audio slots the adapter leaves empty are masked out of attention and skipped by the positions; the
        output's `attention_mask`/`position_ids` say which were, and `generate` carries them on. A prefill that
        fills an empty `cache` and keeps one position's logits (as `generate`'s does) leaves them out altogether:
        the cache then holds the shorter prompt, and the returned mask and positions are its, to be carried on. So
        does `return_last_hidden_state` without a cache (training, scoring), whose states come back in the input's
        layout, zero at the positions left out (`last_hidden_state_without`).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        dropped = None
        if inputs_embeds is None:
            inputs_embeds, dropped = self.embed_inputs(
                input_ids, input_features, input_features_mask, whisper_transcript
            )
        elif input_features is not None:
            raise ValueError("`input_features` needs `input_ids` to locate the audio placeholders.")
        if "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        full_position_ids = None
        if dropped is not None:
            past_length = cache.get_seq_length() if cache is not None else 0
            prefill_for_next_token = logits_to_keep == 1 and labels is None and not return_last_hidden_state
            if cache is not None and past_length == 0 and prefill_for_next_token:
                # a prefill that fills a cache and wants the next token only (`generate`): the LM never computes
                # the dropped positions, and the cache and the mask carried on hold the shorter prompt
                inputs_embeds, attention_mask, position_ids = self.drop_positions(
                    inputs_embeds, dropped, attention_mask
                )
                full_position_ids = position_ids
            elif return_last_hidden_state and cache is None:
                # training and scoring: the hidden states of the positions the LM reads, in the input's layout
                return self.last_hidden_state_without(inputs_embeds, dropped, attention_mask, **kwargs)
            else:
                attention_mask, full_position_ids = self.mask_dropped_positions(
                    dropped, attention_mask, past_length
                )
                position_ids = full_position_ids[:, -inputs_embeds.shape[1] :]
        if return_last_hidden_state:
            return self.language_model.get_decoder()(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                **kwargs,
            )
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        return SaladCausalLMOutputWithPast(
            **outputs,
            attention_mask=attention_mask if dropped is not None else None,
            position_ids=full_position_ids,
        )

    def generate(self, *args, **kwargs):
        """[`~GenerationMixin.generate`], after moving a right-padded batch's padding to the left (`left_pad`): the
        processor pads on the right by default, and a batch must generate what its samples generate one by one.

        The audio placeholder is never generated (it is added to `suppress_tokens`): it stands for audio, and a
        written one would have no audio to stand for."""
        if args and isinstance(args[0], torch.Tensor):
            kwargs["input_ids"], args = args[0], args[1:]
        if kwargs.get("input_ids") is not None and kwargs.get("attention_mask") is not None:
            kwargs["input_ids"], kwargs["attention_mask"] = left_pad(
                kwargs["input_ids"], kwargs["attention_mask"]
            )
        config = kwargs.get("generation_config")
        if kwargs.get("suppress_tokens") is None and config is not None:
            # into a copy of the caller's config: generate deprecates a config passed with generation arguments
            config = copy.copy(config)
            config.suppress_tokens = [*(config.suppress_tokens or []), self.config.audio_token_id]
            kwargs["generation_config"] = config
        else:
            suppressed = kwargs.get("suppress_tokens")
            if suppressed is None:
                suppressed = self.generation_config.suppress_tokens or []
            kwargs["suppress_tokens"] = [*suppressed, self.config.audio_token_id]
        return super().generate(*args, **kwargs)

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        """Carry the mask of empty audio slots from the prefill into every later step; a transcript handed in
        (`whisper_transcript`) served the prefill, like the features it belongs to."""
        model_kwargs.pop("whisper_transcript", None)
        if getattr(outputs, "attention_mask", None) is not None:
            model_kwargs["attention_mask"] = outputs.attention_mask
            model_kwargs["position_ids"] = outputs.position_ids
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)


def build_audio_tower(config: SaladConfig) -> PreTrainedModel:
    """The encoder half only: a `WhisperEncoder` for Whisper, `MimiEncoderModel` for Mimi, else `AutoModel`."""
    if config.audio_encoder_family == "whisper":
        return WhisperEncoder(config.audio_config)
    if config.audio_encoder_family == "mimi":
        audio_config = config.audio_config
        if not isinstance(audio_config, MimiEncoderConfig):
            audio_config = MimiEncoderConfig(**audio_config.to_dict())
        return MimiEncoderModel(audio_config)
    return AutoModel.from_config(config.audio_config)


__all__ = ["SaladPreTrainedModel", "SaladForConditionalGeneration"]
