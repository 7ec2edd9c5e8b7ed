"""The gap harness: option scoring, loaders, intervals, forgetting F and misalignment M."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import (
    OTHER_INSTANCE_ULPS,
    OTHER_PATH_ULPS,
    build_tiny,
    decoder_tiny,
    float_tolerance,
    make_tokenizer,
    tone,
)
from torch import nn
from transformers import GenerationConfig

from eval import harness, speech
from eval import run as eval_cli
from eval.gap import bootstrap_interval, gap_report, paired_difference
from eval.harness import SYSTEMS, EvalArguments
from eval.scoring import chat_prompt, score_speech_items, score_text_items, text_prompt
from eval.speech import english_generate_kwargs
from eval.tasks import PAPER_TASKS, MultipleChoiceItem, items_from_rows, load_jsonl_tasks, load_task
from trainers.assets.asterisk import asterisk_prompts
from trainers.assets.models import whisper_base_path, whisper_tiny_en_path
from trainers.distillation.misalignment import forgetting_and_misalignment

REPO = Path(__file__).resolve().parent.parent

# the harness's batched, padded scoring against a log-softmax of one sequence: sums regrouped, in fp32
_SCORE = float_tolerance(torch.float32, OTHER_PATH_ULPS)
SCORE_TOLERANCE = {"rel": _SCORE["rtol"], "abs": _SCORE["atol"]}


class FixedDistributionLM(nn.Module):
    """A causal LM stand-in whose next-token distribution is `log_probs` at every position: zero hidden
    states through a head with zero weights and `log_probs` as bias."""

    def __init__(self, log_probs: torch.Tensor, hidden_size: int = 8):
        super().__init__()
        self.hidden_size = hidden_size
        self.head = nn.Linear(hidden_size, log_probs.numel())
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(log_probs)

    def hidden_states_and_head(self, input_ids, attention_mask):
        return torch.zeros(*input_ids.shape, self.hidden_size), self.head


def test_scoring_follows_the_model_and_normalizes_by_option_tokens(whisper_salad):
    """A model with a fixed next-token distribution: scores equal the hand computation, and the length
    normalization flips the choice between a short option and a long one made of likelier tokens."""
    model, processor = whisper_salad
    tokenizer = processor.tokenizer
    short, long = "dog", "quick brown jumps over the lazy"
    ids_short = tokenizer(" " + short, add_special_tokens=False)["input_ids"]
    ids_long = tokenizer(" " + long, add_special_tokens=False)["input_ids"]
    assert len(ids_long) >= 2 * len(ids_short)
    vocab = model.config.text_config.vocab_size
    probs = torch.zeros(vocab)
    probs[ids_long] = math.exp(-5.7)  # per token -5.7: likelier tokens, but more of them
    probs[ids_short] = math.exp(-6.0)  # per token -6.0 (tokens shared with the long option too)
    rest = [t for t in range(vocab) if probs[t] == 0]
    probs[rest] = (1 - probs.sum()) / len(rest)
    log_probs = probs.log()
    lm = FixedDistributionLM(log_probs)
    item = MultipleChoiceItem("i", "d", "which animal", (short, long), 0)
    (scores,) = score_text_items(lm, tokenizer, [item], [text_prompt(item.spoken_text, "")])
    for k, ids in enumerate([ids_short, ids_long]):
        assert scores.logprob[k] == pytest.approx(log_probs[ids].sum().item(), **SCORE_TOLERANCE)
        assert scores.logprob_norm[k] == pytest.approx(log_probs[ids].mean().item(), **SCORE_TOLERANCE)
    assert scores.choice(normalized=False) == 0
    assert scores.choice(normalized=True) == 1


def test_batched_scoring_equals_one_sequence_at_a_time(whisper_salad):
    model, processor = whisper_salad
    items = [
        MultipleChoiceItem("i", "d", "what is two plus two", ("four", "five apples", "six"), 0),
        MultipleChoiceItem("j", "d", "a much longer question about a brown fox and a dog", ("yes", "no"), 1),
    ]
    prompts = [text_prompt(item.spoken_text, "Question: x\nAnswer: y\n\n") for item in items]
    batched = score_text_items(model, processor.tokenizer, items, prompts, batch_size=4)
    for item, prompt, scores in zip(items, prompts, batched):
        prompt_length = len(processor.tokenizer(prompt)["input_ids"])
        for k, option in enumerate(item.options):
            full = processor.tokenizer(prompt + " " + option, return_tensors="pt")
            with torch.no_grad():
                log_probs = torch.log_softmax(model(**full).logits[0].float(), -1)
            ids = full["input_ids"][0]
            expected = sum(log_probs[i - 1, ids[i]].item() for i in range(prompt_length, len(ids)))
            assert scores.logprob[k] == pytest.approx(expected, **SCORE_TOLERANCE)
            assert scores.logprob_norm[k] == pytest.approx(
                expected / (len(ids) - prompt_length), **SCORE_TOLERANCE
            )


def test_batched_speech_scoring_equals_the_processor_path(whisper_salad):
    """Speech items scored in a batch of mixed-length clips equal one item through the processor's own call."""
    assert_speech_scores_equal_the_processor_path(*whisper_salad)


