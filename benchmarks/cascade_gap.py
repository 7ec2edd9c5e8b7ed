"""Where the shipped model loses to the cascade of its own parts (issue 33): what the LLM reads from a clip, next to
what the cascade gives it.

    python benchmarks/cascade_gap.py diagnose        # writes benchmarks/results/cascade_gap/diagnostic.{json,md}
    python benchmarks/cascade_gap.py ablate --voice en-us   # writes benchmarks/results/cascade_gap/ablation-en-us.json
    python benchmarks/cascade_gap.py ablate --voice en-us --model runs/x/checkpoint-500 --label x-500 \
        --no_ablations                                       # a candidate against the cascade: ablation-en-us-x-500.json
    python benchmarks/cascade_gap.py ablate --voice en-us --model runs/x/checkpoint-500 --label x-500-parts \
        --ablations residual_off lora_off                    # which trained part costs what
    python benchmarks/cascade_gap.py ablate --voice slt --decoder_pad_seconds 8 --label pad8 --no_ablations
                                                             # a decoding lever (issue 34): ablation-slt-pad8.json
    python benchmarks/cascade_gap.py nbest --voice en-us   # SmolLM2 reads all of Whisper's beams: nbest-en-us.json
    python benchmarks/cascade_gap.py curves --run runs/x --label x   # its training curves: curves-x.{json,png}
    python benchmarks/cascade_gap.py room --voice en-us --results ablation-en-us-shipped.json \
        --text_results text-x.json       # where text and cascade part: room-en-us.json
    python benchmarks/cascade_gap.py seeds --results ablation-en-us-x-s{0,1,2}-500.json \
        --baseline ablation-en-us-shipped.json --label x-500    # a recipe's seeds together: seeds-en-us-x-500.json

The `whisper_decoder` adapter hands the LLM one embedding per LLM token of Whisper's greedy transcript, as the LLM's
tokenizer writes the transcript's text, plus a trained residual. Until issue 33 it handed over one embedding per
Whisper token instead: the mixture of the LLM's embeddings of the first LLM piece of each of the token's 8 most
likely Whisper tokens (results of that interface: `ablation-first-pieces-*.json`, and the `first_pieces` columns).
For every clip `diagnose` compares, token by token:

- `cascade`: the LLM tokenizer's ids of Whisper's transcript (what the cascade's LLM reads);
- `first_pieces`: the first LLM piece of each of Whisper's tokens (what the earlier interface was centred on);
- `all_pieces`: every LLM piece of each Whisper token, token by token (a piece table, without the BPE merges
  across Whisper's token boundaries);
- `adapter`: what the shipped adapter hands the LLM (the lossless interface: the cascade's ids, by construction);
- `asr_pipeline`: the transcript of the cascade's own ASR (transformers' pipeline on the clip), which the model's
  must equal for the model to read what the cascade reads (it did not, until the processor kept a clip's fading
  last frames and the decoder searched with the pipeline's 5 beams).

It reports how often each differs from the cascade's ids (token error rate, and the share of clips read exactly),
which Whisper tokens the LLM splits, and what the LLM read in place of the cascade's text through the first pieces.
Clips: the built-in task set spoken by both held-out voices (espeak-ng `en-us`, flite `slt`) and the held-out
recorded Asterisk prompts (real human speech), the sets of the README's tables.

`ablate` answers the built-in set spoken by one held-out voice with the shipped model and with its trained parts
switched off one at a time (the residual; the LoRA, i.e. SmolLM2's own weights) and together (the untrained model:
the cascade of its own decoder), next to the cascade, all on the same items in one run, with the paired difference
of each against the cascade.

`nbest` asks whether the room to beat the cascade lies in what Whisper's search throws away: SmolLM2 reads each of
the hypotheses the 5-beam search finishes with, and each option's probability is averaged over them, weighted by
Whisper's probability of each.

`seeds` puts the `ablate` results of one recipe's seeds together (each holds its per-item answers): each seed's
difference from the cascade, and the paired difference of their per-item mean, against the cascade and against the
model they started from.

`room` asks where the points between the text LLM and the cascade lie: it splits the items by whether Whisper
(read over 30 s, the cascade's text: `results/whisper_padding-VOICE.json`) heard their words exactly, and counts in
each group the items the text LLM gets right and the cascade wrong, and the other way round, next to the accuracy of
the models of `--results` (`ablate` results, whose cascade column it takes too) and the text LLM's (`--text_results`:
a `salad-eval` results file with the `base_text` system). It lists the items the cascade loses.

`curves` gathers a training run's logged loss and its probes (`probes.jsonl`: the held-out TTS rows; and
`answer_probes.jsonl`: the held-out spoken questions) from its newest checkpoint's `trainer_state.json`, and plots
them: the leading indicators of whether training moves the model away from the cascade it starts as.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from decoder_settings import add_decoder_arguments, decoder_overrides
from transformers import AutoModelForCausalLM, AutoTokenizer

from eval.gap import accuracy_summary, paired_difference
from eval.harness import EvalArguments, SaladUnderTest, TextReader, evaluate_task
from eval.scoring import few_shot_block
from eval.speech import HELD_OUT_VOICES, synthesize_items, transcribe
from eval.tasks import load_offline_tasks
from trainers.assets import load_salad, resolve_checkpoint
from trainers.assets.asterisk import asterisk_prompts
from trainers.distillation.probes import normalize_words, word_error_rate
from trainers.distillation.transcript_cache import frozen_fingerprint

RESULTS = Path(__file__).resolve().parent / "results" / "cascade_gap"


def held_out_asterisk(eval_fraction: float = 0.1, seed: int = 0) -> list:
    """The recorded prompts `salad-prepare-data` holds out for evaluation (its seeded split of the same list)."""
    clips = asterisk_prompts()
    random.Random(seed).shuffle(clips)
    return clips[: round(len(clips) * eval_fraction)]


def clip_sets(limit: int | None) -> dict[str, tuple[list[str], list]]:
    """Each set's reference texts and clips (16 kHz)."""
    items = load_offline_tasks()[:limit]
    sets = {}
    for name, (backend, voice) in HELD_OUT_VOICES.items():
        sets[f"built-in, {name}"] = (
            [item.spoken_text for item in items],
            synthesize_items(items, 16000, backend=backend, voice=voice),
        )
    human = held_out_asterisk()[:limit]
    sets["recorded human prompts"] = ([clip.transcript for clip in human], [clip.audio for clip in human])
    return sets


