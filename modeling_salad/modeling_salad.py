"""SALAD speech LLM: a speech encoder, an adapter and a causal LM.

Audio clips are encoded, turned into LM-width embeddings by the adapter and written into the LM's input
embeddings at the `<|audio|>` placeholder positions (`masked_scatter`), so text and speech can be
interleaved freely in one sequence, several clips per sample.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GenerationMixin,
    LlamaConfig,
    LlamaModel,
    MimiEncoderConfig,
    MimiEncoderModel,
    PreTrainedModel,
    WhisperModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperDecoder, WhisperEncoder
from transformers.utils import logging

from .configuration_salad import MIMI_MODEL_TYPES, SaladConfig
from .pipeline_salad import ANY_TO_ANY_TASK, PIPELINE_TASK, SaladAnyToAnyPipeline, SaladSpeechToTextPipeline
from .processing_salad import DEFAULT_AUDIO_TOKEN, add_audio_token

logger = logging.get_logger(__name__)

# Whisper's log-mel features are clamped 8 log10 units under their maximum and then divided by 4: the level
# silence (and Whisper's own zero padding) gets, 2 under a window's highest feature.
WHISPER_FEATURE_FLOOR = 2.0
# Whisper's decoder should write about one token per 0.3 s of speech; a window that sounds like speech (most of its
# frames within 1, 40 dB, of its loudest feature, which is above 0, where digital silence sits at -1.5) but gets under
# one token per `WHISPER_SILENT_SECONDS_PER_TOKEN` has most likely lost its words, and is reported.
WHISPER_LOUD_FRAME_MARGIN = 1.0
WHISPER_SILENT_SECONDS_PER_TOKEN = 2.0


def lengths_to_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """Boolean `[batch, max_length]` mask, True on the first `lengths[i]` positions of row i."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def window_lengths(input_features_mask: torch.Tensor) -> torch.Tensor:
    """Feature frames (or samples) of each audio window; refuses windows that are all padding."""
    lengths = input_features_mask.sum(-1).long()
    if bool((lengths == 0).any()):
        raise ValueError(
            "An audio window in `input_features_mask` is all padding; every window needs content."
        )
    return lengths


def stack_frames(hidden_states: torch.Tensor, stack_factor: int) -> torch.Tensor:
    """Concatenate groups of `stack_factor` consecutive frames: `[n, T, d] -> [n, ceil(T/k), k*d]`.

    The last group is zero-padded, which is why `AudioLengthSpec` rounds token counts up.
    """
    num_clips, num_frames, dim = hidden_states.shape
    remainder = num_frames % stack_factor
    if remainder:
        hidden_states = nn.functional.pad(hidden_states, (0, 0, 0, stack_factor - remainder))
    return hidden_states.reshape(num_clips, -1, stack_factor * dim)


