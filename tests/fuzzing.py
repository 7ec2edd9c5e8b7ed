"""The input fuzz harness: random inputs to the processor and to both pipelines, each either accepted (and then every
logit the model computes is finite) or refused with the `ValueError` that salad raises for it (README, "Input
conventions and errors"). Anything else is an undocumented failure.

`tests/test_fuzz.py` runs a few hundred derandomized cases in `make test`; `benchmarks/fuzz.py --cases 10000` runs
many more and writes the counts. Both draw cases from `cases()` and judge them with `run_case`.
"""

from __future__ import annotations

import io
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from conftest import build_tiny
from hypothesis import strategies as st
from transformers import pipeline

import modeling_salad
from modeling_salad import SaladForConditionalGeneration, SaladProcessor
from modeling_salad.pipeline_salad import SaladSpeechToTextPipeline
from trainers.assets.embedded_default import salad_embedded_default_path

SALAD_SOURCE = Path(modeling_salad.__file__).resolve().parent
AUDIO_TOKEN = "<|audio|>"
# Each field is mostly valid (its first entries are repeated): a case fails for a reason or two, not for all at once,
# so that accepted inputs are common enough for their outputs to be checked.
DTYPES = ["float32"] * 50 + ["float64", "float16", "int16", "int32", "int64", "int8", "uint8", "uint16", "uint32",
                            "bool", "complex64"]  # fmt: skip
SAMPLING_RATES = [16000] * 80 + [
    8000,
    22050,
    44100,
    48000,
    999,
    0,
    -16000,
    16000.5,
    1_000_000_007,
    None,
    "16k",
]
SECONDS = [0.3, 1.0, 2.5, 0.3, 1.0, 2.5, 0.0, 0.0001, 0.02, 31.0]
CONTENTS = ["speech-like", "silence", "noise"] * 10 + ["nan", "inf", "loud"]
LAYOUTS = ["mono"] * 40 + ["channels-first", "channels-last", "one-row", "3-d"]


class UndocumentedFailure(AssertionError):
    """An input that salad neither handled nor refused with its own `ValueError`."""


class NonFiniteOutput(UndocumentedFailure):
    """An accepted input whose logits were not all finite."""


@dataclass(frozen=True)
class Clip:
    seconds: float
    content: str
    dtype: str
    layout: str
    seed: int

    def array(self, sampling_rate: int) -> np.ndarray:
        """The clip's samples at `sampling_rate` (16 kHz where the rate itself is not a usable number)."""
        rate = sampling_rate if isinstance(sampling_rate, int) and 0 < sampling_rate < 200_000 else 16000
        n = int(self.seconds * rate)
        rng = np.random.default_rng(self.seed)
        t = np.arange(n) / rate
        audio = {
            "speech-like": 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)),
            "silence": np.zeros(n),
            "noise": 0.1 * rng.standard_normal(n),
            "nan": np.where(rng.random(n) < 0.01, np.nan, 0.1),
            "inf": np.where(rng.random(n) < 0.01, np.inf, 0.1),
            "loud": 1e6 * rng.standard_normal(n),
        }[self.content]
        audio = self.layout_of(audio)
        if self.dtype.startswith(("int", "uint")):
            info = np.iinfo(self.dtype)
            scaled = (
                np.nan_to_num(audio) * info.max if info.min < 0 else (np.nan_to_num(audio) + 1) * info.max / 2
            )
            return np.clip(scaled, info.min, info.max).astype(self.dtype)
        return audio.astype(self.dtype)

    def layout_of(self, audio: np.ndarray) -> np.ndarray:
        if self.layout == "channels-first":
            return np.stack([audio, audio[::-1]])
        if self.layout == "channels-last":
            return np.stack([audio, audio[::-1]], axis=1)
        if self.layout == "one-row":
            return audio[None]
        if self.layout == "3-d":
            return audio[None, None]
        return audio


@dataclass(frozen=True)
class Case:
    """One call: `target` is "processor", "chat_template", "speech_pipeline" or "any_to_any"."""

    target: str
    texts: tuple[str, ...]
    clips: tuple[Clip, ...]
    sampling_rate: object
    form: str = (
        "array"  # how a pipeline gets its audio: array, dict, wav_bytes, path, garbage_bytes, missing_path
    )
    batched: bool = False


clips = st.builds(
    Clip, st.sampled_from(SECONDS), st.sampled_from(CONTENTS), st.sampled_from(DTYPES), st.sampled_from(LAYOUTS),
    st.integers(0, 2**16),
)  # fmt: skip
words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


@st.composite
def prompt(draw, placeholders: int) -> str:
    """Random words with `placeholders` copies of `<|audio|>` among them."""
    parts = [draw(words) for _ in range(placeholders + 1)]
    return AUDIO_TOKEN.join(parts)


@st.composite
def cases(draw) -> Case:
    target = draw(st.sampled_from(["processor", "chat_template", "speech_pipeline", "any_to_any"]))
    audio = tuple(draw(st.lists(clips, min_size=0, max_size=3)))
    rate = draw(st.sampled_from(SAMPLING_RATES))
    if target == "processor":
        samples = draw(st.integers(0, 3))
        counts = draw(st.lists(st.integers(0, 3), min_size=samples, max_size=samples))
        if samples and draw(st.booleans()):  # placeholder counts that add up to the clips (the valid case)
            counts = [len(audio)] + [0] * (samples - 1)
        texts = tuple(draw(prompt(count)) for count in counts)
        return Case(target, texts, audio, rate, batched=draw(st.booleans()))
    if target in ("chat_template", "any_to_any"):
        text = draw(words)
        return Case(target, (text,), audio, rate, batched=draw(st.booleans()))
    form = draw(st.sampled_from(["array", "dict", "wav_bytes", "path", "garbage_bytes", "missing_path"]))
    return Case(target, (draw(words),), audio, rate, form=form, batched=draw(st.booleans()))