def edit_distance(a: list[int], b: list[int]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def read_clips(model, processor, clips: list, batch_size: int = 8) -> list[list[int]]:
    """Whisper's top-1 tokens of each clip, as the adapter reads them (its windows concatenated)."""
    transcripts = []
    for start in range(0, len(clips), batch_size):
        batch = clips[start : start + batch_size]
        prepared = processor.prepare_audio(batch)
        inputs = prepared.inputs
        windows = model.encode_windows(
            torch.from_numpy(inputs["input_features"]), torch.from_numpy(inputs["input_features_mask"])
        )
        transcript = model.adapter.transcribe(windows)
        per_window = [
            transcript.ids[row, : int(count)].tolist() for row, count in enumerate(transcript.counts)
        ]
        lengths = prepared.windows_per_clip
        for offset in range(len(batch)):
            first = sum(lengths[:offset])
            transcripts.append(
                [token for window in per_window[first : first + lengths[offset]] for token in window]
            )
    return transcripts


def diagnose(limit: int | None) -> dict:
    model, processor = load_salad("embedded:salad", torch.float32)
    llm_tokenizer = processor.tokenizer
    whisper_tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint("embedded:whisper-tiny.en"))
    llm_bpe = llm_tokenizer.backend_tokenizer.model
    results = {"model": "embedded:salad", "sets": {}}
    for name, (references, clips) in clip_sets(limit).items():
        rows, split_tokens = [], Counter()
        asr = transcribe("embedded:whisper-tiny.en", clips, 16000)
        for reference, whisper_ids, asr_text in zip(references, read_clips(model, processor, clips), asr):
            text = whisper_tokenizer.decode(whisper_ids)
            cascade = llm_tokenizer(text, add_special_tokens=False)["input_ids"]
            pieces = [whisper_tokenizer.convert_ids_to_tokens(token) for token in whisper_ids]
            split = [[piece.id for piece in llm_bpe.tokenize(token)] for token in pieces]
            first = [token_pieces[0] for token_pieces in split if token_pieces]
            all_pieces = [piece for token_pieces in split for piece in token_pieces]
            adapter = model.adapter.tokenizers.read(whisper_ids, opens_with_space=True)[0]
            split_tokens.update(token for token in pieces if len(llm_bpe.tokenize(token)) > 1)
            rows.append({
                "reference": reference,
                "whisper": text.strip(),
                "asr_pipeline": asr_text,
                "llm_reads": llm_tokenizer.decode(first).strip(),
                "whisper_tokens": len(whisper_ids),
                "split_tokens": sum(len(llm_bpe.tokenize(token)) > 1 for token in pieces),
                "first_pieces_errors": edit_distance(first, cascade),
                "all_pieces_errors": edit_distance(all_pieces, cascade),
                "adapter_errors": edit_distance(adapter, cascade),
                "cascade_tokens": len(cascade),
            })  # fmt: skip
        cascade_tokens = sum(row["cascade_tokens"] for row in rows)
        results["sets"][name] = {
            "clips": len(rows),
            "whisper_wer": word_error_rate([row["reference"] for row in rows], [row["whisper"] for row in rows]),
            "same_transcript_as_asr_pipeline": sum(row["whisper"] == row["asr_pipeline"] for row in rows) / len(rows),
            "whisper_tokens": sum(row["whisper_tokens"] for row in rows),
            "split_token_share": sum(row["split_tokens"] for row in rows) / max(sum(r["whisper_tokens"] for r in rows), 1),
            "first_pieces_token_error_rate": sum(row["first_pieces_errors"] for row in rows) / cascade_tokens,
            "all_pieces_token_error_rate": sum(row["all_pieces_errors"] for row in rows) / cascade_tokens,
            "clips_read_exactly": sum(row["first_pieces_errors"] == 0 for row in rows) / len(rows),
            "adapter_token_error_rate": sum(row["adapter_errors"] for row in rows) / cascade_tokens,
            "adapter_clips_read_exactly": sum(row["adapter_errors"] == 0 for row in rows) / len(rows),
            "most_split_tokens": split_tokens.most_common(15),
            "rows": rows,
        }  # fmt: skip
    return results