def test_a_clip_is_transcribed_once_for_all_its_options(monkeypatch):
    """A model that reads Whisper's transcript gets each clip's transcript once per batch (not once per option),
    and scores as when every option's row transcribes its clip itself."""
    model, processor = decoder_tiny()
    calls, transcribe = [], model.transcribe
    monkeypatch.setattr(model, "transcribe", lambda f, m: calls.append(f.shape[0]) or transcribe(f, m))
    assert_speech_scores_equal_the_processor_path(model, processor)
    assert calls == [3, 1]  # 3 items x 2 options in batches of 5: items 0, 0, 1, 1, 2, then 2


def test_a_transcript_cache_scores_alike_and_spares_whisper_the_clips_it_holds(tmp_path, monkeypatch):
    """`salad-eval --transcript_cache_dir`: the first run fills the folder and scores as without it; a later run
    (another checkpoint of the same frozen Whisper) reads every clip's transcript back and never runs Whisper."""
    model, processor = decoder_tiny()
    items = [MultipleChoiceItem(str(n), "d", "q", ("yes", "no way"), 0) for n in range(3)]
    clips = [tone(0.5 + 0.4 * n, freq=300 + 200 * n, seed=n) for n in range(3)]
    prompt = text_prompt(processor.audio_token, "")
    expected = score_speech_items(model, processor, items, clips, prompt, batch_size=5)
    args = EvalArguments(transcript_cache_dir=str(tmp_path))
    filling = harness.SaladUnderTest.for_run(model, processor, args)
    # bitwise: the first run transcribes the same batches as the run without a cache
    assert filling.score_speech_items(items, clips, shots="") == expected
    assert (filling.transcript_cache.hits, filling.transcript_cache.misses) == (0, 3)

    def no_whisper(*args, **kwargs):
        raise AssertionError("Whisper ran for a clip the cache holds")

    monkeypatch.setattr(model, "transcribe", no_whisper)
    reading = harness.SaladUnderTest.for_run(model, processor, args)
    assert reading.score_speech_items(items, clips, shots="") == expected
    assert (reading.transcript_cache.hits, reading.transcript_cache.misses) == (3, 0)


def test_a_transcript_cache_for_a_model_that_writes_no_transcript_is_refused(whisper_salad, tmp_path):
    args = EvalArguments(transcript_cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="leave the transcript cache"):
        harness.SaladUnderTest.for_run(*whisper_salad, args)


def assert_speech_scores_equal_the_processor_path(model, processor) -> None:
    items = [MultipleChoiceItem(str(n), "d", "q", ("yes", "no way"), 0) for n in range(3)]
    clips = [tone(0.5 + 0.4 * n, freq=300 + 200 * n, seed=n) for n in range(3)]
    prompt = text_prompt(processor.audio_token, "")
    batched = score_speech_items(model, processor, items, clips, prompt, batch_size=5)
    assert batched[0].logprob != batched[1].logprob  # the audio matters
    for item, clip, scores in zip(items, clips, batched):
        prompt_length = processor(text=prompt, audio=clip)["input_ids"].shape[1]
        for k, option in enumerate(item.options):
            inputs = processor(text=prompt + " " + option, audio=clip)
            with torch.no_grad():
                log_probs = torch.log_softmax(model(**inputs).logits[0].float(), -1)
            ids = inputs["input_ids"][0]
            expected = sum(log_probs[i - 1, ids[i]].item() for i in range(prompt_length, len(ids)))
            assert scores.logprob[k] == pytest.approx(expected, **SCORE_TOLERANCE)