class SaladMLPAdapter(nn.Module):
    """Frame stacking, then a SwiGLU MLP to the LM width: cheap, and enough when the LM is tuned too."""

    def __init__(self, config: SaladConfig):
        super().__init__()
        self.stack_factor = config.adapter_stack_factor
        in_features = config.audio_encoder_hidden_size * self.stack_factor
        self.norm = nn.RMSNorm(in_features, eps=config.adapter_rms_norm_eps)
        self.gate_proj = nn.Linear(in_features, config.adapter_intermediate_size, bias=False)
        self.up_proj = nn.Linear(in_features, config.adapter_intermediate_size, bias=False)
        self.down_proj = nn.Linear(
            config.adapter_intermediate_size, config.text_config.hidden_size, bias=False
        )

    def forward(self, hidden_states: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        hidden_states = self.norm(stack_frames(hidden_states, self.stack_factor))
        return self.down_proj(nn.functional.silu(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


class SaladTransformerAdapter(nn.Module):
    """The paper's adapter: a stack of causal Transformer decoder layers between two projections.

    The layers are a Llama decoder (RoPE, grouped-query attention, SwiGLU, RMSNorm) fed with embeddings, so
    SDPA/flash attention and gradient checkpointing come from transformers. Causal attention keeps the
    adapter streamable and makes right padding exact: a frame never attends to the padding after it.
    """

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

    def forward(self, hidden_states: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        hidden_states = self.in_proj(stack_frames(hidden_states, self.stack_factor))
        hidden_states = self.decoder(
            inputs_embeds=hidden_states, attention_mask=token_mask.long(), use_cache=False
        ).last_hidden_state
        return self.out_proj(hidden_states)


def token_distance_scores(
    frame_embeds: torch.Tensor, token_embeddings: torch.Tensor, temperature: float
) -> torch.Tensor:
    """`-|a - e|^2 / temperature` of every frame `a` against every embedding `e`, up to a per-frame constant.

    Distance, not a dot product: SmolLM2's embeddings share a large common direction (mean cosine 0.44), and a
    distance also pins the frame's norm to that of real token embeddings, which is what the LM expects to read.
    `|a|^2` is dropped: it is the same for every class of a frame, so softmax and argmax do not see it.
    """
    return (2 * frame_embeds @ token_embeddings.T - token_embeddings.pow(2).sum(-1)) / temperature


def blank_embedding(token_embeddings: torch.Tensor) -> torch.Tensor:
    """The blank class of the frame classifier: the mean input embedding, `[1, hidden]`, a neutral LM input."""
    return token_embeddings.mean(0, keepdim=True)


class SaladCTCAdapter(SaladMLPAdapter):
    """A frame classifier over the LM vocabulary plus a blank, with CTC-style compression.

    Each stacked frame goes through the MLP adapter to a point in the LM's input embedding space and is scored
    against every token embedding and the blank (`token_distance_scores`). Frames that are most likely blank
    are dropped, consecutive frames with the same best token are merged (CTC's collapse), and each remaining
    run becomes the probability-weighted sum of its `top_k` most likely token embeddings: about one embedding
    per spoken token, each a mixture of real token embeddings (as in LegoSLM, arXiv 2505.11352; blank
    dropping as in CJST, arXiv 2411.07607). The classifier is trained without the LM, by frame targets from
    word timestamps (`trainers.losses.frame_embedding_loss`), and can then be tuned through the LM.
    """

    def __init__(self, config: SaladConfig):
        super().__init__(config)
        self.temperature = config.adapter_ctc_temperature
        self.blank_threshold = config.adapter_ctc_blank_threshold
        self.top_k = config.adapter_ctc_top_k
        self.audio_token_id = config.audio_token_id

    def frame_log_probs(self, frame_embeds: torch.Tensor, token_embeddings: torch.Tensor) -> torch.Tensor:
        """`[..., vocab + 1]` log-probabilities of every token and (last) the blank; the audio token never wins."""
        embeddings = token_embeddings.float()
        vocab = torch.cat([embeddings, blank_embedding(embeddings)])
        # In fp32 even under autocast: the scores are differences of terms near |e|^2, where bf16's 8-bit mantissa
        # would blur the ranking (and bf16 matmuls are slow on CPUs without native support).
        with torch.autocast(device_type=frame_embeds.device.type, enabled=False):
            scores = token_distance_scores(frame_embeds.float(), vocab, self.temperature)
        if self.audio_token_id is not None and self.audio_token_id < embeddings.shape[0]:
            scores[..., self.audio_token_id] = float("-inf")
        return scores.log_softmax(-1)

    def _runs(
        self, probs: torch.Tensor, token_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CTC's collapse on `[n, T, vocab + 1]` probabilities: `(kept, starts, labels)`, each `[n, T]`.

        `kept`: valid frames not dropped as blank (a window of blanks keeps its least-blank frame); `starts`:
        kept frames that open a run (the previous frame was dropped or has another best token); `labels`: each
        frame's most likely token.
        """
        blank_prob = probs[..., -1]
        labels = probs[..., :-1].argmax(-1)
        kept = token_mask & (blank_prob < self.blank_threshold)
        empty = token_mask.any(-1) & ~kept.any(-1)
        if bool(empty.any()):
            least_blank = blank_prob.masked_fill(~token_mask, float("inf")).argmin(-1)
            kept[empty, least_blank[empty]] = True
        previous_kept = nn.functional.pad(kept[:, :-1], (1, 0), value=False)
        previous_label = nn.functional.pad(labels[:, :-1], (1, 0), value=-1)
        starts = kept & ~(previous_kept & (labels == previous_label))
        return kept, starts, labels

    def greedy_tokens(
        self, frame_embeds: torch.Tensor, token_mask: torch.Tensor, token_embeddings: torch.Tensor
    ) -> list[list[int]]:
        """The most likely token of every run, window by window: the classifier's own transcript (greedy CTC)."""
        probs = self.frame_log_probs(frame_embeds, token_embeddings).exp()
        _, starts, labels = self._runs(probs, token_mask)
        return [row[start].tolist() for row, start in zip(labels, starts)]

    def compress(
        self, frame_embeds: torch.Tensor, token_mask: torch.Tensor, token_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop blank frames, merge repeats, and embed each run: `(embeds [n, T, hidden], keep [n, T])`.

        A window's `k` runs are written at the last `k` valid positions of its row (`keep` marks them), so the
        position just before the text that follows a clip always holds the clip's last spoken token. A window
        whose every frame is blank keeps its least-blank frame: each clip gives the LM at least one token.
        """
        probs = self.frame_log_probs(frame_embeds, token_embeddings).exp()
        token_probs = probs[..., :-1]
        kept, starts, _ = self._runs(probs, token_mask)
        run = (starts.cumsum(-1) - 1).clamp_min(0)  # run index of every frame within its window
        num_runs = starts.sum(-1)
        weights = kept.to(token_probs.dtype)[..., None]
        run_probs = torch.zeros_like(token_probs).scatter_add_(
            1, run[..., None].expand_as(token_probs), token_probs * weights
        )
        run_probs = run_probs / run_probs.sum(-1, keepdim=True).clamp_min(torch.finfo(run_probs.dtype).tiny)
        with torch.autocast(device_type=frame_embeds.device.type, enabled=False):
            run_embeds = mix_token_embeddings(run_probs, token_embeddings, self.top_k)
        embeds, keep = right_align(run_embeds, num_runs, token_mask)
        return embeds.to(frame_embeds.dtype), keep


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


class SaladWhisperDecoderAdapter(nn.Module):
    """One LM embedding per token of Whisper's own transcript: a 1:1 adapter with a pretrained classifier.

    Whisper's frozen decoder transcribes each window greedily (`SaladForConditionalGeneration.transcribe_windows`);
    the decoder state that chose each token carries the choice and its alternatives. Each becomes the
    probability-weighted sum of the LM's input embeddings of its `top_k` most likely tokens (through
    `token_map`, Whisper token -> LM token), plus a SwiGLU residual of the state, zero at initialization, that
    training (distillation through the LM) fills in. This is the `"ctc"` adapter's idea (LegoSLM, arXiv
    2505.11352) with a classifier that was trained on 680k hours instead of ours: the LM reads about one embedding
    per spoken token from the first step, and the trainable part is small (the residual).
    """

    def __init__(self, config: SaladConfig):
        super().__init__()
        self.top_k = config.adapter_ctc_top_k
        width = config.audio_encoder_hidden_size
        self.register_buffer(
            "token_map", torch.zeros(config.audio_config.eos_token_id, dtype=torch.long), persistent=True
        )
        self.norm = nn.RMSNorm(width, eps=config.adapter_rms_norm_eps)
        self.gate_proj = nn.Linear(width, config.adapter_intermediate_size, bias=False)
        self.up_proj = nn.Linear(width, config.adapter_intermediate_size, bias=False)
        self.down_proj = nn.Linear(
            config.adapter_intermediate_size, config.text_config.hidden_size, bias=False
        )

    def forward(
        self, decoder_states: torch.Tensor, token_logits: torch.Tensor, token_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """`[n, T, hidden]` LM embeddings from the decoder states `[n, T, d]` and their text-token logits."""
        mixture = mix_token_embeddings(
            token_logits.float().softmax(-1), token_embeddings, self.top_k, rows=self.token_map
        )
        hidden = self.norm(decoder_states.to(self.norm.weight.dtype))
        residual = self.down_proj(nn.functional.silu(self.gate_proj(hidden)) * self.up_proj(hidden))
        return mixture.to(residual.dtype) + residual


ADAPTER_CLASSES = {
    "mlp": SaladMLPAdapter,
    "transformer": SaladTransformerAdapter,
    "ctc": SaladCTCAdapter,
    "whisper_decoder": SaladWhisperDecoderAdapter,
}


@dataclass
class SaladCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    attention_mask (`torch.LongTensor`, *optional*):
        The attention mask the LM used, `[batch, past + seq]`: the input's, with the audio positions a `"ctc"`
        adapter dropped set to 0. `generate` carries it to the following steps.
    position_ids (`torch.LongTensor`, *optional*):
        `[batch, past + seq]` positions the LM used: dropped positions take no position, so the kept ones
        follow each other as in text.
    """

    attention_mask: torch.LongTensor | None = None
    position_ids: torch.LongTensor | None = None


class SaladPreTrainedModel(PreTrainedModel):
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
        if isinstance(module, SaladWhisperDecoderAdapter):
            # The residual starts at zero: a fresh adapter passes on exactly the mixture of Whisper's choices.
            nn.init.zeros_(module.down_proj.weight)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual, and make the folder self-sufficient for `trust_remote_code` users.

        Besides `AutoConfig`/`AutoModel` (written by `register_for_auto_class`), the `auto_map` also names
        `AutoModelForMultimodalLM`, which the `any-to-any` pipeline loads, and `custom_pipelines` declares
        `salad-speech-to-text` and, for this checkpoint only, `any-to-any` (transformers' pipeline with a collate
        for audio windows). Their code travels as a relative import of this file.
        """
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModelForMultimodalLM": _dotted_name(type(self)),
        }
        self.config.custom_pipelines = {
            PIPELINE_TASK: {
                "impl": _dotted_name(SaladSpeechToTextPipeline),
                "pt": ["AutoModel"],
                "type": "multimodal",
            },
            ANY_TO_ANY_TASK: {
                "impl": _dotted_name(SaladAnyToAnyPipeline),
                "pt": ["AutoModelForMultimodalLM"],
                "type": "multimodal",
            },
        }
        return super().save_pretrained(save_directory, *args, **kwargs)


def _dotted_name(cls: type) -> str:
    """`module.Class` as a checkpoint folder names it: the file's module name, without the package."""
    return f"{cls.__module__.split('.')[-1]}.{cls.__name__}"


class SaladForConditionalGeneration(SaladPreTrainedModel, GenerationMixin):
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
        # Whisper's decoder, frozen, for the "whisper_decoder" adapter (None otherwise).
        self.audio_decoder = (
            WhisperDecoder(config.audio_config) if config.adapter_type == "whisper_decoder" else None
        )
        self.adapter = ADAPTER_CLASSES[config.adapter_type](config)
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
        (positions sliced to it, padding masked) saves up to ~4.5x of encoder compute on short clips.
        """
        encoder = self.audio_tower
        hidden = nn.functional.gelu(encoder.conv1(input_features.to(encoder.conv1.weight.dtype)))
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

    def get_frame_embeddings(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The adapter's output for every audio token of every window, before any compression.

        Returns `(frame_embeds [num_windows, tokens, hidden], token_mask [num_windows, tokens])`, the mask True
        on each window's valid tokens. For `"mlp"` and `"transformer"` adapters these are the audio embeddings;
        a `"ctc"` adapter scores them against the token embeddings (its warm start trains them directly).
        """
        if self.config.adapter_type == "whisper_decoder":
            raise ValueError(
                "A 'whisper_decoder' adapter has no per-frame embeddings (it embeds Whisper's transcript tokens); "
                "frame-level objectives need an 'mlp', 'transformer' or 'ctc' adapter."
            )
        feature_lengths = window_lengths(input_features_mask)
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.audio_tower.parameters())
        with torch.set_grad_enabled(grad):
            if self.config.audio_encoder_family == "whisper":
                hidden = self._encode_whisper(input_features, feature_lengths)
            else:
                hidden = self._encode_waveform(input_features, input_features_mask)
        # Zero the frames past each window's end so the adapter's last stacked group matches an unpadded run.
        frame_mask = lengths_to_mask(self._conv_lengths(feature_lengths), hidden.shape[1])
        hidden = hidden * frame_mask[..., None].to(hidden.dtype)
        token_mask = self.audio_token_mask(input_features, feature_lengths)
        padded_tokens = token_mask.shape[1]
        frame_embeds = self.adapter(hidden, token_mask)
        if frame_embeds.shape[1] != padded_tokens:
            raise RuntimeError(
                f"The encoder produced {frame_embeds.shape[1]} audio tokens where the length spec predicts "
                f"{padded_tokens}; `SaladConfig.audio_length_spec` does not describe this encoder."
            )
        return frame_embeds, token_mask

    def _encode_whisper_padded(
        self, input_features: torch.Tensor, feature_lengths: torch.Tensor
    ) -> torch.Tensor:
        """Whisper's encoder on each window padded with silence to its full 30 s, exactly as Whisper transcribes:
        its decoder learned to read such input (from trimmed input it often fails to stop)."""
        encoder = self.audio_tower
        num_frames = 2 * encoder.config.max_source_positions
        valid = lengths_to_mask(feature_lengths, input_features.shape[-1])[:, None, :]
        floor = input_features.masked_fill(~valid, float("-inf")).amax(dim=(1, 2)) - WHISPER_FEATURE_FLOOR
        padded = floor[:, None, None].expand(-1, input_features.shape[1], num_frames).clone()
        padded[..., : input_features.shape[-1]] = torch.where(valid, input_features, padded[..., :1])
        return encoder(padded.to(encoder.conv1.weight.dtype)).last_hidden_state

    @torch.no_grad()
    def transcribe_windows(
        self, encoder_states: torch.Tensor, max_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Greedy transcripts of `[n, frames, d]` encoder states by Whisper's decoder, window `i` at most
        `max_tokens[i]` tokens long (its audio-token slots). As Whisper's `generate` transcribes: after the
        no-timestamps prompt (`adapter_decoder_prompt_ids`), never writing its `suppress_tokens` (non-speech
        symbols) and not starting with its `begin_suppress_tokens` (a blank or the end of text).

        Returns `(states [n, T, d], logits [n, T, text_vocab], counts [n])`: the decoder state that chose each
        token, that choice's logits over the text tokens, and each window's number of tokens (the end of text
        excluded). A window that fills its slots without ending is cut there, and a warning says so.
        """
        decoder = self.audio_decoder
        end_id = self.config.audio_config.eos_token_id
        head = decoder.embed_tokens.weight[: end_id + 1]
        never, not_first = (
            [token for token in getattr(self.config.audio_config, name, None) or [] if token <= end_id]
            for name in ("suppress_tokens", "begin_suppress_tokens")
        )
        prompt = self.config.adapter_decoder_prompt_ids
        max_tokens = max_tokens.clamp(max=decoder.max_target_positions - len(prompt))
        num_windows = encoder_states.shape[0]
        input_ids = torch.tensor(prompt, device=encoder_states.device).expand(num_windows, -1)
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
            step_logits[:, never if states else never + not_first] = float("-inf")
            input_ids = step_logits.argmax(-1, keepdim=True)
            done = done | (input_ids[:, 0] == end_id)
            counts += (~done).long()
            states.append(state)
            logits.append(step_logits[:, :end_id])
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
            return hidden, encoder_states.new_zeros(num_windows, 0, end_id), counts
        return torch.stack(states, 1), torch.stack(logits, 1), counts

    def warn_about_lost_words(
        self, input_features: torch.Tensor, feature_lengths: torch.Tensor, counts: torch.Tensor
    ) -> None:
        """Warn about windows that sound like speech but that Whisper's decoder ended after (almost) no tokens."""
        valid = lengths_to_mask(feature_lengths, input_features.shape[-1])
        frame_level = input_features.amax(1).masked_fill(~valid, float("-inf"))
        loudest = frame_level.amax(-1)
        loud = (frame_level > (loudest - WHISPER_LOUD_FRAME_MARGIN)[:, None]).sum(-1) > feature_lengths // 2
        seconds = (
            feature_lengths * self.config.audio_length_spec.feature_hop / self.config.audio_sampling_rate
        )
        lost = loud & (loudest > 0) & (counts < seconds / WHISPER_SILENT_SECONDS_PER_TOKEN)
        if bool(lost.any()):
            logger.warning(
                "%d audio window(s) of %s s sound like speech, but Whisper's decoder wrote only %s token(s) for them: "
                "their words are probably lost. Check the audio (level, clipping), or cut the clip shorter.",
                int(lost.sum()), ", ".join(f"{float(s):.1f}" for s in seconds[lost]),
                ", ".join(str(int(c)) for c in counts[lost]),
            )  # fmt: skip

    @torch.no_grad()
    def transcribe(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Whisper's transcript of each window, as `"whisper_decoder"` reads it: `transcribe_windows`'s
        `(states, logits, counts)` on the windows padded to 30 s, each at most its audio-token slots long, and those
        slots (`token_mask [n, T]`). Windows that sound like speech but come out (almost) empty are reported."""
        feature_lengths = window_lengths(input_features_mask)
        token_mask = self.audio_token_mask(input_features, feature_lengths)
        encoder_states = self._encode_whisper_padded(input_features, feature_lengths)
        states, logits, counts = self.transcribe_windows(encoder_states, token_mask.sum(-1))
        self.warn_about_lost_words(input_features, feature_lengths, counts)
        return states, logits, counts, token_mask

    def whisper_decoder_embeddings(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`"whisper_decoder"` adapter: `(embeds [n, T, hidden], keep [n, T], token_mask [n, T])`, each window's
        transcript tokens embedded and right-aligned in its audio-token slots."""
        states, logits, counts, token_mask = self.transcribe(input_features, input_features_mask)
        embeds = self.adapter(states, logits, self.get_input_embeddings().weight)
        embeds, keep = right_align(embeds, counts, token_mask)
        return embeds, keep, token_mask

    def audio_embeddings_and_keep(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Audio embeddings of every valid audio token, concatenated over windows, `[num_audio_tokens, hidden]`,
        and for a `"ctc"` or `"whisper_decoder"` adapter which of them it keeps (`[num_audio_tokens]` bool; None
        otherwise)."""
        if self.config.adapter_type == "whisper_decoder":
            embeds, keep, token_mask = self.whisper_decoder_embeddings(input_features, input_features_mask)
            return embeds[token_mask], keep[token_mask]
        frame_embeds, token_mask = self.get_frame_embeddings(input_features, input_features_mask)
        if self.config.adapter_type != "ctc":
            return frame_embeds[token_mask], None
        embeds, keep = self.adapter.compress(frame_embeds, token_mask, self.get_input_embeddings().weight)
        return embeds[token_mask], keep[token_mask]

    def get_audio_features(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor
    ) -> torch.Tensor:
        """Audio embeddings of every valid audio token, concatenated over windows: `[num_audio_tokens, hidden]`.

        With a `"ctc"` adapter the tokens it drops are zero vectors; `forward` masks them out of attention.

        Args:
            input_features: `[num_windows, mels, frames]` log-mel (Whisper) or `[num_windows, samples]` waveform.
            input_features_mask: `[num_windows, frames or samples]`, 1 on real input, 0 on padding.
        """
        return self.audio_embeddings_and_keep(input_features, input_features_mask)[0]

    def get_placeholder_mask(self, input_ids: torch.LongTensor, audio_embeds: torch.Tensor) -> torch.Tensor:
        """Where the audio embeddings go; raises when placeholders and embeddings do not pair up one to one."""
        mask = input_ids == self.config.audio_token_id
        num_placeholders = int(mask.sum())
        if num_placeholders != audio_embeds.shape[0]:
            raise ValueError(
                f"The input has {num_placeholders} audio placeholder tokens (id {self.config.audio_token_id}) but "
                f"the audio gives {audio_embeds.shape[0]} embeddings. Build inputs with SaladProcessor, which "
                "expands each `<|audio|>` to the clip's token count, and pass all of its outputs."
            )
        return mask

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """LM input embeddings with audio embeddings written at the placeholder positions, and the positions a
        `"ctc"` adapter dropped (`[batch, seq]` bool, True where dropped; None when nothing was)."""
        placeholder = input_ids == self.config.audio_token_id
        # The placeholder id may lie past the LM's original vocabulary; its row is never read.
        inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(placeholder, 0))
        if input_features is None:
            if bool(placeholder.any()):
                raise ValueError(
                    f"The input has {int(placeholder.sum())} audio placeholder tokens but no `input_features`."
                )
            return inputs_embeds, None
        if input_features_mask is None:
            raise ValueError("`input_features` needs its `input_features_mask` (the processor returns both).")
        audio_embeds, keep = self.audio_embeddings_and_keep(input_features, input_features_mask)
        mask = self.get_placeholder_mask(input_ids, audio_embeds)
        inputs_embeds = inputs_embeds.masked_scatter(mask[..., None], audio_embeds.to(inputs_embeds.dtype))
        if keep is None or bool(keep.all()):
            return inputs_embeds, None
        dropped = torch.zeros_like(mask).masked_scatter(mask, ~keep)
        return inputs_embeds, dropped

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
                "A 'ctc' adapter drops audio positions through the 2-D attention mask; pass a 2-D "
                f"`attention_mask` (got {attention_mask.dim()}-D)."
            )
        attention_mask = attention_mask.long().clone()
        attention_mask[:, -length:] = attention_mask[:, -length:] * (~dropped).long()
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        return attention_mask, position_ids

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
        **kwargs,
    ) -> SaladCausalLMOutputWithPast | BaseModelOutputWithPast:
        r"""
        input_features (`torch.Tensor`, *optional*):
            Audio windows from [`SaladProcessor`]: log-mel `[n, mels, frames]` or waveforms `[n, samples]`.
        input_features_mask (`torch.Tensor`, *optional*):
            `[n, frames or samples]`, 1 on real input and 0 on padding.
        labels (`torch.LongTensor`, *optional*):
            Token ids for the next-token loss; -100 is ignored. Audio placeholder positions should be -100.
        return_last_hidden_state (`bool`, *optional*, defaults to `False`):
            Stop before the LM head and return the decoder's output (`last_hidden_state`): losses computed in
            chunks from hidden states (cross-modal distillation) never need the full `[batch, seq, vocab]` logits.

        With a `"ctc"` adapter, the audio positions it drops are masked out of attention and skipped by the
        positions; the output's `attention_mask`/`position_ids` say which were, and `generate` carries them on.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        dropped = None
        if inputs_embeds is None:
            inputs_embeds, dropped = self.embed_inputs(input_ids, input_features, input_features_mask)
        elif input_features is not None:
            raise ValueError("`input_features` needs `input_ids` to locate the audio placeholders.")
        if "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        full_position_ids = None
        if dropped is not None:
            past_length = cache.get_seq_length() if cache is not None else 0
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
        processor pads on the right by default, and a batch must generate what its samples generate one by one."""
        if args and isinstance(args[0], torch.Tensor):
            kwargs["input_ids"], args = args[0], args[1:]
        if kwargs.get("input_ids") is not None and kwargs.get("attention_mask") is not None:
            kwargs["input_ids"], kwargs["attention_mask"] = left_pad(
                kwargs["input_ids"], kwargs["attention_mask"]
            )
        return super().generate(*args, **kwargs)

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        """Carry the mask of dropped audio positions (`"ctc"` adapter) from the prefill into every later step."""
        if getattr(outputs, "attention_mask", None) is not None:
            model_kwargs["attention_mask"] = outputs.attention_mask
            model_kwargs["position_ids"] = outputs.position_ids
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)

    # ------------------------------------------------------------------ assembly
    @classmethod
    def from_pretrained_components(
        cls,
        audio_encoder: str,
        language_model: str,
        audio_token: str = DEFAULT_AUDIO_TOKEN,
        freeze_audio_tower: bool = True,
        lora_config=None,
        dtype: torch.dtype | str | None = None,
        **adapter_kwargs,
    ) -> SaladForConditionalGeneration:
        """Assemble a SALAD model from an encoder checkpoint and an LLM checkpoint (Hub ids or local paths).

        The adapter is freshly initialized; the encoder and the LLM keep their pretrained weights. The LLM's
        tokenizer gets `audio_token` as a special token and the LLM's embeddings grow to fit it. Build the
        matching processor with `SaladProcessor.from_pretrained_components(audio_encoder, language_model,
        model.config)`.

        Args:
            audio_encoder: a Whisper, Mimi or wav2vec2-like checkpoint; only its encoder is kept (and, for a
                `"whisper_decoder"` adapter, Whisper's decoder, frozen, with its tokenizer mapped onto the LLM's).
            language_model: any causal LM checkpoint with a tokenizer.
            audio_token: the placeholder token added to the tokenizer.
            freeze_audio_tower: keep the encoder frozen (the paper's choice).
            lora_config: a `peft.LoraConfig`; LoRA goes on the LLM only and the LLM's base weights are frozen.
            dtype: dtype to load the encoder and the LLM in.
            **adapter_kwargs: `adapter_*` / `audio_chunk_seconds` fields of [`SaladConfig`].
        """
        tokenizer = add_audio_token(AutoTokenizer.from_pretrained(language_model), audio_token)
        audio_config = AutoConfig.from_pretrained(audio_encoder)
        audio_decoder = None
        if adapter_kwargs.get("adapter_type") == "whisper_decoder":
            whisper = WhisperModel.from_pretrained(audio_encoder, dtype=dtype)
            audio_model, audio_decoder = whisper.get_encoder(), whisper.get_decoder().requires_grad_(False)
            adapter_kwargs["adapter_decoder_prompt_ids"] = whisper_prompt_ids(audio_encoder)
        else:
            audio_model = load_audio_encoder(audio_encoder, audio_config, dtype=dtype)
        text_model = AutoModelForCausalLM.from_pretrained(language_model, dtype=dtype)
        if len(tokenizer) > text_model.get_input_embeddings().num_embeddings:
            text_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        config = SaladConfig(
            audio_config=audio_model.config.to_dict(),
            text_config=text_model.config.to_dict(),
            audio_token_id=tokenizer.convert_tokens_to_ids(audio_token),
            **adapter_kwargs,
        )
        with torch.device("meta"):
            model = cls(config)
        model.audio_tower = audio_model
        model.language_model = text_model
        model.adapter = ADAPTER_CLASSES[config.adapter_type](config).to(dtype=text_model.dtype)
        model.adapter.apply(model._init_weights)
        model.audio_decoder = audio_decoder
        if audio_decoder is not None:
            model.adapter.token_map.copy_(
                whisper_token_map(
                    AutoTokenizer.from_pretrained(audio_encoder), tokenizer, model.adapter.token_map.numel()
                )
            )
        model.generation_config = text_model.generation_config
        if freeze_audio_tower:
            model.audio_tower.requires_grad_(False)
        if lora_config is not None:
            model.add_lora_to_language_model(lora_config)
        return model

    def add_lora_to_language_model(self, lora_config) -> None:
        """Add LoRA layers (a `peft.LoraConfig`) to the LLM only, and freeze the LLM's base weights.

        The settings are recorded in `config.lora`, so a checkpoint saved now loads back with its LoRA layers.
        `lora_disabled()` then gives back the original LLM, the teacher of cross-modal distillation, without a
        second copy in memory; `merge_lora()` folds the LoRA weights in before publishing.
        """
        if lora_config.target_modules is None:
            lora_config.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
        if self.has_lora():
            raise ValueError("The LLM already holds LoRA layers; merge_lora() or unload_lora() them first.")
        self.language_model.requires_grad_(False)
        inject_lora(self.language_model, lora_config)
        self.config.lora = lora_settings(lora_config)

    def _lora_layers(self) -> list[nn.Module]:
        from peft.tuners.tuners_utils import BaseTunerLayer  # lazily: remote code loads without peft

        return [module for module in self.language_model.modules() if isinstance(module, BaseTunerLayer)]

    def has_lora(self) -> bool:
        return bool(self._lora_layers())

    def set_lora_enabled(self, enabled: bool) -> None:
        """Switch the LLM's LoRA layers on or off (off: the original text LLM)."""
        for layer in self._lora_layers():
            layer.enable_adapters(enabled)

    @contextlib.contextmanager
    def lora_disabled(self) -> Iterator[None]:
        """The original text LLM for the duration of the block (a no-op without LoRA): the shared teacher of
        cross-modal distillation and the reference of forgetting, with no second copy of the LLM in memory."""
        has_lora = self.has_lora()
        if has_lora:
            self.set_lora_enabled(False)
        try:
            yield
        finally:
            if has_lora:
                self.set_lora_enabled(True)

    def merge_lora(self) -> None:
        """Fold LoRA into the LLM's weights and remove the LoRA layers, leaving a plain LLM."""
        self.unload_lora(merge=True)

    def unload_lora(self, merge: bool = False) -> None:
        """Remove the LoRA layers, folding them into the LLM's weights first when `merge` (else the original
        LLM comes back); save their weights before if you want to keep them as an adapter."""
        lora_layers = set(self._lora_layers())
        for name, module in list(self.language_model.named_modules()):
            if module in lora_layers:
                if merge:
                    module.merge()
                parent_name, _, child = name.rpartition(".")
                setattr(self.language_model.get_submodule(parent_name), child, module.get_base_layer())
        if getattr(
            self.language_model, "_hf_peft_config_loaded", False
        ):  # transformers' record of the adapter
            del self.language_model.peft_config
            self.language_model._hf_peft_config_loaded = False
        self.config.lora = None


LORA_SETTINGS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora")


def lora_settings(lora_config) -> dict:
    """What a checkpoint must record to re-create its LoRA layers: the `LoraConfig` fields that shape them."""
    settings = {name: getattr(lora_config, name) for name in LORA_SETTINGS}
    targets = settings["target_modules"]
    settings["target_modules"] = targets if isinstance(targets, str) else sorted(targets)
    return settings


def inject_lora(language_model: nn.Module, lora_config) -> None:
    """LoRA layers into the LLM with `peft.inject_adapter_in_model`. (transformers' own PEFT integration,
    `add_adapter`, needs peft >= 0.22, which no registry serves yet; this works with the peft we pin.)"""
    from peft import inject_adapter_in_model  # lazily: only models with LoRA need peft

    inject_adapter_in_model(lora_config, language_model)


def lora_config_from_settings(settings: dict):
    """The `peft.LoraConfig` of recorded `lora_settings` (peft is needed only by models that hold LoRA)."""
    from peft import LoraConfig  # lazily: only models with LoRA need peft

    return LoraConfig(**settings)


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


def whisper_prompt_ids(name_or_path: str) -> list[int]:
    """The ids that open an English transcript without timestamps, from a Whisper checkpoint's generation config:
    start of transcript, then (multilingual models) English and "transcribe", then "no timestamps"."""
    generation = GenerationConfig.from_pretrained(name_or_path)
    prompt = [generation.decoder_start_token_id]
    if getattr(generation, "is_multilingual", False):
        prompt += [generation.lang_to_id["<|en|>"], generation.task_to_id["transcribe"]]
    return [*prompt, generation.no_timestamps_token_id]


def load_audio_encoder(name_or_path: str, audio_config, dtype=None) -> PreTrainedModel:
    """Load the encoder half of a speech checkpoint with its pretrained weights."""
    if audio_config.model_type == "whisper":
        return WhisperModel.from_pretrained(name_or_path, dtype=dtype).get_encoder()
    if audio_config.model_type in MIMI_MODEL_TYPES:
        encoder_config = MimiEncoderConfig(**audio_config.to_dict())
        return MimiEncoderModel.from_pretrained(name_or_path, config=encoder_config, dtype=dtype)
    return AutoModel.from_pretrained(name_or_path, dtype=dtype)


__all__ = ["SaladPreTrainedModel", "SaladForConditionalGeneration"]