def residual_off(model, reference) -> bool:
    """Zero the residual; False where it already is (an untrained model)."""
    weight = model.adapter.down_proj.weight
    trained = bool(weight.any())
    weight.data.zero_()
    return trained


def lora_off(model, reference) -> bool:
    """SmolLM2's own weights back in the LLM in place of the merged LoRA (the audio token's row, which SmolLM2
    lacks, is kept); False where the LLM already holds them (no LoRA was trained)."""
    ours, changed = model.language_model.state_dict(), False
    for key, value in reference.state_dict().items():
        changed |= not torch.equal(ours[key][: value.shape[0]], value)
        ours[key][: value.shape[0]] = value
    return changed


def residual_and_lora_off(model, reference) -> bool:
    return residual_off(model, reference) | lora_off(model, reference)


ABLATIONS = {
    "residual off": residual_off,
    "LoRA off": lora_off,
    "residual and LoRA off (the untrained model)": residual_and_lora_off,
}
#: `--ablations` names of the `ABLATIONS`.
ABLATION_NAMES = dict(zip(("residual_off", "lora_off", "both_off"), ABLATIONS))


def ablate(
    voice: str,
    limit: int | None,
    dtype: str,
    model_name: str = "embedded:salad",
    ablations: list[str] | None = None,
    overrides: dict | None = None,
    transcript_cache_dir: str | None = None,
    cascade_from: dict | None = None,
) -> dict:
    """The spoken accuracy of `model_name` (the shipped model by default; loaded with the config `overrides`) with
    each of `ablations` (labels of `ABLATIONS`; None: all of them), and the cascade's, on the same items.

    `transcript_cache_dir` keeps the model's Whisper transcripts across runs (`EvalArguments`). `cascade_from`, an
    earlier `ablate` result on the same voice and items, by a model with the same frozen Whisper and search, gives
    the cascade's answers instead of computing them again: they depend on that Whisper and SmolLM2 alone."""
    start = time.perf_counter()
    overrides = overrides or {}
    items = load_offline_tasks()[:limit]
    backend, name = HELD_OUT_VOICES[voice]
    model, processor = load_salad(model_name, getattr(torch, dtype), **overrides)
    # the frozen Whisper's fingerprint, for a model that reads through Whisper's decoder (its cascade is that Whisper)
    fingerprint = frozen_fingerprint(model) if model.adapter.writes_text else None
    if cascade_from is not None:
        check_cascade_source(cascade_from, voice, len(items), fingerprint, dtype)
    args = EvalArguments(tts_backend=backend, tts_voice=name, distribution_metrics=False, dtype=dtype,
                         systems=["salad_speech"] if cascade_from else ["cascade", "salad_speech"],
                         transcript_cache_dir=transcript_cache_dir)  # fmt: skip
    # the cascade's reader is SmolLM2 itself (as `configs/paper-cpu/eval.yaml` sets `base_model`), not the shipped
    # model's LLM, which holds merged LoRA
    reference = AutoModelForCausalLM.from_pretrained(
        resolve_checkpoint("embedded:smollm2-135m-instruct"), dtype=getattr(torch, dtype)
    ).eval()
    reader = TextReader.for_run(reference, processor.tokenizer, args)
    base = evaluate_task(voice, items, SaladUnderTest.for_run(model, processor, args), reader, args)
    correct = {
        "cascade": read_correct(cascade_from, "cascade").astype(bool).tolist()
        if cascade_from
        else _correct(base, "cascade", items),
        "shipped": _correct(base, "salad_speech", items),
    }
    speech_only = replace(args, systems=["salad_speech"])
    unchanged = []  # ablations that would switch off what the shipped model does not have: the shipped row
    for label in list(ABLATIONS) if ablations is None else ablations:
        change = ABLATIONS[label]
        variant, _ = load_salad(model_name, getattr(torch, dtype), **overrides)
        if not change(variant, reference):
            unchanged.append(label)
            continue
        report = evaluate_task(
            voice, items, SaladUnderTest.for_run(variant, processor, args), reader, speech_only
        )
        correct[label] = _correct(report, "salad_speech", items)
    return {
        "model": model_name, "decoder_settings": overrides, "voice": voice, "items": len(items), "dtype": dtype,
        "whisper_fingerprint": fingerprint, "cascade_from": cascade_from and cascade_from["path"],
        "same_as_shipped": unchanged,
        "accuracy": {label: accuracy_summary(values) for label, values in correct.items()},
        "minus_cascade": {label: paired_difference(values, correct["cascade"])
                          for label, values in correct.items() if label != "cascade"},
        "cascade_wer": cascade_from["cascade_wer"] if cascade_from else base["cascade_wer"],
        "correct_by_item": {label: "".join("1" if value else "0" for value in values)
                            for label, values in correct.items()},
        "wall_seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def read_correct(results: dict, label: str) -> np.ndarray:
    """`[items]` 1.0 where `label` (`cascade`, `shipped` or an ablation) answered the item right, from an `ablate`
    result (`correct_by_item`: one character per item of the built-in set, in its order)."""
    if "correct_by_item" not in results:
        raise ValueError(
            f"{results.get('model')} on {results.get('voice')}: this result predates per-item results; run "
            "`cascade_gap.py ablate` on it again."
        )
    return np.array([float(flag) for flag in results["correct_by_item"][label]])


def check_cascade_source(source: dict, voice: str, items: int, fingerprint: str | None, dtype: str) -> None:
    """A `ValueError` unless `source`, an `ablate` result, holds the cascade's per-item answers for this run: the
    same voice, items and dtype, and the same frozen Whisper and search (whose fingerprint it records)."""
    if fingerprint is None:
        raise ValueError(
            "--cascade_from reuses the cascade of a model that reads through Whisper's decoder; this model's "
            "adapter writes no transcript: leave --cascade_from out."
        )
    found = tuple(source.get(key) for key in ("voice", "items", "whisper_fingerprint", "dtype"))
    if found != (voice, items, fingerprint, dtype):
        raise ValueError(
            f"--cascade_from holds the cascade of voice {found[0]!r} on {found[1]} items with Whisper {found[2]} in "
            f"{found[3]}; this run needs voice {voice!r}, {items} items and Whisper {fingerprint} in {dtype} (a "
            "result written before `whisper_fingerprint` was recorded has None). Give an `ablate` result of this "
            "run's setting, or leave --cascade_from out to compute the cascade."
        )
    read_correct(source, "cascade")


def shared_cascade(runs: list[dict]) -> np.ndarray:
    """The cascade's per-item answers that `ablate` results share, or a `ValueError` where they differ."""
    cascade = read_correct(runs[0], "cascade")
    if any((read_correct(run, "cascade") != cascade).any() for run in runs):
        raise ValueError("The runs' cascades differ: they were not measured on the same clips and harness.")
    return cascade


def over_seeds(runs: list[dict], baseline: dict | None = None) -> dict:
    """Seeds of one recipe on one voice (`ablate` results of each seed's checkpoint), against the cascade and, where
    given, against `baseline` (the model they started from): each seed's paired difference, their spread, and the
    paired difference of the mean over seeds per item, whose interval counts the items' draw once (the seeds'
    training noise averaged out rather than mistaken for items')."""
    voices = {run["voice"] for run in runs} | ({baseline["voice"]} if baseline else set())
    if len(voices) != 1 or len({run["items"] for run in runs}) != 1:
        raise ValueError(f"Seeds must share a voice and items; got voices {sorted(voices)}.")
    cascade = shared_cascade(runs)
    per_seed = np.stack([read_correct(run, "shipped") for run in runs])
    differences = [float(seed.mean() - cascade.mean()) for seed in per_seed]
    results = {
        "voice": voices.pop(),
        "models": [run["model"] for run in runs],
        "accuracy_per_seed": [float(seed.mean()) for seed in per_seed],
        "minus_cascade_per_seed": differences,
        "minus_cascade_spread": [min(differences), max(differences)],
        "mean_over_seeds": accuracy_summary(per_seed.mean(0)),
        "mean_over_seeds_minus_cascade": paired_difference(per_seed.mean(0), cascade),
    }
    if baseline is not None:
        results["baseline"] = baseline["model"]
        results["mean_over_seeds_minus_baseline"] = paired_difference(
            per_seed.mean(0), read_correct(baseline, "shipped")
        )
    return results


def heard_exactly(items, transcripts: list[str]) -> list[bool]:
    """Per item, whether Whisper's transcript has the spoken words exactly (`normalize_words`: case and punctuation
    aside, as the WER counts them; a numeral for a spelled-out number counts as misheard)."""
    if len(transcripts) != len(items):
        raise ValueError(f"{len(transcripts)} transcripts for {len(items)} items: not the same set.")
    return [
        normalize_words(item.spoken_text) == normalize_words(text) for item, text in zip(items, transcripts)
    ]


def room(
    items, transcripts: list[str], text: list[bool], cascade: list[bool], models: dict[str, list[bool]]
) -> dict:
    """Where the points between the text LLM and the cascade lie: the items split by whether Whisper heard their
    words exactly (`heard_exactly`), and in each group how often the text LLM is right where the cascade is wrong
    and the other way round (the cascade's net loss is the first count less the second), next to the accuracy of
    each of `models` (label: per-item right or wrong). Lists the items the cascade loses, with what Whisper wrote."""
    heard = heard_exactly(items, transcripts)
    groups = {"heard exactly": [k for k, h in enumerate(heard) if h],
              "misheard": [k for k, h in enumerate(heard) if not h]}  # fmt: skip
    systems = {"text": text, "cascade": cascade, **models}
    return {
        "groups": {
            name: {
                "items": len(rows),
                "text_right_cascade_wrong": sum(text[k] and not cascade[k] for k in rows),
                "cascade_right_text_wrong": sum(cascade[k] and not text[k] for k in rows),
                "accuracy": {label: float(np.mean([values[k] for k in rows])) for label, values in systems.items()},
            }
            for name, rows in groups.items()
            if rows
        },
        "lost_by_the_cascade": [
            {"id": items[k].id, "spoken": items[k].spoken_text, "whisper": transcripts[k], "heard_exactly": heard[k],
             **{label: bool(values[k]) for label, values in models.items()}}
            for k in range(len(items))
            if text[k] and not cascade[k]
        ],
    }  # fmt: skip


def nbest_hypotheses(model, processor, clips: list) -> list[list[tuple[float, str]]]:
    """Each clip's finished beam hypotheses as (summed log-probability, text), best first: the search the adapter
    runs, all of whose hypotheses a cascade throws away but the first."""
    adapter, hypotheses = model.adapter, []
    speech = adapter.require_tokenizers().speech
    for clip in clips:
        prepared = processor.prepare_audio([clip])
        if prepared.windows_per_clip != [1]:
            raise ValueError(
                "nbest reads clips of one window (the built-in set's are all shorter than 30 s)."
            )
        inputs = prepared.inputs
        windows = model.encode_windows(
            torch.from_numpy(inputs["input_features"]), torch.from_numpy(inputs["input_features_mask"])
        )
        states = windows.encoder_states
        if windows.encoder_lengths is not None:
            states = states[:, : int(windows.encoder_lengths[0])]
        finished = adapter.beam_hypotheses(states, adapter.max_tokens(windows))[0]
        hypotheses.append(
            [(score * len(tokens), speech.decode(tokens, skip_special_tokens=True).strip())
             for score, tokens, _ in finished]
        )  # fmt: skip
    return hypotheses


def option_posteriors(scores) -> np.ndarray:
    """The options' probabilities given one reading: a softmax of their length-normalized scores, the scores the
    harness picks the option by (so the argmax is the harness's choice)."""
    return torch.tensor(scores.logprob_norm, dtype=torch.float64).softmax(-1).numpy()


def nbest(voice: str, limit: int | None, dtype: str, temperature: float) -> dict:
    """The cascade that reads all of Whisper's beam hypotheses: each option's probability is its mean over the
    hypotheses, weighted by each hypothesis's probability under Whisper (its summed log-probability, divided by
    `temperature`, softmaxed over the clip's hypotheses). The top hypothesis alone is the cascade."""
    items = load_offline_tasks()[:limit]
    backend, name = HELD_OUT_VOICES[voice]
    args = EvalArguments(tts_backend=backend, tts_voice=name, dtype=dtype)
    model, processor = load_salad("embedded:salad", getattr(torch, dtype))
    reference = AutoModelForCausalLM.from_pretrained(
        resolve_checkpoint("embedded:smollm2-135m-instruct"), dtype=getattr(torch, dtype)
    ).eval()
    reader = TextReader.for_run(reference, processor.tokenizer, args)
    clips = synthesize_items(items, processor.sampling_rate, backend=backend, voice=name)
    hypotheses = nbest_hypotheses(model, processor, clips)
    pairs = [(index, text) for index, clip_hypotheses in enumerate(hypotheses) for _, text in clip_hypotheses]
    shots = few_shot_block(load_offline_tasks("fewshot")[: args.num_fewshot] if args.num_fewshot else [])
    scores = reader.score_text_items([items[index] for index, _ in pairs], [text for _, text in pairs], shots)
    posteriors = iter(option_posteriors(score) for score in scores)
    correct = {"cascade": [], "N-best": [], "N-best, uniform weights": []}
    agree, rows = 0, []
    for item, clip_hypotheses in zip(items, hypotheses):
        per_hypothesis = np.stack([next(posteriors) for _ in clip_hypotheses])
        logprobs = torch.tensor([logprob for logprob, _ in clip_hypotheses], dtype=torch.float64)
        weights = (logprobs / temperature).softmax(-1).numpy()
        mixed = {"cascade": per_hypothesis[0], "N-best": weights @ per_hypothesis,
                 "N-best, uniform weights": per_hypothesis.mean(0)}  # fmt: skip
        for label, probabilities in mixed.items():
            correct[label].append(int(np.argmax(probabilities)) == item.answer)
        agree += len({text for _, text in clip_hypotheses}) == 1
        rows.append({"id": item.id, "answer": item.answer, "hypotheses": [text for _, text in clip_hypotheses],
                     "weights": weights.round(4).tolist(),
                     **{label: int(np.argmax(p)) for label, p in mixed.items()}})  # fmt: skip
    return {
        "voice": voice, "items": len(items), "dtype": dtype, "temperature": temperature,
        "hypotheses_per_clip": float(np.mean([len(h) for h in hypotheses])),
        "clips_whose_hypotheses_all_read_alike": agree,
        "accuracy": {label: accuracy_summary(values) for label, values in correct.items()},
        "minus_cascade": {label: paired_difference(values, correct["cascade"])
                          for label, values in correct.items() if label != "cascade"},
        "rows": rows,
    }  # fmt: skip


def _correct(report: dict, system: str, items) -> list[bool]:
    return [row[system] == item.answer for row, item in zip(report["items"], items)]


def markdown(results: dict) -> str:
    lines = [
        "# What the LLM reads from a clip, next to the cascade (issue 33)",
        "",
        "`python benchmarks/cascade_gap.py diagnose`; token error rates are edit distances to the LLM tokenizer's ids "
        "of Whisper's transcript, over those ids.",
        "",
        "| set | clips | Whisper WER | transcript as the ASR pipeline's | Whisper tokens split by the LLM | "
        "first pieces: token error rate | clips read exactly | all pieces: token error rate | adapter: token error "
        "rate | clips read exactly |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, value in results["sets"].items():
        lines.append(
            f"| {name} | {value['clips']} | {100 * value['whisper_wer']:.1f}% | "
            f"{100 * value['same_transcript_as_asr_pipeline']:.0f}% | {100 * value['split_token_share']:.1f}% | "
            f"{100 * value['first_pieces_token_error_rate']:.1f}% | {100 * value['clips_read_exactly']:.0f}% | "
            f"{100 * value['all_pieces_token_error_rate']:.1f}% | {100 * value['adapter_token_error_rate']:.1f}% | "
            f"{100 * value['adapter_clips_read_exactly']:.0f}% |"
        )
    for name, value in results["sets"].items():
        lines += ["", f"## {name}", "", "Most often split: " + ", ".join(
            f"`{token}` ({count})" for token, count in value["most_split_tokens"]), "",
            "| Whisper's transcript (the cascade reads it) | what the LLM reads (first pieces) |", "|---|---|"]  # fmt: skip
        changed = [row for row in value["rows"] if row["first_pieces_errors"]][:8]
        lines += [f"| {row['whisper']} | {row['llm_reads']} |" for row in changed]
    return "\n".join(lines) + "\n"


CURVE_PROBES = {
    "probes.jsonl": ("held-out TTS rows", ("transcript_nll", "content_gain_nll", "transcript_accuracy")),
    "answer_probes.jsonl": (
        "held-out spoken questions",
        ("transcript_nll", "content_gain_nll", "transcript_accuracy"),
    ),
}


def curves(run: Path) -> dict:
    """The run's logged training metrics (from its newest checkpoint) and its probes, step by step."""
    checkpoints = sorted(run.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    if not checkpoints:
        raise FileNotFoundError(f"{run} holds no checkpoint-N folder with a trainer_state.json.")
    history = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"]
    logged = [
        {key: row[key] for key in ("step", "loss", "nll", "transcript_cache_hit_rate") if key in row}
        for row in history
        if "loss" in row
    ]
    probes = {}
    for name, (label, keys) in CURVE_PROBES.items():
        path = run / name
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            probes[label] = [{"step": row["step"], **{key: row[key] for key in keys}} for row in rows]
    return {"run": str(run), "training": logged, "probes": probes}


def plot_curves(results: dict, path: Path) -> None:
    import matplotlib  # lazily: the optional `eval` extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("training: forward KL to the text teacher", "loss", [("", results["training"])])]
    for metric in ("transcript_nll", "transcript_accuracy"):
        panels.append((f"probes: {metric}", metric, list(results["probes"].items())))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for axis, (title, key, series) in zip(axes, panels):
        for label, rows in series:
            axis.plot([row["step"] for row in rows], [row[key] for row in rows], marker="." if label else None,
                      label=label or None)  # fmt: skip
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("step")
        if any(label for label, _ in series):
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def selected_ablations(args: argparse.Namespace) -> list[str] | None:
    """The labels of the ablations `ablate` runs: none (`--no_ablations`), those named, or all (None)."""
    if args.no_ablations:
        return []
    return None if args.ablations is None else [ABLATION_NAMES[name] for name in args.ablations]


def read_result(name: str) -> dict:
    """A results file (`ablate`'s, or `salad-eval`'s) by its file name in `RESULTS`, or by its path."""
    path = Path(name) if Path(name).exists() else RESULTS / name
    return json.loads(path.read_text())


def write_results(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"Wrote {path}")


def interval(difference: dict) -> str:
    low, high = difference["ci95"]
    return f"{100 * difference['value']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def room_of_results(voice: str, runs: list[dict], text_results: dict) -> dict:
    """`room` from saved results: the cascade's and the models' per-item answers from `ablate` results on `voice`
    (each model and each of its ablations), the text LLM's from a salad-eval results file, Whisper's 30 s
    transcripts from `whisper_padding.py`'s."""
    if any(run["voice"] != voice for run in runs):
        raise ValueError(f"room --voice {voice}: every --results file must be measured on {voice}.")
    items = load_offline_tasks()
    scored = text_results["tasks"]["offline"]["items"]
    if [row["id"] for row in scored] != [item.id for item in items]:
        raise ValueError("--text_results was not scored on the built-in set in its order.")
    padding = json.loads((RESULTS.parent / f"whisper_padding-{voice}.json").read_text())
    models = {
        run["model"] if label == "shipped" else f"{run['model']}, {label}": [
            bool(v) for v in read_correct(run, label)
        ]
        for run in runs
        for label in run["correct_by_item"]
        if label != "cascade"
    }
    results = room(
        items,
        padding["runs"]["full"]["texts"],
        [row["base_text"] == row["answer"] for row in scored],
        [bool(v) for v in shared_cascade(runs)],
        models,
    )
    return {"voice": voice, **results}


def print_room(results: dict) -> None:
    for name, group in results["groups"].items():
        accuracies = ", ".join(f"{label} {100 * value:.1f}%" for label, value in group["accuracy"].items())
        print(f"{results['voice']}, {name} ({group['items']} items): text right and cascade wrong "
              f"{group['text_right_cascade_wrong']}, the other way {group['cascade_right_text_wrong']}; {accuracies}")  # fmt: skip


def print_seeds(results: dict) -> None:
    per_seed = ", ".join(f"{100 * value:+.1f}" for value in results["minus_cascade_per_seed"])
    print(f"{results['voice']}: minus cascade per seed {per_seed}")
    print(f"mean over seeds {100 * results['mean_over_seeds']['accuracy']:.1f}%, minus cascade "
          f"{interval(results['mean_over_seeds_minus_cascade'])}")  # fmt: skip
    if "mean_over_seeds_minus_baseline" in results:
        print(f"minus {results['baseline']} {interval(results['mean_over_seeds_minus_baseline'])}")


def print_accuracies(results: dict) -> None:
    for label, summary in results["accuracy"].items():
        difference = results["minus_cascade"].get(label)
        against = "" if difference is None else f", minus cascade {interval(difference)}"
        print(f"{label}: {100 * summary['accuracy']:.1f}%{against}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["diagnose", "ablate", "nbest", "curves", "seeds", "room"])
    parser.add_argument("--limit", type=int, default=None, help="Clips per set (default: all).")
    parser.add_argument(
        "--voice", choices=list(HELD_OUT_VOICES), default="en-us", help="ablate: the held-out voice."
    )
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="ablate: model dtype."
    )
    parser.add_argument(
        "--model",
        default="embedded:salad",
        help="ablate: the model against the cascade (a checkpoint folder too).",
    )
    parser.add_argument(
        "--label", default=None, help="ablate: names the results file, ablation-VOICE-LABEL.json."
    )
    parser.add_argument("--no_ablations", action="store_true", help="ablate: only the model and the cascade.")
    parser.add_argument(
        "--transcript_cache_dir", default=None,
        help="ablate: keep the model's Whisper transcripts here; later runs with the same frozen Whisper skip its search.",
    )  # fmt: skip
    parser.add_argument(
        "--cascade_from", default=None,
        help="ablate: an earlier `ablate` result of this voice and Whisper whose cascade answers to reuse.",
    )  # fmt: skip
    parser.add_argument(
        "--ablations", nargs="+", choices=list(ABLATION_NAMES), default=None,
        help="ablate: only these ablations (default: all of them).",
    )  # fmt: skip
    add_decoder_arguments(parser)
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="nbest: divides the hypotheses' log-probabilities."
    )
    parser.add_argument("--run", type=Path, default=None, help="curves: a salad-train output_dir.")
    parser.add_argument(
        "--results", nargs="+", default=None,
        help="seeds: `ablate` results of each seed; room: of the models to split by item (file names in "
        "benchmarks/results/cascade_gap/, or paths).",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", default=None, help="seeds: the `ablate` result of the model the seeds started from."
    )
    parser.add_argument(
        "--text_results", default=None, help="room: a salad-eval results file with the `base_text` system."
    )
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.command == "room":
        if not args.results or not args.text_results:
            parser.error(
                "room needs --results (`ablate` results) and --text_results (a salad-eval results file)."
            )
        results = room_of_results(
            args.voice, [read_result(name) for name in args.results], read_result(args.text_results)
        )
        print_room(results)
        write_results(results, RESULTS / f"room-{args.voice}.json")
        return
    if args.command == "seeds":
        if not args.results or args.label is None:
            parser.error("seeds needs --results (one `ablate` result per seed) and --label (names the file).")
        results = over_seeds(
            [read_result(name) for name in args.results],
            read_result(args.baseline) if args.baseline else None,
        )
        print_seeds(results)
        write_results(results, RESULTS / f"seeds-{results['voice']}-{args.label}.json")
        return
    if args.command == "curves":
        if args.run is None or args.label is None:
            parser.error("curves needs --run (a salad-train output_dir) and --label (names the files).")
        results = curves(args.run)
        write_results(results, RESULTS / f"curves-{args.label}.json")
        plot_curves(results, RESULTS / f"curves-{args.label}.png")
        return
    if args.command == "nbest":
        with torch.no_grad():
            results = nbest(args.voice, args.limit, args.dtype, args.temperature)
        name = f"nbest-{args.voice}.json" if args.limit is None else f"nbest-{args.voice}-{args.limit}.json"
        write_results(results, RESULTS / name)
        print_accuracies(results)
        return
    if args.command == "ablate":
        with torch.no_grad():
            results = ablate(
                args.voice,
                args.limit,
                args.dtype,
                args.model,
                selected_ablations(args),
                decoder_overrides(args),
                args.transcript_cache_dir,
                {**read_result(args.cascade_from), "path": args.cascade_from} if args.cascade_from else None,
            )
        name = f"ablation-{args.voice}-{args.label}.json" if args.label else f"ablation-{args.voice}.json"
        write_results(results, RESULTS / name)
        print_accuracies(results)
        return
    with torch.no_grad():
        results = diagnose(args.limit)
    write_results(results, RESULTS / "diagnostic.json")
    (RESULTS / "diagnostic.md").write_text(markdown(results))
    print(markdown(results).split("\n## ")[0])


if __name__ == "__main__":
    main()
