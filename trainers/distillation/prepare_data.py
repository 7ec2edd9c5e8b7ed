"""Build training rows (the `trainers.distillation.data` schema) from speech and text that are installed on this machine.

    salad-prepare-data --output_dir data/asterisk
    salad-prepare-data --source text_pool --output_dir data/tts --num_sentences 30000
    salad-prepare-data --source chat_repeat --rows data/tts/train.jsonl --output_dir data/chat_repeat/tts

`--source asterisk` writes the Asterisk English prompts (real human speech, one US-English speaker,
CC-BY-SA-3.0, from Debian `asterisk-core-sounds-en-g722` + `asterisk-core-sounds-en`) as 16 kHz WAV files
with `train.jsonl` and `eval.jsonl` (a seeded hold-out split). Rows carry no word timestamps, so the trainer
uses them as whole-utterance speech followed by the configured text continuation.

`--source text_pool` speaks sentences of the offline text pool (`salad-text-pool`) with the
offline TTS voices, one voice per sentence, with the engines' word timestamps (so the trainer can interleave).
Voices named in `--held_out_voices` (by default espeak-ng `en-us` in every variant and flite `slt`, the
evaluation voices) never speak a training row: `eval.jsonl` holds other sentences in those voices only, so
that evaluation measures speech from voices the model was not trained on.

`--source chat_repeat` rewrites rows that already exist (`--rows`, e.g. `data/tts/train.jsonl`) as a request,
inside the LLM's chat template, to repeat the clip: each row keeps its clip and transcript and gets its own
`prompt` (the chat up to the clip) and `continuation` (the rest of the user turn, "Repeat what was said.", then the
transcript as the assistant's reply and its end of turn). The teacher reads the transcript in place of the clip,
so the forward KL on the reply trains the probes' chat "repeat" task (`trainers.distillation.probes.RepeatPrompt(chat=True)`),
and such rows mix with interleaved rows, which a `chat_format` run cannot. A row without a `duration` (the
recorded Asterisk prompts) gets its clip's length, which grouping by length sorts by. All rows go to `train.jsonl`.

`--source definition_questions` turns the pool's WordNet definitions ("A nailbrush is a brush used to clean a
person's fingernails.") into spoken questions with their answers, half each way: "What is a nailbrush?" ->
"A brush used to clean a person's fingernails", and "What do you call a brush used to clean a person's
fingernails?" -> "A nailbrush". Only the question is spoken, in the same voices and split as `text_pool`; each
row carries the frame of the evaluation harness (`eval.scoring`) as its own `prompt` ("Question: ") and
`continuation` ("\nAnswer: <answer>"), so a run that mixes these rows in learns to answer what it hears, not
only to repeat it.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import soundfile
from trl import TrlParser

from modeling_salad import SaladProcessor
from trainers.assets import resolve_checkpoint
from trainers.assets.asterisk import asterisk_prompts

from ..tts import get_backend, synthesize_many
from .data import speech_row, write_rows
from .probes import RepeatPrompt

SOURCES = ("asterisk", "text_pool", "definition_questions", "chat_repeat")

# "A nailbrush is a brush used to ...": the sentences `trainers.selection.text_pool` makes of WordNet's noun definitions.
_DEFINITION = re.compile(r"^(?P<term>An? .+?) is (?P<gloss>(?:a|an|the|any|one) .+)\.$")


@dataclass
class PrepareArguments:
    output_dir: str = field(metadata={"help": "Folder for the audio files and the jsonl splits."})
    source: str = field(default="asterisk", metadata={"help": f"What to speak: one of {SOURCES}."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of rows held out for evaluation."})
    seed: int = field(default=0, metadata={"help": "Seed of the hold-out split and of the voice choice."})
    text_pool: str = field(
        default="data/text_pool/pool.jsonl",
        metadata={"help": "Text pool jsonl (column `text`) for --source text_pool."},
    )
    num_sentences: int = field(default=12000, metadata={"help": "Pool sentences to speak (train + eval)."})
    offset: int = field(
        default=0,
        metadata={
            "help": "Skip this many sentences of the seeded draw: --offset 30000 speaks sentences that the "
            "embedded default's training data (--num_sentences 30000) never drew."
        },
    )
    max_words: int = field(default=40, metadata={"help": "Longer pool sentences are not drawn."})
    backends: list[str] = field(
        default_factory=lambda: ["espeak-ng", "flite"],
        metadata={"help": "TTS engines that share the sentences."},
    )
    backend_shares: list[float] = field(
        default_factory=lambda: [0.8, 0.2],
        metadata={"help": "Share of the sentences spoken by each backend (same order as --backends)."},
    )
    held_out_voices: list[str] = field(
        default_factory=lambda: ["en-us", "slt"],
        metadata={
            "help": "Voices kept for evaluation; a name matches the voice and its variants ('en-us' holds out "
            "'en-us+f3')."
        },
    )
    num_workers: int | None = field(
        default=None, metadata={"help": "Synthesis processes (default: one per CPU)."}
    )
    rows: str | None = field(
        default=None, metadata={"help": "--source chat_repeat: the jsonl rows (`text`, `audio`) to rewrite."}
    )
    num_rows: int | None = field(
        default=None, metadata={"help": "--source chat_repeat: rewrite the first N rows (default: all)."}
    )
    chat_model: str = field(
        default="embedded:salad",
        metadata={"help": "--source chat_repeat: the SALAD checkpoint whose processor renders the chat."},
    )

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}.")
        if len(self.backends) != len(self.backend_shares) or min(self.backend_shares) < 0:
            raise ValueError("Give one non-negative --backend_shares entry per --backends entry.")
        if self.source == "chat_repeat" and self.rows is None:
            raise ValueError("--source chat_repeat rewrites existing rows: give them with --rows.")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must lie in [0, 1), got {self.eval_fraction}.")


def write_splits(rows: list[dict], output: Path, eval_fraction: float, seed: int) -> dict[str, int]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    num_eval = round(len(rows) * eval_fraction)
    splits = {"eval": rows[:num_eval], "train": rows[num_eval:]}
    for split, split_rows in splits.items():
        write_rows(split_rows, output / f"{split}.jsonl")
    return {split: len(split_rows) for split, split_rows in splits.items()}


def write_asterisk_rows(args: PrepareArguments) -> dict[str, int]:
    output = Path(args.output_dir)
    (output / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for clip in asterisk_prompts():
        path = output / "audio" / f"{clip.name.replace('/', '__')}.wav"
        soundfile.write(path, clip.audio, clip.sampling_rate)
        rows.append({"text": clip.transcript, "audio": str(path.resolve()), "name": clip.name})
    return write_splits(rows, output, args.eval_fraction, args.seed)


def is_held_out(voice: str, held_out: list[str]) -> bool:
    return voice.split("+")[0] in held_out or voice in held_out


def split_voices(backend, held_out: list[str]) -> tuple[list[str], list[str]]:
    """(training voices, evaluation voices) of a backend."""
    voices = backend.voices()
    train = [voice for voice in voices if not is_held_out(voice, held_out)]
    evaluation = [voice for voice in voices if is_held_out(voice, held_out)]
    if not train:
        raise ValueError(
            f"Every voice of {backend.name} is held out ({held_out}); nothing is left to train on."
        )
    return train, evaluation


def draw_sentences(path: str, count: int, max_words: int, seed: int, offset: int = 0) -> list[str]:
    """`count` distinct pool sentences of at most `max_words` words, drawn with `seed` after skipping `offset`.

    The draw is `random.Random(seed).sample(pool, offset + count)[offset:]`. Where `offset + count` is above
    about a seventh of the pool, CPython samples by a partial shuffle whose first draws do not depend on how
    many are asked for, so the sentences past the offset are new (tests/test_prepare_data.py checks it).
    """
    if not Path(path).exists():
        raise FileNotFoundError(f"No text pool at {path}; build it with `salad-text-pool`.")
    with open(path) as handle:
        texts = [json.loads(line)["text"] for line in handle]
    texts = [text for text in texts if len(text.split()) <= max_words]
    if offset + count > len(texts):
        raise ValueError(
            f"Asked for sentences {offset}..{offset + count}; the pool has {len(texts)} of at most {max_words} words."
        )
    return random.Random(seed).sample(texts, offset + count)[offset:]


def definition_question(sentence: str, ask_for_term: bool) -> tuple[str, str] | None:
    """A spoken question and its answer from a pool definition; None for a sentence that is not one.

    `ask_for_term` asks for the word from its gloss ("What do you call a brush used to ...?" -> "A nailbrush"),
    otherwise for the gloss ("What is a nailbrush?" -> "A brush used to ...").
    """
    match = _DEFINITION.match(sentence.strip())
    if match is None:
        return None
    term, gloss = match["term"], match["gloss"]
    if ask_for_term:
        return f"What do you call {gloss}?", term
    return f"What is {term[0].lower()}{term[1:]}?", f"{gloss[0].upper()}{gloss[1:]}"


def definition_question_rows(sentences: list[str], seed: int) -> dict[str, dict]:
    """Question text -> its row columns (`prompt`, `continuation`, `answer`), one direction per definition drawn
    at random; a question asked by two definitions (two senses of one word) is kept once, the first."""
    rng = random.Random(seed)
    rows = {}
    for sentence in sentences:
        pair = definition_question(sentence, ask_for_term=rng.random() < 0.5)
        if pair is not None and pair[0] not in rows:
            question, answer = pair
            rows[question] = {"prompt": "Question: ", "continuation": f"\nAnswer: {answer}", "answer": answer}
    return rows


def write_text_pool_rows(args: PrepareArguments) -> dict[str, int]:
    """Speak pool sentences (or, for `definition_questions`, questions made of the pool's definitions): training
    rows in training voices, held-apart sentences in held-out voices."""
    output = Path(args.output_dir)
    columns = {}
    if args.source == "definition_questions":
        with open(args.text_pool) as handle:
            pool = [json.loads(line) for line in handle]
        definitions = [row["text"] for row in pool if row.get("source") == "wordnet/definition"]
        columns = definition_question_rows(definitions, args.seed)
        pool_path = output / "questions.jsonl"
        output.mkdir(parents=True, exist_ok=True)
        write_rows([{"text": question} for question in columns], pool_path)
        sentences = draw_sentences(str(pool_path), args.num_sentences, args.max_words, args.seed, args.offset)
    else:
        sentences = draw_sentences(args.text_pool, args.num_sentences, args.max_words, args.seed, args.offset)
    num_eval = round(len(sentences) * args.eval_fraction)
    splits = {"eval": sentences[:num_eval], "train": sentences[num_eval:]}
    shares = [share / sum(args.backend_shares) for share in args.backend_shares]
    counts = {}
    for split, texts in splits.items():
        rows, start = [], 0
        for index, (name, share) in enumerate(zip(args.backends, shares)):
            end = len(texts) if index == len(shares) - 1 else start + round(share * len(texts))
            backend = get_backend(name)
            train_voices, eval_voices = split_voices(backend, args.held_out_voices)
            voices = train_voices if split == "train" else eval_voices
            if texts[start:end] and not voices:
                raise ValueError(
                    f"{name} has no held-out voice among {args.held_out_voices} for the eval split."
                )
            for synthesis in synthesize_many(
                texts[start:end], backend, voices=voices, num_workers=args.num_workers,
                cache_dir=output / "audio", seed=args.seed,
            ):  # fmt: skip
                audio_path = str(Path(synthesis.audio_path).resolve())
                extra = columns.get(synthesis.text, {})
                rows.append(speech_row(synthesis, audio_path, source=args.source, **extra))
            start = end
        write_rows(rows, output / f"{split}.jsonl")
        counts[split] = len(rows)
    return counts


def chat_repeat_frame(processor: SaladProcessor, transcript: str) -> tuple[str, str]:
    """`(prompt, continuation)` around the clip: the rendered chat prompt split at its audio token, with the
    transcript and the template's end of turn after it."""
    before, after = RepeatPrompt(chat=True).text(processor).split(processor.audio_token)
    finished = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": transcript}], tokenize=False
    )
    return before, after + finished[finished.rindex(transcript) :]


def write_chat_repeat_rows(args: PrepareArguments) -> dict[str, int]:
    processor = SaladProcessor.from_pretrained(resolve_checkpoint(args.chat_model))
    rows = []
    for line in Path(args.rows).read_text().splitlines()[: args.num_rows]:
        row = json.loads(line)
        row["prompt"], row["continuation"] = chat_repeat_frame(processor, row["text"].strip())
        row.setdefault("duration", round(soundfile.info(row["audio"]).duration, 4))
        rows.append(row)
    write_rows(rows, Path(args.output_dir) / "train.jsonl")
    return {"train": len(rows), "eval": 0}


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((PrepareArguments,)).parse_args_and_config(args=argv)
    writers = {
        "asterisk": write_asterisk_rows,
        "text_pool": write_text_pool_rows,
        "definition_questions": write_text_pool_rows,
        "chat_repeat": write_chat_repeat_rows,
    }
    counts = writers[args.source](args)
    print(f"Wrote {counts['train']} train and {counts['eval']} eval rows to {args.output_dir}")


if __name__ == "__main__":
    main()
