"""SALAD's adapters: from a batch of encoded audio windows to LM input embeddings.

Every adapter answers one call, `adapter(windows, token_embeddings) -> (embeds, keep)`: `embeds [n, T, hidden]` for
the `T` audio-token slots of each window, and `keep [n, T]`, the slots they fill (the model masks the others out of
the LM's attention). What an adapter needs from the model and what it can do are class attributes
(`SaladAdapter`), so neither the model nor the trainer ever tests an adapter's name. `ADAPTERS` is the one list of
adapter types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch
from torch import nn
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaModel
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
            adapter that `reads_full_windows`, of each window padded with silence to the encoder's full window.
        token_mask: `[n, T]` True on each window's audio-token slots (`SaladConfig.audio_length_spec`).
    """

    features: torch.Tensor
    feature_lengths: torch.Tensor
    encoder_states: torch.Tensor
    token_mask: torch.Tensor


class SaladAdapter(nn.Module):
    """The interface of an adapter: one call, and class attributes that say what it needs and does.

    Attributes:
        adapter_type: its name in `SaladConfig.adapter_type`.
        reads_full_windows: the encoder reads each window padded with silence to its full length (Whisper's decoder
            was trained on such input) rather than trimmed to the window's length.
        cuts_at_quiet_stretches: the processor cuts long clips at their quietest stretch, not at fixed times
            (`AudioLengthSpec.quiet_cuts`), because the adapter transcribes and a word cut in two is lost.
        frozen_parts: pretrained submodules that never train and are not part of the trained weights.
    """

    adapter_type: ClassVar[str]
    reads_full_windows: ClassVar[bool] = False
    cuts_at_quiet_stretches: ClassVar[bool] = False
    frozen_parts: ClassVar[tuple[str, ...]] = ()

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