def test_bootstrap_and_paired_difference():
    values = [1, 0] * 50
    low, high = bootstrap_interval(values, seed=1)
    # the normal approximation: 0.5 -+ 1.96 * sqrt(0.25 / 100) = [0.402, 0.598]
    assert low == pytest.approx(0.402, abs=0.02) and high == pytest.approx(0.598, abs=0.02)
    assert bootstrap_interval(values, seed=1) == (low, high)  # seeded
    assert bootstrap_interval([1, 1, 1]) == (1.0, 1.0) and bootstrap_interval([0.25]) == (0.25, 0.25)
    same = paired_difference([1, 0, 1, 1], [1, 0, 1, 1])
    assert same["value"] == 0 and same["ci95"] == [0.0, 0.0]


def test_gap_report_per_domain_and_prior_agreement():
    correct = {
        "base_text": [1, 1, 1, 0],
        "salad_speech": [0, 1, 0, 0],
        "salad_text": [1, 1, 1, 0],
        "prior": [0, 1, 0, 1],
        "cascade": [1, 1, 0, 0],
    }
    choices = {"salad_speech": [2, 0, 1, 3], "prior": [2, 0, 1, 0]}
    report = gap_report(correct, choices, ["a", "a", "b", "b"])
    assert report["speech_minus_cascade"]["value"] == pytest.approx(-0.25)  # speech 1/4 right, cascade 2/4
    assert report["domains"]["b"]["speech_minus_cascade"]["value"] == 0
    assert report["gap"]["value"] == pytest.approx(0.5)
    assert report["retention_gap"]["value"] == 0
    assert report["speech_prior_agreement"] == 0.75
    assert report["speech_over_prior"]["value"] == pytest.approx(-0.25)  # speech 1/4 right, prior 2/4
    assert report["domains"]["a"]["speech_over_prior"]["value"] == 0  # both right on the same one of a's two
    assert report["domains"]["a"]["gap"]["value"] == pytest.approx(0.5)
    assert report["domains"]["b"]["systems"]["base_text"]["n"] == 2


def test_forgetting_is_zero_when_the_student_is_the_teacher(whisper_salad):
    model, processor = whisper_salad
    rows = [
        {"text": "the quick brown fox", "audio": {"array": tone(0.7), "sampling_rate": 16000}, "domain": "x"}
    ]
    result = forgetting_and_misalignment(model, processor, rows)
    assert result["forgetting"] == 0.0
    assert result["misalignment"] > 0
    assert result["domains"]["x"]["tokens"] == result["tokens"] > 0


def test_misalignment_is_zero_when_speech_embeddings_equal_text_embeddings(whisper_salad, monkeypatch):
    """An adapter that emits exactly the transcript's token embeddings makes speech and text inputs equal."""
    model, processor = whisper_salad
    transcript = "one two three"
    ids = processor.tokenizer(transcript, add_special_tokens=False)["input_ids"]
    samples = next(n for n in range(400, 40000, 160) if processor.length_spec.num_tokens(n) == len(ids))
    monkeypatch.setattr(
        model,
        "adapt_windows",
        lambda *a, **k: (
            model.get_input_embeddings()(torch.tensor(ids)),
            torch.ones(len(ids), dtype=torch.bool),
        ),
    )
    rows = [{"text": transcript, "audio": {"array": tone(samples / 16000), "sampling_rate": 16000}}]
    result = forgetting_and_misalignment(model, processor, rows, continuation="so {transcript}")
    assert result["misalignment"] == pytest.approx(
        0.0, abs=float_tolerance(torch.float32, OTHER_INSTANCE_ULPS)["atol"]
    )


def test_forgetting_against_a_different_base_model_is_positive(whisper_salad):
    model, processor = whisper_salad
    other = build_tiny("whisper", "mlp", seed=1)[0].language_model
    rows = [{"text": "a b c d", "audio": {"array": tone(0.5), "sampling_rate": 16000}}]
    assert forgetting_and_misalignment(model, processor, rows, base_model=other)["forgetting"] > 0


