"""Speech LLMs that are not SALAD models, in the gap harness: any model transformers runs with audio and text in
and text out (`qwen2_audio`, `voxtral`, `granite_speech`, `phi4_multimodal`, and remote-code checkpoints that follow
the any-to-any conventions, such as Ultravox; not yet `qwen2_5_omni`, see `NOT_SUPPORTED`).

Each system asks as the SALAD systems do (`eval.scoring`): the few-shot examples and `Question: <question>` in the
user's turn, the reply opening with `Answer:`, each option scored as its continuation. Here the turn goes through the
model's own processor and chat template, and the question is the clip itself (speech), its text (the model's
retention), nothing (the option prior) or an ASR transcript. The families differ only in how their processor takes a
turn that holds a clip (`AudioTurn`); everything after the input ids is one scoring path (`option_scores`).

Forgetting F and misalignment M are measured as for SALAD models (`trainers.distillation.misalignment`), with the
utterance in the user's turn and its transcript as the reply: M compares the model hearing the utterance with the
model reading it; F compares the base text LLM with the model reading it, and needs both to share one tokenizer.
"""

from __future__ import annotations

import base64
import inspect
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMultimodalLM, AutoProcessor

from modeling_salad import SaladConfig
from trainers.assets import EMBEDDED_PREFIX, resolve_checkpoint
from trainers.assets.registry import folder_model_type, is_hub_id
from trainers.distillation.losses import divergence_per_position
from trainers.distillation.misalignment import forgetting_per_position

from .scoring import (
    ANSWER_CUE,
    ItemScores,
    option_scores,
    option_token_ids,
    pad_id,
    prior_prompt,
    text_prompt,
    user_turn,
)
from .tasks import MultipleChoiceItem


@dataclass(frozen=True)
class AudioTurn:
    """How a family's processor takes a user turn that holds a clip.

    With a `marker`, the chat is rendered as text with the marker where the clip goes, and the processor expands it
    (`processor(text=..., audio=...)`). Without one, the processor's own `apply_chat_template` reads the clip from an
    `{"type": "audio"}` content block: the any-to-any convention. `wav_base64`: the block carries the clip as a WAV
    file in base64 (mistral-common, which Voxtral's processor calls, reads no arrays).
    """

    marker: str | None = None
    wav_base64: bool = False


# How each family's processor takes a clip: an any-to-any content block (`"block"`), the block as a WAV file
# (`"wav_block"`), or the processor's own audio token in the rendered text (`"marker"`).
FAMILIES = {
    "qwen2_audio": "block",
    "voxtral": "wav_block",
    "granite_speech": "marker",
    "phi4_multimodal": "marker",
    "ultravox": "marker",
}
NOT_SUPPORTED = {
    "qwen2_5_omni": "its checkpoint loads as a model that also speaks; its text half (the thinker) needs a loading "
    "path of its own, which salad-eval does not have yet",
}
INTERFACE = (
    "a checkpoint whose processor takes audio and text in (an `{'type': 'audio'}` block in `apply_chat_template`, "
    "or an audio token in the text that `processor(text=..., audio=...)` expands) and whose model returns "
    "next-token logits"
)
# Inputs some processors return with an entry per token, which the scoring path would have to extend.
PER_TOKEN_INPUTS = {"token_type_ids", "mm_token_type_ids", "position_ids"}
# The Auto classes a speech LLM loads with, first match wins: in-tree audio LLMs are multimodal LMs; remote code
# registers what its authors chose (Ultravox: `AutoModel`).
MODEL_AUTO_CLASSES = (
    ("AutoModelForMultimodalLM", AutoModelForMultimodalLM),
    ("AutoModelForCausalLM", AutoModelForCausalLM),
    ("AutoModel", AutoModel),
)


def cannot_measure(model_type: str, why: str) -> ValueError:
    return ValueError(
        f"salad-eval cannot measure a {model_type!r} model: {why}. It measures SALAD checkpoints and the speech LLM "
        f"families {sorted(FAMILIES)}, and any other model that is {INTERFACE}. A text LLM becomes a SALAD speech "
        "LLM with `salad-build --audio_encoder ... --language_model ...`."
    )


def is_salad_checkpoint(name: str, trust_remote_code: bool = False) -> bool:
    """Whether `salad-eval --model name` names a SALAD model (an `embedded:` name, or a config of model type
    `salad`), read from the config alone, before any weights load. Names that load nothing count as SALAD names:
    `load_salad` says what is wrong with them."""
    if name.startswith(EMBEDDED_PREFIX):
        return True
    path = Path(name).expanduser()
    if path.is_dir():
        return folder_model_type(path) in (None, SaladConfig.model_type)
    if path.exists() or not is_hub_id(name):
        return True
    try:  # a Hub id: its config says what it is
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise ValueError(f"{name} runs code of its own: pass --trust_remote_code to allow it.") from error
        return True
    except OSError:
        return True
    return config.model_type == SaladConfig.model_type