class Targets:
    """The objects under test: a model, its processor, and both pipelines (any-to-any loaded from `checkpoint`)."""

    def __init__(self, model, processor, checkpoint: Path, workdir: Path):
        self.model, self.processor, self.workdir = model.eval(), processor, workdir
        self.speech_pipeline = SaladSpeechToTextPipeline(model=self.model, processor=self.processor)
        self.any_to_any = pipeline("any-to-any", model=str(checkpoint), trust_remote_code=True)
        self.nonfinite = 0
        for module in {self.model, self.speech_pipeline.model, self.any_to_any.model}:
            module.register_forward_hook(self.check_logits)

    @classmethod
    def tiny(cls, workdir: Path, family: str = "whisper", adapter_type: str = "mlp") -> Targets:
        """A tiny random model (`build_tiny`), saved to `workdir` for the any-to-any pipeline."""
        model, processor = build_tiny(family, adapter_type)
        model.save_pretrained(workdir / "checkpoint")
        processor.save_pretrained(workdir / "checkpoint")
        return cls(model, processor, workdir / "checkpoint", workdir)

    @classmethod
    def embedded_default(cls, workdir: Path) -> Targets:
        """The shipped embedded default (`whisper_decoder` adapter, Whisper tiny.en + SmolLM2), fp32."""
        checkpoint = salad_embedded_default_path()
        model = SaladForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32)
        return cls(model, SaladProcessor.from_pretrained(checkpoint), checkpoint, workdir)

    def check_logits(self, module, args, output) -> None:
        logits = getattr(output, "logits", None)
        if logits is not None and not torch.isfinite(logits).all():
            self.nonfinite += 1


def call(targets: Targets, case: Case) -> None:
    rate = case.sampling_rate
    arrays = [clip.array(rate) for clip in case.clips]
    if case.target == "processor":
        # no prompt: `text=[]` (refused) when batched, else no text at all (audio alone is accepted)
        text = list(case.texts) if case.batched or len(case.texts) > 1 else (case.texts or [None])[0]
        audio = arrays if case.batched or len(arrays) > 1 else (arrays or [None])[0]
        inputs = targets.processor(text=text, audio=audio, sampling_rate=rate)
        with torch.no_grad():
            targets.model(**inputs)
    elif case.target == "chat_template":
        inputs = targets.processor.apply_chat_template(
            chat(case, arrays),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            targets.model(**inputs)
    elif case.target == "any_to_any":
        messages = chat(case, arrays)
        targets.any_to_any(
            text=[messages] if case.batched else messages, max_new_tokens=2, return_full_text=False
        )
    else:
        inputs = [
            pipeline_input(targets.workdir, array, rate, case.form, index)
            for index, array in enumerate(arrays)
        ]
        inputs = inputs if case.batched or len(inputs) != 1 else inputs[0]
        kwargs = {"sampling_rate": rate} if case.form == "array" else {}
        targets.speech_pipeline(inputs, prompt=case.texts[0] or None, max_new_tokens=2, **kwargs)


def chat(case: Case, arrays: list[np.ndarray]) -> list[dict]:
    """One user turn: the clips as audio parts (with their rate, where the case has one), then the text."""
    audio = [array if case.sampling_rate is None else {"array": array, "sampling_rate": case.sampling_rate}
             for array in arrays]  # fmt: skip
    content = [{"type": "audio", "audio": clip} for clip in audio] + [{"type": "text", "text": case.texts[0]}]
    return [{"role": "user", "content": content}]


def pipeline_input(workdir: Path, array: np.ndarray, rate, form: str, index: int):
    if form == "array":
        return array
    if form == "dict":
        return {"array": array, "sampling_rate": rate}
    if form == "garbage_bytes":
        return bytes(array.tobytes()[:64]) or b"\x00"
    if form == "missing_path":
        return str(workdir / "no-such-file.wav")
    buffer = io.BytesIO()
    try:
        sf.write(buffer, np.asarray(array, dtype=np.float32).T, int(rate), format="WAV", subtype="FLOAT")
    except Exception:  # soundfile cannot write this array or rate: the case degenerates to garbage bytes
        return b"RIFF0000WAVE"
    if form == "wav_bytes":
        return buffer.getvalue()
    path = workdir / f"clip-{index}.wav"
    path.write_bytes(buffer.getvalue())
    return str(path)


def raised_by_salad(error: BaseException) -> bool:
    """Whether salad itself raised this error (its last frame is in `modeling_salad/`)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(SALAD_SOURCE)


def run_case(targets: Targets, case: Case) -> str:
    """ "accepted" or "refused"; raises `UndocumentedFailure` for any other outcome."""
    before = targets.nonfinite
    try:
        call(targets, case)
    except ValueError as error:
        if raised_by_salad(error):
            return "refused"
        raise UndocumentedFailure(f"{type(error).__name__} not raised by salad: {error}\n{case}") from error
    except Exception as error:
        raise UndocumentedFailure(f"{type(error).__name__}: {error}\n{case}") from error
    if targets.nonfinite != before:
        raise NonFiniteOutput(f"non-finite logits from an accepted input: {case}")
    return "accepted"