def test_forgetting_against_the_text_llm_a_salad_model_was_built_from():
    """A SALAD model's LM has one more row than its text LLM (`<|audio|>`): F compares the ids both have, and is 0
    against the text LLM itself while the LM is unchanged (the demo's `--base_model` run)."""
    model, processor = build_tiny("whisper", "mlp")
    text_llm = copy.deepcopy(model.language_model)
    text_llm.resize_token_embeddings(model.language_model.get_output_embeddings().weight.shape[0] - 1)
    rows = [{"text": "a b c d", "audio": {"array": tone(0.5), "sampling_rate": 16000}}]
    assert forgetting_and_misalignment(model, processor, rows, base_model=text_llm)[
        "forgetting"
    ] == pytest.approx(0.0, abs=1e-6)


def test_jsonl_loader_reports_the_malformed_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    good = {"id": "a", "domain": "d", "question": "q?", "options": ["x", "y"], "answer": 1}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "answer": 5}) + "\n")
    with pytest.raises(ValueError, match="line 2.*answer"):
        load_jsonl_tasks(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_jsonl_tasks(path)


PAPER_FIXTURES = {
    "arc_challenge": {"id": "Q1", "question": "Which is a gas?", "choices": {"text": ["ice", "steam"], "label": ["A", "B"]}, "answerKey": "B"},
    "openbookqa": {"id": "7", "question_stem": "Sun is a", "choices": {"text": ["star", "moon"], "label": ["A", "B"]}, "answerKey": "A"},
    "hellaswag": {"ind": 4, "ctx": "A man sits", "endings": ["down.", "up.", "x.", "y."], "label": "0", "activity_label": "Sitting"},
    "piqa": {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0},
    "storycloze": {"story_id": "s", "input_sentence_1": "A.", "input_sentence_2": "B.", "input_sentence_3": "C.", "input_sentence_4": "D.", "sentence_quiz1": "E.", "sentence_quiz2": "F.", "answer_right_ending": 2},
    "mmsu": {"question_id": "m1", "question": "2+2?", "option_a": "3", "option_b": "4", "option_c": "5", "option_d": "6", "reference": "B", "question_category": "math"},
}  # fmt: skip
EXPECTED_ANSWERS = {
    "arc_challenge": 1,
    "openbookqa": 0,
    "hellaswag": 0,
    "piqa": 0,
    "storycloze": 1,
    "mmsu": 1,
}


@pytest.mark.parametrize("task", sorted(PAPER_TASKS))
def test_paper_task_mappers_on_local_fixtures(task):
    _, _, _, mapper = PAPER_TASKS[task]
    (item,) = items_from_rows([PAPER_FIXTURES[task]], task, mapper)
    assert item.answer == EXPECTED_ANSWERS[task]
    assert item.task == task and item.spoken_text
    assert math.isfinite(item.answer)


def test_hellaswag_unlabeled_rows_are_skipped():
    _, _, _, mapper = PAPER_TASKS["hellaswag"]
    assert items_from_rows([{**PAPER_FIXTURES["hellaswag"], "label": ""}], "hellaswag", mapper) == []


def test_generic_mapper_letters_and_text_answers():
    from eval.tasks import generic_mapper

    rows = [{"q": "Pick B", "A": "a", "B": "b", "gold": "B"}]
    (item,) = items_from_rows(rows, "mine", generic_mapper("q", ["A", "B"], "gold", answer_format="letter"))
    assert item.answer == 1
    rows = [{"q": "Pick b", "opts": ["a", "b"], "gold": "b"}]
    (item,) = items_from_rows(rows, "mine", generic_mapper("q", "opts", "gold", answer_format="text"))
    assert item.answer == 1
    assert np.isfinite(item.answer)


def test_evaluate_metric_modules_load_from_local_paths():
    import evaluate

    accuracy = evaluate.load(str(REPO / "eval" / "metrics" / "accuracy_ci"))
    result = accuracy.compute(predictions=[0, 2, 1, 1], references=[0, 1, 1, 1])
    assert result["accuracy"] == 0.75 and result["ci95_low"] <= 0.75 <= result["ci95_high"]
    gap = evaluate.load(str(REPO / "eval" / "metrics" / "text_speech_gap"))
    result = gap.compute(
        text_predictions=[0, 1, 1, 1], speech_predictions=[0, 2, 0, 1], references=[0, 1, 1, 1]
    )
    assert result["gap"] == 0.5 and result["text_accuracy"] == 1.0


@pytest.fixture
def tiny_harness(whisper_salad, monkeypatch):
    """`eval.harness` on the tiny model with stand-ins for TTS (tones) and ASR (the true text); the ASR stand-in
    records how many clips it was given."""
    model, processor = whisper_salad
    monkeypatch.setattr(harness, "load_salad", lambda name, dtype: (model, processor))
    monkeypatch.setattr(
        harness,
        "synthesize_items",
        lambda items, sr, **tts: [tone(0.3 + 0.01 * i, sr) for i in range(len(items))],
    )
    harness.transcribed = []

    def fake_transcribe(asr_model, clips, sampling_rate):
        harness.transcribed.append(len(clips))
        return [item.spoken_text for item in harness.load_task("offline", 12)]

    monkeypatch.setattr(harness, "transcribe", fake_transcribe)
    return harness


@pytest.fixture
def tiny_eval_run(tiny_harness, tmp_path):
    args = tiny_harness.EvalArguments(
        limit=12, output_dir=str(tmp_path), bootstrap_samples=200, num_fewshot=2
    )
    return tiny_harness.run(args), tmp_path, tiny_harness.transcribed


def test_harness_writes_json_markdown_and_plots(tiny_eval_run):
    results, out, transcribed = tiny_eval_run
    report = results["tasks"]["offline"]
    assert set(report["systems"]) == {"base_text", "salad_text", "salad_speech", "cascade", "prior"}
    # a frozen LLM: retention is exact, F is zero, and the cascade with perfect ASR equals the text reference
    assert report["retention_gap"]["value"] == 0
    assert report["systems"]["cascade"]["accuracy"] == report["systems"]["base_text"]["accuracy"]
    assert report["distribution"]["forgetting"] == 0.0 and report["distribution"]["misalignment"] > 0
    assert report["cascade_wer"] == 0.0 and transcribed == [12]
    saved = json.loads((out / "results.json").read_text())
    assert saved["tasks"]["offline"]["gap"] == report["gap"]
    markdown = (out / "results.md").read_text()
    assert "| offline | salad_speech |" in markdown and "speech - prior (paired)" in markdown
    assert "speech - cascade (paired)" in markdown
    for difference in (report["speech_over_prior"], report["speech_minus_cascade"]):
        assert (
            f"{difference['value']:+.3f} [{difference['ci95'][0]:+.3f}, {difference['ci95'][1]:+.3f}]"
            in markdown
        )
    assert (out / "accuracy_per_task.png").stat().st_size > 0 and (
        out / "gap_per_domain_offline.png"
    ).exists()


@pytest.mark.parametrize("chat", [False, True])
def test_the_self_cascade_reads_the_models_own_repeats_with_the_base_llm(
    tiny_harness, tmp_path, monkeypatch, chat
):
    """`self_cascade` asks the SALAD model to repeat each clip, in the prompt format the run asks in, and the
    base LLM answers those transcripts: perfect repeats score exactly as the text reference, with WER 0."""
    asked = []

    def perfect_repeats(model, processor, rows, prompt):
        asked.append((prompt.chat, len(rows)))
        return [row.text for row in rows]

    monkeypatch.setattr(speech, "greedy_repeats", perfect_repeats)
    args = tiny_harness.EvalArguments(
        limit=12, output_dir=str(tmp_path), bootstrap_samples=50, chat=chat, distribution_metrics=False,
        systems=["base_text", "self_cascade", "prior"],
    )  # fmt: skip
    report = tiny_harness.run(args)["tasks"]["offline"]
    assert asked == [(chat, 12)] and tiny_harness.transcribed == []  # no Whisper for the self-cascade
    assert report["systems"]["self_cascade"]["accuracy"] == report["systems"]["base_text"]["accuracy"]
    assert report["self_cascade_wer"] == 0.0
    assert report["items"][0]["self_cascade"] == report["items"][0]["base_text"]


def test_the_self_cascade_writes_down_what_the_tiny_model_generates(tiny_harness, tmp_path):
    """Unpatched, the self-cascade's transcripts are the model's greedy repeats: the tiny random model writes
    nonsense, so their WER is above 0 and is reported."""
    args = tiny_harness.EvalArguments(
        limit=4, output_dir=str(tmp_path), bootstrap_samples=20, distribution_metrics=False,
        systems=["base_text", "self_cascade"],
    )  # fmt: skip
    report = tiny_harness.run(args)["tasks"]["offline"]
    assert report["self_cascade_wer"] > 0


def test_the_chat_flag_asks_every_system_in_the_chat_template(tiny_harness, tmp_path, monkeypatch):
    """With `chat`, the text, cascade, prior and speech prompts are the raw ones inside the chat template."""
    asked, score_text, score_speech = [], tiny_harness.score_text_items, tiny_harness.score_speech_items

    def text_recorded(model, tokenizer, items, prompts, *rest):
        asked.extend(prompts)
        return score_text(model, tokenizer, items, prompts, *rest)

    def speech_recorded(model, processor, items, clips, prompt, *rest):
        asked.append(prompt)
        return score_speech(model, processor, items, clips, prompt, *rest)

    monkeypatch.setattr(tiny_harness, "score_text_items", text_recorded)
    monkeypatch.setattr(tiny_harness, "score_speech_items", speech_recorded)
    args = tiny_harness.EvalArguments(
        limit=12, output_dir=str(tmp_path), bootstrap_samples=50, chat=True, distribution_metrics=False
    )
    tiny_harness.run(args)
    assert len(asked) == 12 * 4 + 1  # base_text, salad_text, cascade and prior per item; one speech prompt
    assert all(p.startswith("<|im_start|>user\nQuestion:") and p.endswith("<|im_start|>assistant\nAnswer:")
               for p in asked)  # fmt: skip
    assert "<|im_start|>user\nQuestion: <|audio|><|im_end|>\n<|im_start|>assistant\nAnswer:" in asked


def test_chat_prompt_moves_the_answer_cue_into_the_reply():
    tokenizer = make_tokenizer()
    shots = "Question: one plus one\nAnswer: two\n\n"
    assert chat_prompt(text_prompt("two plus two", shots), tokenizer) == (
        "<|im_start|>user\nQuestion: one plus one\nAnswer: two\n\nQuestion: two plus two<|im_end|>\n"
        "<|im_start|>assistant\nAnswer:"
    )
    with pytest.raises(ValueError, match="must end with 'Answer:'"):
        chat_prompt("Question: two plus two", tokenizer)


class BosWritingTokenizer:
    """A tokenizer that adds a BOS when it tokenizes, and whose chat template writes one too (as Llama 3's)."""

    bos_token, bos_token_id = "<s>", 1

    def __call__(self, text: str) -> dict:
        return {"input_ids": [self.bos_token_id] + [ord(c) for c in text]}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return f"<s>[user] {messages[0]['content']} [assistant] "


def test_chat_prompt_leaves_the_bos_to_the_tokenizer_that_adds_it():
    assert (
        chat_prompt("Question: q\nAnswer:", BosWritingTokenizer()) == "[user] Question: q [assistant] Answer:"
    )


def test_offline_task_set_is_large_and_broad():
    from eval.tasks import load_offline_tasks

    items = load_offline_tasks()
    assert len(items) >= 300 and len({item.domain for item in items}) >= 8
    assert len(load_offline_tasks("fewshot")) >= 8


@pytest.mark.parametrize(
    "path", sorted(REPO.glob("configs/**/eval*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_shipped_eval_configs_parse(path):
    from trl import TrlParser

    (args,) = TrlParser((EvalArguments,)).parse_args_and_config(args=["--config", str(path)])
    assert args.tasks and set(args.systems) <= set(SYSTEMS)


@pytest.mark.assets
@pytest.mark.parametrize(
    "asr_model, path",
    [
        ("embedded:whisper-tiny.en", whisper_tiny_en_path),
        # Multilingual: without the forced language it can write an English clip in another language.
        pytest.param("embedded:whisper-base", whisper_base_path, marks=pytest.mark.slow),
    ],
)
def test_cascade_transcribes_real_speech(asr_model, path):
    """The cascade's ASR half on a real Whisper and recorded prompts."""
    import jiwer

    try:
        clips = asterisk_prompts(limit=3)
        path()
    except (FileNotFoundError, ModuleNotFoundError) as error:
        pytest.skip(str(error))
    texts = speech.transcribe(asr_model, [clip.audio for clip in clips], 16000)
    normalize = lambda text: text.lower().replace(".", "").replace(",", "")  # noqa: E731
    assert jiwer.wer([normalize(c.transcript) for c in clips], [normalize(t) for t in texts]) < 0.3


def test_the_default_cascade_of_a_whisper_decoder_model_is_its_own_whisper_read_over_30_s(tiny_harness):
    """With no `asr_model`, a SALAD model that hears through Whisper's decoder gets the cascade of its own parts: its
    Whisper reads each clip over 30 s (`full_windows`, whatever its short read) and up to the decoder's positions,
    as its ASR pipeline does, not the window's slots (the tiny decoder runs past them here), each clip as alone
    though batched; no ASR pipeline is loaded. A given `asr_model`, or a model that does not hear so, gets the
    pipeline."""
    model, processor = decoder_tiny(adapter_decoder_pad_seconds=1.0, adapter_decoder_num_beams=3)
    subject = harness.SaladUnderTest(model, processor.tokenizer, False, 2, processor)
    clips = [tone(0.4, 16000), tone(1.5, 16000, 500, seed=2), tone(0.8, 16000, 300, seed=3)]
    texts = harness.cascade_transcripts(subject, clips, EvalArguments(batch_size=2))
    expected, past_the_slots = [], []
    for clip in clips:
        inputs = processor(audio=clip, sampling_rate=16000)
        windows = model.encode_windows(
            inputs["input_features"], inputs["input_features_mask"], full_windows=True
        )
        transcript = model.adapter.search(
            windows, max_tokens=torch.tensor([model.adapter.decoder_max_tokens])
        )
        past_the_slots.append(int(transcript.counts[0]) > int(windows.token_mask.sum()))
        expected.append(" ".join(model.adapter.transcript_texts(transcript)))
    assert texts == expected and any(expected) and any(past_the_slots) and tiny_harness.transcribed == []
    harness.cascade_transcripts(subject, clips, EvalArguments(asr_model="embedded:whisper-tiny.en"))
    mlp, mlp_processor = build_tiny("whisper")
    harness.cascade_transcripts(
        harness.SaladUnderTest(mlp, None, False, 2, mlp_processor), clips, EvalArguments()
    )
    assert tiny_harness.transcribed == [3, 3]


def test_english_is_forced_only_on_a_multilingual_whisper():
    assert english_generate_kwargs(GenerationConfig(is_multilingual=True)) == {
        "language": "en",
        "task": "transcribe",
    }
    assert english_generate_kwargs(GenerationConfig()) == {}  # tiny.en's config has no such flag


def test_cascade_asks_a_multilingual_whisper_for_english(monkeypatch):
    """The cascade passes the forced language to every call of the ASR pipeline."""
    calls = []

    class RecordingASR:
        model = SimpleNamespace(generation_config=GenerationConfig(is_multilingual=True))

        def __call__(self, inputs, generate_kwargs):
            calls.append(generate_kwargs)
            return {"text": " words "}

    monkeypatch.setattr(speech, "pipeline", lambda task, model: RecordingASR())
    monkeypatch.setattr(speech, "resolve_checkpoint", lambda name: name)
    assert speech.transcribe("a-multilingual-whisper", [tone(0.2), tone(0.3)], 16000) == ["words", "words"]
    assert calls == [{"language": "en", "task": "transcribe"}] * 2


def test_misalignment_alone_skips_forgetting(whisper_salad):
    model, processor = whisper_salad
    rows = [{"text": "the quick brown fox", "audio": {"array": tone(0.7), "sampling_rate": 16000}}]
    both = forgetting_and_misalignment(model, processor, rows)
    alone = forgetting_and_misalignment(model, processor, rows, with_forgetting=False)
    assert alone["misalignment"] == pytest.approx(both["misalignment"])
    assert math.isnan(alone["forgetting"])


def test_a_limited_offline_set_spans_the_domains():
    items = load_task("offline", 16)
    assert len(items) == 16 and len({item.domain for item in items}) == 8
    order = [item.id for item in load_task("offline")]
    assert [order.index(item.id) for item in items] == sorted(order.index(item.id) for item in items)


def test_own_task_file_with_recordings_runs_end_to_end_under_its_stem(whisper_salad, tmp_path, monkeypatch):
    """`salad-eval --tasks /nested/dir/quiz.jsonl` on recorded items: named `quiz` everywhere, plots written,
    the recordings heard (not TTS), and a valid model card from its results.json."""
    import soundfile
    from huggingface_hub import ModelCard

    from hub_scripts.model_card import build_model_card

    model, processor = whisper_salad
    monkeypatch.setattr(harness, "load_salad", lambda name, dtype: (model, processor))
    folder = tmp_path / "my data" / "nested"
    (folder / "clips").mkdir(parents=True)
    items = []
    for index in range(6):
        soundfile.write(folder / "clips" / f"q{index}.wav", tone(0.4 + 0.05 * index, seed=index), 16000)
        items.append({"id": f"q{index}", "domain": ["maths", "geo/graphy"][index % 2],
                      "question": f"question number {index}?", "options": ["yes", "no", "maybe"],
                      "answer": index % 3, "audio_path": f"clips/q{index}.wav"})  # fmt: skip
    task_file = folder / "quiz.jsonl"
    task_file.write_text("".join(json.dumps(item) + "\n" for item in items))
    heard = []
    original = speech.load_audio
    monkeypatch.setattr(
        speech, "load_audio", lambda path, *a, **k: heard.append(path) or original(path, *a, **k)
    )
    out = tmp_path / "results"
    eval_cli.main(["--model", "tiny", "--tasks", str(task_file), "--systems", "base_text", "salad_speech", "prior",
                     "--output_dir", str(out), "--bootstrap_samples", "50", "--distribution_metrics", "false"])  # fmt: skip
    assert sorted(Path(path).name for path in heard) == [f"q{i}.wav" for i in range(6)]
    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]) == ["quiz"] and results["task_sources"] == {"quiz": str(task_file)}
    assert results["config"]["tasks"] == [str(task_file)]
    assert (out / "accuracy_per_task.png").exists() and (out / "gap_per_domain_quiz.png").exists()
    assert "| quiz |" in (out / "results.md").read_text()
    card = build_model_card("me/salad-quiz", model.config, results=results)
    card.save(tmp_path / "README.md")
    assert {r.dataset_name for r in ModelCard.load(tmp_path / "README.md").data.eval_results} == {"quiz"}


def test_task_names_are_short_safe_and_unique(tmp_path):
    from eval.harness import task_sources
    from eval.tasks import parse_task_spec, safe_name

    assert parse_task_spec("/a/b/quiz.jsonl") == ("quiz", "/a/b/quiz.jsonl")
    assert parse_task_spec("mine=/a/b/items.jsonl") == ("mine", "/a/b/items.jsonl")
    assert parse_task_spec("offline") == ("offline", "offline")
    assert safe_name("../geo/graphy here") == "geo_graphy_here"
    with pytest.raises(ValueError, match="name them with `name=path`"):
        task_sources(["/a/quiz.jsonl", "/b/quiz.jsonl"])
    with pytest.raises(ValueError, match="both parts"):
        parse_task_spec("=/a/quiz.jsonl")


@pytest.mark.parametrize("limit", [0, -2])
def test_a_limit_below_one_is_refused(limit):
    with pytest.raises(ValueError, match="--limit must be a positive"):
        EvalArguments(limit=limit)


def test_bad_tasks_fail_before_the_model_loads(tmp_path, monkeypatch):
    """An empty task file, or an unknown task after a valid one, is an error before any compute is spent."""

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the tasks were checked")

    monkeypatch.setattr(harness, "load_salad", must_not_load)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="has no items"):
        harness.run(EvalArguments(tasks=[str(tmp_path / "empty.jsonl")], output_dir=str(tmp_path / "out")))
    with pytest.raises(ValueError, match="Unknown task 'nope'"):
        harness.run(EvalArguments(tasks=["offline", "nope"], output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out" / "results.json").exists()


def test_model_names_that_are_no_salad_checkpoint_get_clear_errors(tmp_path, component_checkpoints):
    from trainers.assets import load_salad

    with pytest.raises(FileNotFoundError, match="No checkpoint at ./no/such/folder"):
        load_salad("./no/such/folder")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1"):  # tests run offline
        load_salad("runs/missing-run")
    with pytest.raises(ValueError, match="is not a SALAD checkpoint \\(a 'llama' checkpoint\\).*salad-build"):
        load_salad(str(component_checkpoints / "llm"))