def audio_marker(processor) -> str | None:
    """The token a processor expands into a clip's audio tokens (`audio_token`; Ultravox: `audio_placeholder`)."""
    marker = getattr(processor, "audio_token", None) or getattr(processor, "audio_placeholder", None)
    return marker if isinstance(marker, str) and marker else None


def audio_turn_of(config, processor) -> AudioTurn:
    """The family's `AudioTurn`; a family not listed is taken when its processor follows one of the two
    conventions, and refused with the supported families and the interface otherwise."""
    if config.model_type in NOT_SUPPORTED:
        raise cannot_measure(config.model_type, NOT_SUPPORTED[config.model_type])
    convention = FAMILIES.get(config.model_type)
    if convention is None:
        follows_blocks = getattr(processor, "chat_template", None) and hasattr(processor, "feature_extractor")
        convention = "block" if follows_blocks else "marker"
    if convention != "marker":
        return AudioTurn(wav_base64=convention == "wav_block")
    if audio_marker(processor) is None:
        raise cannot_measure(config.model_type, "its processor takes no audio")
    return AudioTurn(marker=audio_marker(processor))


def clip_as_wav_base64(clip: np.ndarray, sampling_rate: int) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, clip, sampling_rate, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class SpeechLLM:
    """A speech LLM and its processor, asked the harness's questions in its own chat template."""

    def __init__(self, model, processor, audio_turn: AudioTurn):
        self.model, self.processor, self.audio_turn = model, processor, audio_turn
        self.tokenizer = processor.tokenizer
        self.cue_ids = self.tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    @classmethod
    def from_pretrained(cls, name: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
        path = resolve_checkpoint(name)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        audio_turn = audio_turn_of(config, processor)
        for auto_name, auto_class in MODEL_AUTO_CLASSES:
            if type(config) in auto_class._model_mapping or auto_name in getattr(config, "auto_map", {}):
                model = auto_class.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
                return cls(model.eval(), processor, audio_turn)
        raise cannot_measure(config.model_type, "no Auto class loads it")

    @property
    def sampling_rate(self) -> int:
        extractor = getattr(self.processor, "feature_extractor", None) or self.processor.audio_processor
        return extractor.sampling_rate

    def turn_inputs(self, user: str, clip: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Inputs of a chat whose user turn is `user` followed by `clip` (when given), ready for the reply: a batch
        of one, with the processor's audio tensors."""
        if self.audio_turn.marker is not None:
            text = user if clip is None else user + self.audio_turn.marker
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            audio = {} if clip is None else {"audio": clip}
            inputs = self.processor(text=rendered, **audio, add_special_tokens=False, return_tensors="pt")
        else:
            content = [{"type": "text", "text": user}]
            if clip is not None:
                content.append(
                    {"type": "audio", "base64": clip_as_wav_base64(clip, self.sampling_rate)}
                    if self.audio_turn.wav_base64
                    else {"type": "audio", "audio": clip}
                )
            inputs = self.processor.apply_chat_template(
                [{"role": "user", "content": content}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
            )
        inputs = {key: value for key, value in inputs.items() if isinstance(value, torch.Tensor)}
        self.check_inputs(inputs, clip is not None)
        return inputs

    def check_inputs(self, inputs: dict[str, torch.Tensor], heard: bool) -> None:
        """The scoring path appends the answer to `input_ids` and `attention_mask` and repeats the other tensors,
        which are the clip's: a tensor with an entry per token would come out one answer short, and a clip must
        have come through at all."""
        per_token = sorted(PER_TOKEN_INPUTS & set(inputs))
        if per_token:
            raise ValueError(
                f"The processor returns {per_token}, with an entry per token; salad-eval appends the answer to "
                "`input_ids` and `attention_mask` only, so it cannot score this model yet."
            )
        if heard and set(inputs) <= {"input_ids", "attention_mask"}:
            raise ValueError(
                "The processor returned no audio tensors for a turn holding a clip: its chat template or its call "
                f"dropped the audio. salad-eval needs {INTERFACE}."
            )

    def prompt_inputs(self, prompt: str, clip: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """A harness prompt (`... Question: ...\\nAnswer:`) asked in the chat: `user_turn` of it, then the reply
        opening with the cue."""
        inputs = self.turn_inputs(user_turn(prompt), clip)
        cue = torch.tensor([self.cue_ids], dtype=inputs["input_ids"].dtype)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], cue], dim=1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(cue)], dim=1)
        return inputs

    @torch.no_grad()
    def continuation_logits(
        self, inputs: dict[str, torch.Tensor], continuations: Sequence[list[int]]
    ) -> list[torch.Tensor]:
        """For each continuation, the logits at the positions that predict its tokens (`[len, vocab]`), after the
        prompt `inputs` (a batch of one): one forward pass, the prompt's audio repeated for every row."""
        prompt = inputs["input_ids"][0].tolist()
        rows = [prompt + list(continuation) for continuation in continuations]
        longest = max(len(row) for row in rows)
        pad = pad_id(self.tokenizer)
        input_ids = torch.tensor([row + [pad] * (longest - len(row)) for row in rows])
        attention_mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in rows])
        audio = {
            key: value.repeat(len(rows), *[1] * (value.dim() - 1))
            for key, value in inputs.items()
            if key not in ("input_ids", "attention_mask")
        }  # a chunked clip (Voxtral: [chunks, mels, frames]) stays in order within each row's copy
        audio = {k: v.to(self.model.dtype) if v.is_floating_point() else v for k, v in audio.items()}
        device = self.model.device
        kept = longest - len(prompt) + 1  # every position that predicts a continuation token
        extra = {"logits_to_keep": kept} if self.keeps_logits else {}
        logits = self.model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            **{k: v.to(device) for k, v in audio.items()},
            **extra,
        ).logits[:, -kept:]
        return [logits[r, : len(continuation)] for r, continuation in enumerate(continuations)]

    def score_item(self, item: MultipleChoiceItem, prompt: str, clip: np.ndarray | None = None) -> ItemScores:
        options = option_token_ids(self.tokenizer, item.options)
        logits = self.continuation_logits(self.prompt_inputs(prompt, clip), options)
        sums, means = zip(*(option_scores(rows, option) for rows, option in zip(logits, options)))
        return ItemScores(item.id, list(sums), list(means))

    def score_text_items(
        self, items: Sequence[MultipleChoiceItem], questions: Sequence[str | None], shots: str
    ) -> list[ItemScores]:
        """Each item's options after its question as text (None: left out, the option prior)."""
        return [
            self.score_item(item, prior_prompt(shots) if question is None else text_prompt(question, shots))
            for item, question in zip(items, questions)
        ]

    def score_speech_items(
        self, items: Sequence[MultipleChoiceItem], clips: Sequence[np.ndarray], shots: str
    ) -> list[ItemScores]:
        """Each item's options after its question heard: the clip where the question's text would be."""
        return [self.score_item(item, text_prompt("", shots), clip) for item, clip in zip(items, clips)]