def mix_token_embeddings(
    probs: torch.Tensor, token_embeddings: torch.Tensor, top_k: int, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """`[n, T, hidden]`: each position's probability-weighted sum of token embeddings, over its `top_k` most
    probable tokens (renormalized) or, with `top_k=0`, over all. `probs` is `[n, T, vocab]`; token `i`'s embedding is
    `token_embeddings[rows[i]]` (`token_embeddings[i]` without `rows`), so another vocabulary can be mixed in."""
    embeddings = token_embeddings.float()
    if not top_k:
        return probs @ (embeddings if rows is None else embeddings[rows])
    top_probs, top_ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    top_probs = top_probs / top_probs.sum(-1, keepdim=True).clamp_min(torch.finfo(top_probs.dtype).tiny)
    return torch.einsum("ntk,ntkd->ntd", top_probs, embeddings[top_ids if rows is None else rows[top_ids]])


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


def whisper_token_map(whisper_tokenizer, llm_tokenizer, num_text_tokens: int) -> torch.Tensor:
    """For each of Whisper's text tokens, the LM token that starts it: `[num_text_tokens]` LM ids.

    Both tokenizers are byte-level BPEs over the same byte alphabet, so a Whisper token's string is either an LM
    token itself or splits into several under the LM's BPE; then its first piece stands for it (the adapter's
    residual can carry the rest). Single bytes that the LM's alphabet lacks (bytes UTF-8 text never holds, such
    as 0xC0 or 0xF5-0xFF) map to the LM's unknown token, or its end-of-text token when it has none.
    """
    llm_model = llm_tokenizer.backend_tokenizer.model
    vocab = llm_tokenizer.get_vocab()
    fallback = (
        llm_tokenizer.unk_token_id if llm_tokenizer.unk_token_id is not None else llm_tokenizer.eos_token_id
    )
    token_map = torch.full((num_text_tokens,), fallback, dtype=torch.long)
    for whisper_id, piece in enumerate(whisper_tokenizer.convert_ids_to_tokens(list(range(num_text_tokens)))):
        pieces = [vocab[piece]] if piece in vocab else [token.id for token in llm_model.tokenize(piece)]
        if pieces:
            token_map[whisper_id] = pieces[0]
    return token_map


def whisper_prompt_ids(name_or_path: str) -> list[int]:
    """The ids that open an English transcript without timestamps, from a Whisper checkpoint's generation config:
    start of transcript, then (multilingual models) English and "transcribe", then "no timestamps"."""
    generation = GenerationConfig.from_pretrained(name_or_path)
    prompt = [generation.decoder_start_token_id]
    if getattr(generation, "is_multilingual", False):
        prompt += [generation.lang_to_id["<|en|>"], generation.task_to_id["transcribe"]]
    return [*prompt, generation.no_timestamps_token_id]


class WhisperTranscript(NamedTuple):
    """Whisper's greedy transcript of a batch of windows.

    Attributes:
        states: `[n, T, d]` the decoder state that chose each token.
        logits: `[n, T, text_vocab]` that choice's logits over Whisper's text tokens.
        counts: `[n]` each window's number of tokens (the end of text excluded).
    """

    states: torch.Tensor
    logits: torch.Tensor
    counts: torch.Tensor


class SaladWhisperDecoderAdapter(SwiGLUAdapter):
    """One LM embedding per token of Whisper's own transcript: a 1:1 adapter with a pretrained classifier.

    Whisper's frozen decoder (`decoder`) transcribes each window greedily (`transcribe`); the decoder state that
    chose each token carries the choice and its alternatives. Each becomes the probability-weighted sum of the LM's
    input embeddings of its `top_k` most likely tokens (through `token_map`, Whisper token -> LM token), plus a
    SwiGLU residual of the state, zero at initialization, that training (distillation through the LM) fills in
    (the mixture is LegoSLM's idea, arXiv 2505.11352, with a classifier trained on 680k hours). The LM reads about
    one embedding per spoken token from the first step, right-aligned in the window's slots, and the trainable part
    is small (the residual).
    """

    adapter_type = "whisper_decoder"
    reads_full_windows = True
    cuts_at_quiet_stretches = True
    frozen_parts = ("decoder",)

    def __init__(self, config: SaladConfig):
        super().__init__(config, config.audio_encoder_hidden_size)
        self.top_k = config.adapter_top_k
        self.prompt_ids = list(config.adapter_decoder_prompt_ids)
        audio_config = config.audio_config
        self.end_id = audio_config.eos_token_id
        self.never, self.not_first = (
            [token for token in getattr(audio_config, name, None) or [] if token <= self.end_id]
            for name in ("suppress_tokens", "begin_suppress_tokens")
        )
        self.seconds_per_frame = config.audio_length_spec.feature_hop / config.audio_sampling_rate
        self.register_buffer("token_map", torch.zeros(self.end_id, dtype=torch.long), persistent=True)
        self.decoder = WhisperDecoder(audio_config)

    @classmethod
    def check_config(cls, config: SaladConfig) -> None:
        if config.audio_encoder_family != "whisper":
            raise ValueError(
                "adapter_type='whisper_decoder' reads Whisper's own decoder; the speech encoder here is "
                f"{config.audio_config.model_type!r}. Use a Whisper checkpoint or another adapter_type."
            )
        if not config.adapter_decoder_prompt_ids:
            raise ValueError(
                "adapter_type='whisper_decoder' needs adapter_decoder_prompt_ids, the ids that open Whisper's "
                "transcript; SaladForConditionalGeneration.from_pretrained_components sets them."
            )

    @classmethod
    def describe(cls, config: SaladConfig) -> str:
        return (
            "`whisper_decoder`: Whisper's own frozen decoder transcribes; each token becomes the weighted sum of the "
            f"LLM's embeddings of its {config.adapter_top_k} most likely tokens plus a SwiGLU residual of width "
            f"{config.adapter_intermediate_size} (a near-cascade: the words are Whisper's)"
        )

    @classmethod
    def settings_from_encoder(cls, audio_encoder: str) -> dict:
        return {"adapter_decoder_prompt_ids": whisper_prompt_ids(audio_encoder)}

    def load_pretrained_parts(self, speech_model: nn.Module, audio_encoder: str, tokenizer) -> None:
        self.decoder = speech_model.get_decoder().requires_grad_(False)
        self.token_map.copy_(
            whisper_token_map(AutoTokenizer.from_pretrained(audio_encoder), tokenizer, self.token_map.numel())
        )

    def init_weights(self) -> None:
        # The residual starts at zero: a fresh adapter passes on exactly the mixture of Whisper's choices.
        nn.init.zeros_(self.down_proj.weight)

    def forward(
        self, windows: AudioWindows, token_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        transcript = self.transcribe(windows)
        mixture = mix_token_embeddings(
            transcript.logits.float().softmax(-1), token_embeddings, self.top_k, rows=self.token_map
        )
        residual = self.mlp(transcript.states.to(self.norm.weight.dtype))
        return right_align(mixture.to(residual.dtype) + residual, transcript.counts, windows.token_mask)

    def transcribe(self, windows: AudioWindows) -> WhisperTranscript:
        """Greedy transcripts of the windows, window `i` at most its number of audio-token slots long. As Whisper's
        `generate` transcribes: after the no-timestamps prompt (`adapter_decoder_prompt_ids`), never writing its
        `suppress_tokens` (non-speech symbols) and not starting with its `begin_suppress_tokens` (a blank or the end
        of text). A window that fills its slots without ending is cut there, and one that sounds like speech but
        comes out (almost) empty is reported, each with a warning."""
        with torch.no_grad():
            transcript = self.greedy_transcript(windows.encoder_states, windows.token_mask.sum(-1))
        self.warn_about_lost_words(windows, transcript.counts)
        return transcript

    def greedy_transcript(self, encoder_states: torch.Tensor, max_tokens: torch.Tensor) -> WhisperTranscript:
        """`transcribe`'s greedy loop on `[n, frames, d]` encoder states, window `i` at most `max_tokens[i]` long."""
        decoder = self.decoder
        head = decoder.embed_tokens.weight[: self.end_id + 1]
        max_tokens = max_tokens.clamp(max=decoder.max_target_positions - len(self.prompt_ids))
        num_windows = encoder_states.shape[0]
        input_ids = torch.tensor(self.prompt_ids, device=encoder_states.device).expand(num_windows, -1)
        counts = torch.zeros(num_windows, dtype=torch.long, device=encoder_states.device)
        done = max_tokens <= 0
        states, logits, cache = [], [], None
        while not bool(done.all()):
            output = decoder(
                input_ids=input_ids, encoder_hidden_states=encoder_states, cache=cache, use_cache=True
            )
            cache = output.cache
            state = output.last_hidden_state[:, -1]
            step_logits = state.float() @ head.float().T
            step_logits[:, self.never if states else self.never + self.not_first] = float("-inf")
            input_ids = step_logits.argmax(-1, keepdim=True)
            done = done | (input_ids[:, 0] == self.end_id)
            counts += (~done).long()
            states.append(state)
            logits.append(step_logits[:, : self.end_id])
            done = done | (counts >= max_tokens)
        cut = (counts >= max_tokens) & (max_tokens > 0) if states else None
        if cut is not None and bool(cut.any()):
            logger.warning(
                "%d audio window(s) filled all their audio-token slots (%s) before Whisper's transcript ended, and "
                "were cut there. Ordinary speech does not fill them: this is usually Whisper repeating itself, or "
                "writing made-up words for noise, silence or a short fragment. Only for very fast speech does a "
                "smaller adapter_stack_factor (more slots a second) help.",
                int(cut.sum()), ", ".join(str(int(slots)) for slots in max_tokens[cut]),
            )  # fmt: skip
        if not states:
            hidden = encoder_states.new_zeros(num_windows, 0, decoder.config.d_model)
            return WhisperTranscript(hidden, encoder_states.new_zeros(num_windows, 0, self.end_id), counts)
        return WhisperTranscript(torch.stack(states, 1), torch.stack(logits, 1), counts)

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
