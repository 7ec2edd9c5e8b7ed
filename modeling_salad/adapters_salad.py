"""SALAD's adapters: from a batch of encoded audio windows to LM input embeddings.

Every adapter answers one call, `adapter(windows, token_embeddings) -> (embeds, keep)`: `embeds [n, T, hidden]` for
the `T` audio-token slots of each window, and `keep [n, T]`, the slots they fill (the model masks the others out of
the LM's attention). What an adapter needs from the model and what it can do are class attributes
(`SaladAdapter`), so neither the model nor the trainer ever tests an adapter's name. `ADAPTERS` is the one list of
adapter types.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from functools import cached_property, reduce
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch
from torch import nn
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaModel, PreTrainedTokenizerBase
from transformers.models.whisper.modeling_whisper import WhisperDecoder
from transformers.utils import logging

if TYPE_CHECKING:
    from .configuration_salad import SaladConfig

logger = logging.get_logger(__name__)

# Whisper's decoder should write about one token per 0.3 s of speech; a window that sounds like speech (most of its
# frames within 1, 40 dB, of its loudest feature, which is above 0, where digital silence sits at -1.5) but gets under
# one token per `WHISPER_SILENT_SECONDS_PER_TOKEN` has most likely lost its words, and is reported.
WHISPER_LOUD_FRAME_MARGIN = 1.0
WHISPER_SILENT_SECONDS_PER_TOKEN = 2.0
#: Whisper tokens in a row whose second occurrence in a transcript marks it as Whisper failing to stop
#: (`SaladWhisperDecoderAdapter.failed_to_stop`).
REPEAT_NGRAM = 4


def lengths_to_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """Boolean `[batch, max_length]` mask, True on the first `lengths[i]` positions of row i."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


@dataclass
class AudioWindows:
    """A batch of audio windows as the model hands them to its adapter.

    Attributes:
        features: the processor's `input_features`, log-mel `[n, mels, frames]` or waveforms `[n, samples]`.
        feature_lengths: `[n]` valid frames (or samples) of each window.
        encoder_states: `[n, frames, d]` the speech encoder's output; zero past each window's end, or, for an
            adapter that `reads_full_windows`, of each window padded with silence as Whisper reads it (its full
            window, or `SaladConfig.adapter_decoder_pad_seconds`). None where the adapter is handed `transcript`.
        encoder_lengths: `[n]`, for an adapter that `reads_full_windows`: the frames of `encoder_states` that
            belong to each window (the rest is padding of the batch); None: all of them.
        token_mask: `[n, T]` True on each window's audio-token slots (`SaladConfig.audio_length_spec`).
        opens_with_space: `[n]`, for an adapter that `writes_text`: True where the window's text opens with a space
            (it continues the window before it, or takes the place of the space the prompt writes before it);
            None: none does.
        transcript: for an adapter that `writes_text`, the windows' transcripts computed earlier (they depend on
            the frozen speech model alone, so training caches them); None: the adapter transcribes.
    """

    features: torch.Tensor
    feature_lengths: torch.Tensor
    encoder_states: torch.Tensor | None
    token_mask: torch.Tensor
    encoder_lengths: torch.Tensor | None = None
    opens_with_space: torch.Tensor | None = None
    transcript: WhisperTranscript | None = None