def writes_the_same_ids(tokenizer, other, texts: Sequence[str]) -> bool:
    """Whether two tokenizers write the same ids for `texts`, which is what F compares the two LLMs on (a speech
    LLM's tokenizer adds audio tokens; a Hub checkpoint's may load as another class, e.g. from tekken files)."""
    return all(
        tokenizer(text, add_special_tokens=False)["input_ids"]
        == other(text, add_special_tokens=False)["input_ids"]
        for text in texts
    )


@torch.no_grad()
def speech_llm_forgetting_and_misalignment(
    llm: SpeechLLM, base_lm, base_tokenizer, items: Sequence[MultipleChoiceItem], clips: Sequence[np.ndarray]
) -> dict:
    """F and M per token, overall and per domain, in the schema of `forgetting_and_misalignment`: the utterance in the
    user's turn (heard, or read), its transcript as the reply. F is left out, with the reason, where the base LLM's
    tokenizer is not the speech LLM's (their next-token distributions are over different vocabularies)."""
    texts = [item.spoken_text for item in items]
    same_tokenizer = base_lm is not None and writes_the_same_ids(base_tokenizer, llm.tokenizer, texts)
    sums = defaultdict(lambda: np.zeros(3))  # domain -> [F sum, M sum, tokens]
    for item, clip in zip(items, clips):
        reply = llm.tokenizer(item.spoken_text, add_special_tokens=False)["input_ids"]
        read = llm.turn_inputs(item.spoken_text)
        (text_logits,) = llm.continuation_logits(read, [reply])
        (speech_logits,) = llm.continuation_logits(llm.turn_inputs("", clip), [reply])
        misalignment = divergence_per_position(speech_logits, text_logits)  # KL(P_text || P_speech)
        forgetting = torch.zeros_like(misalignment)
        if same_tokenizer:
            ids = torch.tensor([read["input_ids"][0].tolist() + reply], device=base_lm.device)
            base_logits = base_lm(input_ids=ids).logits[0, -len(reply) - 1 : -1]
            forgetting = forgetting_per_position(text_logits, base_logits)
        sums[item.domain] += [float(forgetting.sum()), float(misalignment.sum()), len(reply)]
    total = sum(sums.values())
    per_domain = {d: {"misalignment": s[1] / s[2], "tokens": int(s[2])} for d, s in sums.items()}
    result = {"misalignment": total[1] / total[2], "tokens": int(total[2])}
    if same_tokenizer:
        result["forgetting"] = total[0] / total[2]
        for domain, summary in per_domain.items():
            summary["forgetting"] = sums[domain][0] / sums[domain][2]
    else:
        result["forgetting_absent"] = (
            "no --base_model"
            if base_lm is None
            else "the base LLM's tokenizer writes other ids than the speech LLM's, so their distributions differ in support"
        )
    result["domains"] = dict(sorted(per_domain.items()))
    return result