class SaladAdapter(nn.Module):
    """The interface of an adapter: one call, and class attributes that say what it needs and does.

    Attributes:
        adapter_type: its name in `SaladConfig.adapter_type`.
        reads_full_windows: the encoder reads each window padded with silence to its full length (Whisper's decoder
            was trained on such input) rather than trimmed to the window's length.
        cuts_at_quiet_stretches: the processor cuts long clips at their quietest stretch, not at fixed times
            (`AudioLengthSpec.quiet_cuts`), because the adapter transcribes and a word cut in two is lost.
        writes_text: the adapter hands the LM text tokens of its own, which carry their leading space: the model
            tells it which windows open with one (`AudioWindows.opens_with_space`), and the adapter needs
            tokenizers (`tokenizers`), which checkpoints save and load with it.
        frozen_parts: pretrained submodules that never train and are not part of the trained weights.
    """

    adapter_type: ClassVar[str]
    reads_full_windows: ClassVar[bool] = False
    cuts_at_quiet_stretches: ClassVar[bool] = False
    writes_text: ClassVar[bool] = False
    frozen_parts: ClassVar[tuple[str, ...]] = ()
    tokenizers: TranscriptTokenizers | None = None

    @classmethod
    def check_config(cls, config: SaladConfig) -> None:
        """Raise a `ValueError` naming the setting and the fix when `config` cannot build this adapter."""

    @classmethod
    def describe(cls, config: SaladConfig) -> str:
        """One line on what this adapter is, with its sizes (model cards print it)."""
        raise NotImplementedError

    @classmethod
    def settings_from_encoder(cls, audio_encoder: str) -> dict:
        """`SaladConfig` settings this adapter takes from the speech checkpoint it is assembled with."""
        return {}

    def load_pretrained_parts(self, speech_model: nn.Module, audio_encoder: str, tokenizer) -> None:
        """Fill the `frozen_parts` from the loaded `speech_model`, and what maps the speech checkpoint (`audio_encoder`,
        its name) onto the LM (its `tokenizer`), when a model is assembled from pretrained components."""

    def forward(
        self, windows: AudioWindows, token_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(embeds [n, T, hidden], keep [n, T])` for the windows' audio-token slots; `token_embeddings` is the
        LM's input embedding table."""
        raise NotImplementedError

    def init_weights(self) -> None:
        """What this adapter initializes its own way, after transformers' `_init_weights` of its layers."""

    def transcribe(self, windows: AudioWindows) -> WhisperTranscript:
        """The transcript an adapter that reads a speech decoder's tokens gives the LM."""
        raise ValueError(
            f"A {self.adapter_type!r} adapter writes no transcript: only one that reads Whisper's decoder does "
            "(adapter_type='whisper_decoder')."
        )

    def requires_grad_(self, requires_grad: bool = True) -> SaladAdapter:
        """As `nn.Module.requires_grad_`, but the `frozen_parts` stay frozen."""
        super().requires_grad_(requires_grad)
        for name in self.frozen_parts:
            getattr(self, name).requires_grad_(False)
        return self

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights training changes (and buffers built for this LM), without the pretrained `frozen_parts`."""
        frozen = tuple(f"{name}." for name in self.frozen_parts)
        return {key: value for key, value in self.state_dict().items() if not key.startswith(frozen)}


def stack_frames(hidden_states: torch.Tensor, stack_factor: int) -> torch.Tensor:
    """Concatenate groups of `stack_factor` consecutive frames: `[n, T, d] -> [n, ceil(T/k), k*d]`.

    The last group is zero-padded, which is why `AudioLengthSpec` rounds token counts up.
    """
    num_clips, num_frames, dim = hidden_states.shape
    remainder = num_frames % stack_factor
    if remainder:
        hidden_states = nn.functional.pad(hidden_states, (0, 0, 0, stack_factor - remainder))
    return hidden_states.reshape(num_clips, -1, stack_factor * dim)


class SwiGLUAdapter(SaladAdapter):
    """An RMS norm, then the LLMs' SwiGLU MLP `down(silu(gate(x)) * up(x))` to the LM width."""

    def __init__(self, config: SaladConfig, in_features: int):
        super().__init__()
        self.norm = nn.RMSNorm(in_features, eps=config.adapter_rms_norm_eps)
        self.gate_proj = nn.Linear(in_features, config.adapter_intermediate_size, bias=False)
        self.up_proj = nn.Linear(in_features, config.adapter_intermediate_size, bias=False)
        self.down_proj = nn.Linear(
            config.adapter_intermediate_size, config.text_config.hidden_size, bias=False
        )

    def mlp(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.norm(hidden_states)
        return self.down_proj(nn.functional.silu(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


class SaladMLPAdapter(SwiGLUAdapter):
    """Frame stacking, then a SwiGLU MLP to the LM width: cheap, and enough when the LM is tuned too."""

    adapter_type = "mlp"

    def __init__(self, config: SaladConfig):
        super().__init__(config, config.audio_encoder_hidden_size * config.adapter_stack_factor)
        self.stack_factor = config.adapter_stack_factor

    @classmethod
    def describe(cls, config: SaladConfig) -> str:
        return f"`mlp`: frame stacking and a SwiGLU MLP of width {config.adapter_intermediate_size}"

    def forward(
        self, windows: AudioWindows, token_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mlp(stack_frames(windows.encoder_states, self.stack_factor)), windows.token_mask


class SaladTransformerAdapter(SaladAdapter):
    """The paper's adapter: a stack of causal Transformer decoder layers between two projections.

    The layers are a Llama decoder (RoPE, grouped-query attention, SwiGLU, RMSNorm) fed with embeddings, so
    SDPA/flash attention and gradient checkpointing come from transformers. Causal attention keeps the
    adapter streamable and makes right padding exact: a frame never attends to the padding after it.
    """

    adapter_type = "transformer"

    def __init__(self, config: SaladConfig):
        super().__init__()
        self.stack_factor = config.adapter_stack_factor
        width = config.adapter_hidden_size
        self.in_proj = nn.Linear(config.audio_encoder_hidden_size * self.stack_factor, width, bias=False)
        self.decoder = LlamaModel(
            LlamaConfig(
                vocab_size=1,
                hidden_size=width,
                intermediate_size=config.adapter_intermediate_size,
                num_hidden_layers=config.adapter_num_layers,
                num_attention_heads=config.adapter_num_attention_heads,
                num_key_value_heads=config.adapter_num_key_value_heads,
                head_dim=width // config.adapter_num_attention_heads,
                rms_norm_eps=config.adapter_rms_norm_eps,
                max_position_embeddings=4096,
                bos_token_id=None,
                eos_token_id=None,
                pad_token_id=None,
            )
        )
        # The decoder only ever receives embeddings: drop the token table so no parameter goes unused
        # (unused parameters break DDP and waste optimizer state).
        self.decoder.embed_tokens = None
        self.out_proj = nn.Linear(width, config.text_config.hidden_size, bias=False)

    @classmethod
    def check_config(cls, config: SaladConfig) -> None:
        if config.adapter_num_attention_heads % config.adapter_num_key_value_heads:
            raise ValueError(
                f"adapter_num_attention_heads ({config.adapter_num_attention_heads}) must be a multiple of "
                f"adapter_num_key_value_heads ({config.adapter_num_key_value_heads})."
            )

    @classmethod
    def describe(cls, config: SaladConfig) -> str:
        return f"`transformer`: {config.adapter_num_layers} causal decoder layers of width {config.adapter_hidden_size}"

    def forward(
        self, windows: AudioWindows, token_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states = self.in_proj(stack_frames(windows.encoder_states, self.stack_factor))
        hidden_states = self.decoder(
            inputs_embeds=hidden_states, attention_mask=windows.token_mask.long(), use_cache=False
        ).last_hidden_state
        return self.out_proj(hidden_states), windows.token_mask


def right_align(
    embeds: torch.Tensor, counts: torch.Tensor, token_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the first `counts[i]` embeddings of window i to the last `counts[i]` of its valid tokens.

    Returns `(embeds [n, T, hidden], keep [n, T])`, `keep` True on the filled positions (the others are zero and
    are masked out of attention by `forward`), so the position just before the text that follows a clip always
    holds the clip's last token. `embeds` may be shorter than `token_mask` (`[n, T' <= T, hidden]`).
    """
    num_slots = token_mask.shape[1]
    if embeds.shape[1] < num_slots:
        embeds = nn.functional.pad(embeds, (0, 0, 0, num_slots - embeds.shape[1]))
    lengths = token_mask.sum(-1)
    positions = torch.arange(num_slots, device=token_mask.device)
    first_kept = (lengths - counts)[:, None]
    keep = (positions[None] >= first_kept) & (positions[None] < lengths[:, None])
    source = (positions[None] - first_kept).clamp(0, num_slots - 1)
    aligned = torch.gather(embeds, 1, source[..., None].expand_as(embeds))
    return aligned * keep[..., None].to(aligned.dtype), keep


#: Where a SALAD checkpoint keeps the speech model's tokenizer (the LM's is at its root, as the processor saves it).
SPEECH_TOKENIZER_FOLDER = "speech_tokenizer"


@dataclass
class TranscriptTokenizers:
    """The two tokenizers between a speech decoder's tokens and the LM's: the speech model's (`speech`) writes the
    decoder's tokens out as text, exactly as its ASR pipeline does, and the LM's (`text`) reads that text back as
    the LM's own tokens, exactly as a cascade of the two models would. Going through text, and not through a map
    from one vocabulary to the other, is what keeps every word: the LM splits numbers, names and rare words into
    other pieces than Whisper, and merges pieces across Whisper's token boundaries.
    """

    speech: PreTrainedTokenizerBase
    text: PreTrainedTokenizerBase

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, config: SaladConfig, subfolder: str = "", **hub_kwargs
    ) -> TranscriptTokenizers:
        """Both tokenizers from the SALAD checkpoint of `config` (a folder or a Hub repo; `hub_kwargs` as
        `from_pretrained`'s). Each is read with its own model's config, so nothing asks to run the checkpoint's
        code."""
        speech_folder = f"{subfolder}/{SPEECH_TOKENIZER_FOLDER}" if subfolder else SPEECH_TOKENIZER_FOLDER
        problem = (
            f"{name_or_path} holds a model whose adapter writes Whisper's transcript as the LM's tokens, but not both "
            f"tokenizers it needs: the LM's at its root and the speech model's in {speech_folder}/. Save such a "
            "model with `save_pretrained` (it writes both), or attach them yourself: "
            "`model.adapter.tokenizers = TranscriptTokenizers(speech_tokenizer, processor.tokenizer)`."
        )
        try:
            speech = AutoTokenizer.from_pretrained(
                name_or_path, subfolder=speech_folder, config=config.audio_config, **hub_kwargs
            )
            text = AutoTokenizer.from_pretrained(
                name_or_path, subfolder=subfolder, config=config.text_config, **hub_kwargs
            )
        except (OSError, ValueError) as error:
            raise ValueError(problem) from error
        # Without its files AutoTokenizer builds an empty tokenizer of the config's type rather than failing.
        if len(speech) <= config.audio_config.eos_token_id or len(text) <= config.audio_token_id:
            raise ValueError(problem)
        return cls(speech=speech, text=text)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        self.text.save_pretrained(save_directory)
        self.speech.save_pretrained(os.path.join(save_directory, SPEECH_TOKENIZER_FOLDER))

    @cached_property
    def space_id(self) -> int | None:
        """The LM's token for a lone space, which a prompt writes before a clip (`"Question: <|audio|>"`); None
        when the LM writes a lone space otherwise."""
        ids = self.text(" ", add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    def opens_with_space_after(self, token_id: int) -> bool:
        """Whether text written right after the LM token `token_id` opens with a space, as running text does after a
        word or a mark; not after whitespace, or after an added token (a chat template's markup, padding)."""
        if token_id in self.text.added_tokens_decoder:
            return False
        text = self.text.decode([token_id])
        return bool(text) and not text[-1].isspace()

    def read(self, speech_ids: list[int], opens_with_space: bool) -> tuple[list[int], list[int]]:
        """The LM's ids of the transcript `speech_ids`, and, for each, the index in `speech_ids` of the token its
        text starts in.

        The text is the speech tokenizer's decoding, as the ASR pipeline writes it, without its trailing spaces
        and, unless `opens_with_space`, without the space Whisper opens a transcript with (the cascade strips both).
        Special tokens of the LM spelled out in it are read as plain text.
        """
        ends = [
            len(self.speech.decode(speech_ids[: k + 1], skip_special_tokens=True))
            for k in range(len(speech_ids))
        ]
        text = self.speech.decode(speech_ids, skip_special_tokens=True)
        start = 0 if opens_with_space else len(text) - len(text.lstrip())
        text = text[start:].rstrip()
        if not text:
            return [], []
        ids, starts = self.lm_tokens(text)
        sources = [min(bisect.bisect_right(ends, start + first), len(speech_ids) - 1) for first in starts]
        return ids, sources

    def lm_tokens(self, text: str) -> tuple[list[int], list[int]]:
        """The LM tokenizer's ids of `text` and the character each starts at, its special and added tokens read as
        plain text: its own pipeline (normalizer, pre-tokenizer, BPE), without the added-token matching."""
        backend = self.text.backend_tokenizer
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        splits = (
            backend.pre_tokenizer.pre_tokenize_str(text)
            if backend.pre_tokenizer
            else [(text, (0, len(text)))]
        )
        ids, starts = [], []
        for split, (split_start, _) in splits:
            tokens = backend.model.tokenize(split)
            pieces = [token.value for token in tokens]
            for k, token in enumerate(tokens):
                ids.append(token.id)
                before = backend.decoder.decode(pieces[:k]) if backend.decoder else "".join(pieces[:k])
                starts.append(split_start + len(before))
        return ids, starts


def whisper_prompt_ids(name_or_path: str) -> list[int]:
    """The ids that open an English transcript without timestamps, from a Whisper checkpoint's generation config:
    start of transcript, then (multilingual models) English and "transcribe", then "no timestamps"."""
    generation = GenerationConfig.from_pretrained(name_or_path)
    prompt = [generation.decoder_start_token_id]
    if getattr(generation, "is_multilingual", False):
        prompt += [generation.lang_to_id["<|en|>"], generation.task_to_id["transcribe"]]
    return [*prompt, generation.no_timestamps_token_id]


def vocabulary_logits(states: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """`states @ head.T` in fp32 (`[n, vocab]` from `[n, d]` states and a `[vocab, d]` head), computed as
    `(head @ states.T).T`: the same products summed in another order, so equal within fp32 rounding. CPU BLAS runs
    the few rows of a decoding step several times faster with the large weight as the left operand (Whisper's
    51,865-token head is most of a beam step's time otherwise; `benchmarks/latency.py`). A single row goes in
    twice: one row takes BLAS's matrix-vector kernel, about 4x slower on this head than its matrix-matrix kernel on
    two (8 ms against 2 ms a greedy step on a 2-core EPYC)."""
    states = states.float()
    if states.shape[0] == 1:
        return (head.float() @ states.repeat(2, 1).T)[:, :1].T
    return (head.float() @ states.T).T


def pad_right(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """`[len(rows), longest]` long tensor of the rows, padded with 0 on the right."""
    length = max(map(len, rows), default=0)
    padded = [row + [0] * (length - len(row)) for row in rows]
    return torch.tensor(padded, dtype=torch.long, device=device).reshape(len(rows), length)


class WhisperTranscript(NamedTuple):
    """Whisper's transcript of a batch of windows.

    Attributes:
        ids: `[n, T]` the tokens it wrote (Whisper's ids; past each window's count, padding).
        states: `[n, T, d]` the decoder state that chose each token.
        counts: `[n]` each window's number of tokens (the end of text excluded).
    """

    ids: torch.Tensor
    states: torch.Tensor
    counts: torch.Tensor


def select_windows(transcript: WhisperTranscript, rows: torch.Tensor) -> WhisperTranscript:
    """The transcript of windows `rows` of a batch's."""
    return WhisperTranscript(transcript.ids[rows], transcript.states[rows], transcript.counts[rows])


def merge_transcripts(parts: list[tuple[torch.Tensor, WhisperTranscript]]) -> WhisperTranscript:
    """One `WhisperTranscript` of the windows of several, each given with the indices of its windows. The states
    come out in the widest of the parts' dtypes: under autocast, Whisper's own encoder (a 30 s read) and our layer
    loop (a short read) hand the decoder states of different dtypes."""
    num_windows = sum(len(rows) for rows, _ in parts)
    length = max(part.ids.shape[1] for _, part in parts)
    first = parts[0][1]
    dtype = reduce(torch.promote_types, (part.states.dtype for _, part in parts))
    ids = first.ids.new_zeros(num_windows, length)
    states = first.states.new_zeros(num_windows, length, first.states.shape[-1], dtype=dtype)
    counts = first.counts.new_zeros(num_windows)
    for rows, part in parts:
        ids[rows, : part.ids.shape[1]] = part.ids
        states[rows, : part.ids.shape[1]] = part.states.to(dtype)
        counts[rows] = part.counts
    return WhisperTranscript(ids, states, counts)


class SaladWhisperDecoderAdapter(SwiGLUAdapter):
    """Whisper's own transcript, handed to the LM as the LM's tokenizer writes it, plus a learned residual.

    Whisper's frozen decoder (`decoder`) transcribes each window as its ASR pipeline does, by a 5-beam search
    (`transcribe`; `adapter_decoder_num_beams`), from input padded as its feature extractor pads it. The
    transcript is written out as text by Whisper's tokenizer and read back by the LM's (`tokenizers`), so that the
    LM reads exactly the tokens a cascade of the same two models gives it: nothing is lost between the two
    vocabularies. Each token's
    embedding is the LM's own, plus a SwiGLU residual of the decoder state that wrote the Whisper token its text
    starts in. The residual starts at zero, where the model is that cascade, made differentiable; distillation
    through the LM fills it in, and the decoder state it reads holds what the transcript does not (how sure
    Whisper was, and of what else). The tokens are right-aligned in the window's slots, and slots they leave empty
    are masked out.
    """

    adapter_type = "whisper_decoder"
    reads_full_windows = True
    cuts_at_quiet_stretches = True
    writes_text = True
    frozen_parts = ("decoder",)

    def __init__(self, config: SaladConfig):
        super().__init__(config, config.audio_encoder_hidden_size)
        self.prompt_ids = list(config.adapter_decoder_prompt_ids)
        self.num_beams = config.adapter_decoder_num_beams
        audio_config = config.audio_config
        self.end_id = audio_config.eos_token_id
        self.suppressed, self.suppressed_first = (
            [token for token in getattr(audio_config, name, None) or [] if token < audio_config.vocab_size]
            for name in ("suppress_tokens", "begin_suppress_tokens")
        )
        self.never, self.not_first = (
            [token for token in tokens if token <= self.end_id]
            for tokens in (self.suppressed, self.suppressed_first)
        )
        self.seconds_per_frame = config.audio_length_spec.feature_hop / config.audio_sampling_rate
        self.decoder = WhisperDecoder(audio_config)

    @classmethod
    def check_config(cls, config: SaladConfig) -> None:
        if config.audio_encoder_family != "whisper":
            raise ValueError(
                "adapter_type='whisper_decoder' reads Whisper's own decoder; the speech encoder here is "
                f"{config.audio_config.model_type!r}. Use a Whisper checkpoint or another adapter_type."
            )
        if config.adapter_decoder_num_beams < 1:
            raise ValueError(
                f"adapter_decoder_num_beams must be at least 1 (1: greedy), got {config.adapter_decoder_num_beams}."
            )
        pad_seconds = config.adapter_decoder_pad_seconds
        if pad_seconds is not None and not pad_seconds > 0:
            raise ValueError(
                f"adapter_decoder_pad_seconds must be a positive number of seconds (None: Whisper's full 30 s), "
                f"got {pad_seconds}."
            )
        if not config.adapter_decoder_prompt_ids:
            raise ValueError(
                "adapter_type='whisper_decoder' needs adapter_decoder_prompt_ids, the ids that open Whisper's "
                "transcript; SaladForConditionalGeneration.from_pretrained_components sets them."
            )

    @classmethod
    def describe(cls, config: SaladConfig) -> str:
        return (
            "`whisper_decoder`: Whisper's own frozen decoder transcribes, and the LLM reads the transcript as its "
            "own tokenizer writes it, each token's embedding plus a SwiGLU residual of Whisper's decoder state of "
            f"width {config.adapter_intermediate_size} (a cascade at initialization, trained end to end)"
        )

    @classmethod
    def settings_from_encoder(cls, audio_encoder: str) -> dict:
        return {"adapter_decoder_prompt_ids": whisper_prompt_ids(audio_encoder)}

    def load_pretrained_parts(self, speech_model: nn.Module, audio_encoder: str, tokenizer) -> None:
        self.decoder = speech_model.get_decoder().requires_grad_(False)
        self.tokenizers = TranscriptTokenizers(
            speech=AutoTokenizer.from_pretrained(audio_encoder), text=tokenizer
        )

    def init_weights(self) -> None:
        # The residual starts at zero: a fresh adapter hands on exactly the LM's embeddings of the transcript.
        nn.init.zeros_(self.down_proj.weight)

    def forward(
        self, windows: AudioWindows, token_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        transcript = self.transcribe(windows) if windows.transcript is None else windows.transcript
        ids, sources, counts = self.transcript_tokens(transcript, windows)
        states = transcript.states.gather(1, sources[..., None].expand(-1, -1, transcript.states.shape[-1]))
        residual = self.mlp(states.to(self.norm.weight.dtype))
        embeds = token_embeddings[ids].to(residual.dtype) + residual
        return right_align(embeds, counts, windows.token_mask)

    def transcript_tokens(
        self, transcript: WhisperTranscript, windows: AudioWindows
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The LM's ids of each window's transcript `[n, L]`, the index of the Whisper token each starts in
        `[n, L]` (the decoder state its residual reads), and their counts `[n]`.

        A window whose transcript comes to more LM tokens than it has slots is cut at its slots, with a warning
        that names the limit (a window's slots outnumber the tokens of any speech; see `greedy_transcript`).
        """
        tokenizers = self.require_tokenizers()
        num_windows = transcript.ids.shape[0]
        opens_with_space = (
            windows.opens_with_space.tolist()
            if windows.opens_with_space is not None
            else [False] * num_windows
        )
        slots = windows.token_mask.sum(-1).tolist()
        rows = [
            tokenizers.read(transcript.ids[i, : transcript.counts[i]].tolist(), opens_with_space[i])
            for i in range(num_windows)
        ]
        over = [i for i, (ids, _) in enumerate(rows) if len(ids) > slots[i]]
        if over:
            logger.warning(
                "The transcript of %d audio window(s) came to more LM tokens (%s) than the window has audio-token "
                "slots (%s), and was cut there. Ordinary speech does not fill them: this is usually Whisper "
                "repeating itself. A smaller adapter_stack_factor gives a window more slots.",
                len(over), ", ".join(str(len(rows[i][0])) for i in over), ", ".join(str(slots[i]) for i in over),
            )  # fmt: skip
            for i in over:
                rows[i] = (rows[i][0][: slots[i]], rows[i][1][: slots[i]])
        device = transcript.ids.device
        ids, sources = (pad_right([row[part] for row in rows], device) for part in (0, 1))
        counts = torch.tensor([len(row[0]) for row in rows], dtype=torch.long, device=device)
        return ids, sources, counts

    def transcript_texts(self, transcript: WhisperTranscript) -> list[str]:
        """Each window's transcript as text, as Whisper's ASR pipeline writes it (what the LM reads)."""
        speech = self.require_tokenizers().speech
        return [
            speech.decode(ids[:count].tolist(), skip_special_tokens=True).strip()
            for ids, count in zip(transcript.ids, transcript.counts)
        ]

    def require_tokenizers(self) -> TranscriptTokenizers:
        if self.tokenizers is None:
            raise ValueError(
                "The 'whisper_decoder' adapter hands the LM Whisper's transcript as the LM's own tokens, through "
                "Whisper's tokenizer and the LM's, and has none. Load the model with `from_pretrained` from a SALAD "
                "checkpoint (it holds both), assemble it with `from_pretrained_components`, or attach them: "
                "`model.adapter.tokenizers = TranscriptTokenizers(speech_tokenizer, processor.tokenizer)`."
            )
        return self.tokenizers

    def transcribe(self, windows: AudioWindows) -> WhisperTranscript:
        """`search`, and a warning about each window that filled its slots without ending (cut there) or that
        sounds like speech but came out (almost) empty."""
        transcript = self.search(windows)
        self.warn_about(transcript, windows)
        return transcript

    def max_tokens(self, windows: AudioWindows) -> torch.Tensor:
        """`[n]` the most tokens each window's transcript may have: its slots, and never more than Whisper's
        decoder can write after its prompt."""
        return windows.token_mask.sum(-1).clamp(max=self.decoder_max_tokens)

    @property
    def decoder_max_tokens(self) -> int:
        """The most tokens Whisper's decoder writes after its prompt (its positions; its ASR pipeline's limit)."""
        return self.decoder.max_target_positions - len(self.prompt_ids)

    def search(self, windows: AudioWindows, max_tokens: torch.Tensor | None = None) -> WhisperTranscript:
        """Transcripts of the windows, window `i` at most `max_tokens[i]` long (default: `max_tokens(windows)`, as
        many as its slots). As Whisper's `generate` transcribes: after the no-timestamps prompt
        (`adapter_decoder_prompt_ids`), never writing its `suppress_tokens` (non-speech symbols) and not starting
        with its `begin_suppress_tokens` (a blank or the end of text), by beam search (`beam_transcript`) or, with
        one beam, greedily (`greedy_transcript`)."""
        max_tokens = self.max_tokens(windows) if max_tokens is None else max_tokens
        search = self.beam_transcript if self.num_beams > 1 else self.greedy_transcript
        states, lengths = windows.encoder_states, windows.encoder_lengths
        with torch.no_grad():
            if lengths is None or bool((lengths == lengths[0]).all()):
                transcript = search(states if lengths is None else states[:, : lengths[0]], max_tokens)
            else:  # windows that Whisper reads with different amounts of silence: each length on its own
                groups = [(lengths == length).nonzero()[:, 0] for length in lengths.unique().tolist()]
                transcript = merge_transcripts(
                    [(rows, search(states[rows, : lengths[rows[0]]], max_tokens[rows])) for rows in groups]
                )
        return transcript

    def failed_to_stop(self, transcript: WhisperTranscript, windows: AudioWindows) -> torch.Tensor:
        """`[n]` True where Whisper failed to stop: the transcript ran to the window's slots, or some
        `REPEAT_NGRAM` tokens of it come twice (with little silence after the words, Whisper tends to write the
        sentence again; one sentence of speech seldom repeats that many tokens)."""
        max_tokens = self.max_tokens(windows)
        failed = (transcript.counts >= max_tokens) & (max_tokens > 0)
        for row, (ids, count) in enumerate(zip(transcript.ids.tolist(), transcript.counts.tolist())):
            ngrams = [tuple(ids[start : start + REPEAT_NGRAM]) for start in range(count - REPEAT_NGRAM + 1)]
            failed[row] |= len(set(ngrams)) < len(ngrams)
        return failed

    def warn_about(self, transcript: WhisperTranscript, windows: AudioWindows) -> None:
        self.warn_about_cut_windows(transcript.counts, self.max_tokens(windows))
        self.warn_about_lost_words(windows, transcript.counts)

    def beam_transcript(self, encoder_states: torch.Tensor, max_tokens: torch.Tensor) -> WhisperTranscript:
        """The best hypothesis of each window's beam search (`beam_hypotheses`)."""
        hypotheses = self.beam_hypotheses(encoder_states, max_tokens)
        best = [window[0] if window else None for window in hypotheses]
        return self.transcript_of_hypotheses(best, encoder_states.new_zeros(0, self.decoder.config.d_model))

    def beam_hypotheses(
        self, encoder_states: torch.Tensor, max_tokens: torch.Tensor
    ) -> list[list[tuple[float, list[int], torch.Tensor]]]:
        """`transcribe`'s beam search on `[n, frames, d]` encoder states, window `i` at most `max_tokens[i]` long
        (within the decoder's positions).

        It follows transformers' `generate` step for step (its speech-recognition pipeline searches Whisper's
        transcripts with 5 beams), so that the LLM reads the transcript a cascade reads: each step keeps the
        `2 * num_beams` best continuations of all beams by summed log-probability (over the whole vocabulary, the
        suppressed tokens at -inf), moves those among the best `num_beams` that end the text (or reach the
        window's limit) to the finished ones, scored by their mean log-probability, and goes on with the best
        `num_beams` unfinished ones; a window is done once it holds `num_beams` finished transcripts and its best
        running beam, scored so, cannot beat the worst of them.

        Cheaper than `generate` where it can be without changing a token: the prompt is read once per window and
        its cache, cross-attention included, is then copied to the window's beams (the cross-attention keys and
        values over the window's frames, 30 s of them by default, are most of a step's work, and the beams of a
        window share them); each beam carries the decoder states of its tokens along, so the chosen transcript
        needs no second pass.

        Returns each window's finished hypotheses, best first (at most `num_beams`; none for a window without
        slots): its score (mean log-probability), its tokens (with the end of text where it ended), the decoder
        state that chose each.
        """
        decoder, beams = self.decoder, self.num_beams
        num_windows, device = encoder_states.shape[0], encoder_states.device
        head = decoder.embed_tokens.weight.float()
        suppress = torch.zeros(head.shape[0], device=device)
        suppress[self.suppressed] = float("-inf")
        suppress_first = suppress.clone()
        suppress_first[self.suppressed_first] = float("-inf")
        open_windows = max_tokens > 0
        if not bool(open_windows.any()):
            return [[] for _ in range(num_windows)]
        prompt = torch.tensor(self.prompt_ids, device=device).expand(num_windows, -1)
        output = decoder(input_ids=prompt, encoder_hidden_states=encoder_states, use_cache=True)
        cache = output.cache
        cache.batch_repeat_interleave(beams)
        hidden = output.last_hidden_state[:, -1].repeat_interleave(beams, 0)
        width = hidden.shape[-1]
        states_per_beam = encoder_states.repeat_interleave(beams, 0)
        running_scores = torch.zeros(num_windows, beams, device=device)
        running_scores[:, 1:] = -1e9
        running = torch.zeros(num_windows, beams, 0, dtype=torch.long, device=device)
        running_states = hidden.new_zeros(num_windows, beams, 0, width)
        finished: list[list[tuple[float, list[int], torch.Tensor]]] = [[] for _ in range(num_windows)]
        window_offsets = torch.arange(num_windows, device=device)[:, None] * beams
        step = 0
        while bool(open_windows.any()):
            logits = vocabulary_logits(hidden, head)
            log_probs = logits.log_softmax(-1) + (suppress_first if step == 0 else suppress)
            totals = (log_probs.view(num_windows, beams, -1) + running_scores[..., None]).flatten(1)
            top_scores, top_indices = totals.topk(2 * beams, dim=-1)
            top_beams, top_tokens = top_indices // head.shape[0], top_indices % head.shape[0]
            step += 1
            ends = (top_tokens == self.end_id) | (step >= max_tokens[:, None])
            candidates = torch.cat([running.gather(1, top_beams[..., None].expand(-1, -1, step - 1)),
                                    top_tokens[..., None]], dim=-1)  # fmt: skip
            states_so_far = torch.cat([running_states, hidden.view(num_windows, beams, 1, width)], dim=2)
            candidate_states = states_so_far.gather(1, top_beams[..., None, None].expand(-1, -1, step, width))
            for window in open_windows.nonzero()[:, 0].tolist():
                for rank in (ends[window, :beams]).nonzero()[:, 0].tolist():
                    hypothesis = (float(top_scores[window, rank] / step), candidates[window, rank].tolist(),
                                  candidate_states[window, rank].clone())  # fmt: skip
                    finished[window].append(hypothesis)
                finished[window] = sorted(finished[window], key=lambda hypothesis: -hypothesis[0])[:beams]
            keep_scores, keep = (top_scores - 1e9 * ends.float()).topk(beams, dim=-1)
            running = candidates.gather(1, keep[..., None].expand(-1, -1, step))
            running_states = candidate_states.gather(1, keep[..., None, None].expand(-1, -1, step, width))
            running_scores = keep_scores
            for window in open_windows.nonzero()[:, 0].tolist():
                full = len(finished[window]) == beams
                if full and float(running_scores[window, 0] / step) <= finished[window][-1][0]:
                    open_windows[window] = False
            open_windows &= ~ends.all(-1)
            if bool(open_windows.any()):
                cache.self_attention_cache.reorder_cache(
                    (top_beams.gather(1, keep) + window_offsets).flatten()
                )
                output = decoder(
                    input_ids=running[..., -1].reshape(-1, 1), encoder_hidden_states=states_per_beam, cache=cache,
                    use_cache=True,
                )  # fmt: skip
                hidden = output.last_hidden_state[:, -1]
        return finished

    def transcript_of_hypotheses(
        self, hypotheses: list[tuple[float, list[int], torch.Tensor] | None], empty_states: torch.Tensor
    ) -> WhisperTranscript:
        """The `WhisperTranscript` of each window's chosen hypothesis (score, its tokens up to and perhaps with the
        end of text, the decoder state that chose each), None for a window that had no tokens to write.
        `empty_states` (`[0, d]`) gives the states' dtype and device."""
        rows = [(tokens, states) for _, tokens, states in (h or (0.0, [], empty_states) for h in hypotheses)]
        counts = [tokens.index(self.end_id) if self.end_id in tokens else len(tokens) for tokens, _ in rows]
        device = empty_states.device
        ids = pad_right([tokens[:count] for (tokens, _), count in zip(rows, counts)], device)
        states = empty_states.new_zeros(len(rows), ids.shape[1], empty_states.shape[-1])
        for row, ((_, chosen), count) in enumerate(zip(rows, counts)):
            states[row, :count] = chosen[:count]
        return WhisperTranscript(ids, states, torch.tensor(counts, dtype=torch.long, device=device))

    def greedy_transcript(self, encoder_states: torch.Tensor, max_tokens: torch.Tensor) -> WhisperTranscript:
        """`transcribe`'s greedy loop on `[n, frames, d]` encoder states, window `i` at most `max_tokens[i]` long
        (within the decoder's positions)."""
        decoder = self.decoder
        head = decoder.embed_tokens.weight[: self.end_id + 1].float()  # once, not at every step
        num_windows = encoder_states.shape[0]
        input_ids = torch.tensor(self.prompt_ids, device=encoder_states.device).expand(num_windows, -1)
        counts = torch.zeros(num_windows, dtype=torch.long, device=encoder_states.device)
        done = max_tokens <= 0
        ids, states, cache = [], [], None
        while not bool(done.all()):
            output = decoder(
                input_ids=input_ids, encoder_hidden_states=encoder_states, cache=cache, use_cache=True
            )
            cache = output.cache
            state = output.last_hidden_state[:, -1]
            step_logits = vocabulary_logits(state, head)
            step_logits[:, self.never if states else self.never + self.not_first] = float("-inf")
            input_ids = step_logits.argmax(-1, keepdim=True)
            done = done | (input_ids[:, 0] == self.end_id)
            counts += (~done).long()
            ids.append(input_ids[:, 0])
            states.append(state)
            done = done | (counts >= max_tokens)
        if not states:
            hidden = encoder_states.new_zeros(num_windows, 0, decoder.config.d_model)
            return WhisperTranscript(counts.new_zeros(num_windows, 0), hidden, counts)
        return WhisperTranscript(torch.stack(ids, 1), torch.stack(states, 1), counts)

    def warn_about_cut_windows(self, counts: torch.Tensor, max_tokens: torch.Tensor) -> None:
        """Warn about windows whose transcript filled their slots before it ended."""
        cut = (counts >= max_tokens) & (max_tokens > 0)
        if bool(cut.any()):
            logger.warning(
                "%d audio window(s) filled all their audio-token slots (%s) before Whisper's transcript ended, and "
                "were cut there. Ordinary speech does not fill them: this is usually Whisper repeating itself, or "
                "writing made-up words for noise, silence or a short fragment. Only for very fast speech does a "
                "smaller adapter_stack_factor (more slots a second) help.",
                int(cut.sum()), ", ".join(str(int(slots)) for slots in max_tokens[cut]),
            )  # fmt: skip

    def warn_about_lost_words(self, windows: AudioWindows, counts: torch.Tensor) -> None:
        """Warn about windows that sound like speech but that Whisper's decoder ended after (almost) no tokens."""
        features, feature_lengths = windows.features, windows.feature_lengths
        valid = lengths_to_mask(feature_lengths, features.shape[-1])
        frame_level = features.amax(1).masked_fill(~valid, float("-inf"))
        loudest = frame_level.amax(-1)
        loud = (frame_level > (loudest - WHISPER_LOUD_FRAME_MARGIN)[:, None]).sum(-1) > feature_lengths // 2
        seconds = feature_lengths * self.seconds_per_frame
        lost = loud & (loudest > 0) & (counts < seconds / WHISPER_SILENT_SECONDS_PER_TOKEN)
        if bool(lost.any()):
            logger.warning(
                "%d audio window(s) of %s s sound like speech, but Whisper's decoder wrote only %s token(s) for them: "
                "their words are probably lost. Check the audio (level, clipping), or cut the clip shorter.",
                int(lost.sum()), ", ".join(f"{float(s):.1f}" for s in seconds[lost]),
                ", ".join(str(int(c)) for c in counts[lost]),
            )  # fmt: skip


#: Every adapter type, by its `SaladConfig.adapter_type` name.
ADAPTERS: dict[str, type[SaladAdapter]] = {
    adapter.adapter_type: adapter
    for adapter in (SaladTransformerAdapter, SaladMLPAdapter, SaladWhisperDecoderAdapter)
}


def adapter_class(adapter_type: str) -> type[SaladAdapter]:
    """The adapter class of `adapter_type`, or a `ValueError` that lists the types."""
    if adapter_type not in ADAPTERS:
        raise ValueError(f"adapter_type must be one of {tuple(ADAPTERS)}, got {adapter_type!r}.")
    return ADAPTERS[adapter_type]
