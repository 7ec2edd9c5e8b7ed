"""An offline, broad English text pool for Stage II active selection, built from Debian text packages.

    apt-get install fortunes wordnet-base jargon-text
    salad-text-pool --output_dir data/text_pool

The paper selects from a FineWeb-Edu subset, which needs the Hub. Without network, breadth has to come from text
that Debian ships; three packages between them cover everyday language, definitions of nearly every topic
(animals, places, chemistry, law, sports...) and computing culture:

| source | Debian package | what becomes sentences | license |
|---|---|---|---|
| `fortunes/<file>` | `fortunes`, `fortunes-min` | fortune cookies (quotations, jokes, definitions), split into sentences; attribution lines dropped | BSD-style (fortune-mod); quotations are short excerpts from many authors |
| `wordnet/example` | `wordnet-base` | the usage examples inside WordNet 3.0 glosses | WordNet 3.0 license (permissive, attribution) |
| `wordnet/definition` | `wordnet-base` | noun glosses as "A dwarf is a plant or animal that is atypically small." | WordNet 3.0 license |
| `jargon` | `jargon-text` | the Jargon File 4.4.7 prose, split into sentences | public domain |

Two fortune files are left out: `ascii-art` (pictures, not text) and `ethnic` (ethnic jokes).

Every candidate is normalized (typographic quotes and dashes to ASCII, whitespace collapsed), kept when it has
`min_words`..`max_words` words, is plain ASCII prose (no markup, code or ASCII art characters, mostly
letters), starts with a letter, digit or quote and ends a sentence; exact duplicates after lowercasing and
dropping punctuation are removed. At most `max_per_source` sentences are kept per source (a seeded sample), so
no package dominates the pool. The output is `pool.jsonl` (`text`, `source`) in a seeded random order and
`provenance.json` (package versions, licenses, counts per source, the filters), so a run is reproducible from the
installed package versions.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import subprocess
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trl import TrlParser

FORTUNE_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
JARGON_FILE = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
FORTUNE_EXCLUDED = ("ascii-art", "ethnic")

SOURCES = {
    "fortunes": {
        "packages": ["fortunes", "fortunes-min"],
        "license": "BSD-style (fortune-mod, University of California); quotations by their authors",
    },
    "wordnet": {"packages": ["wordnet-base"], "license": "WordNet 3.0 license (Princeton University)"},
    "jargon": {"packages": ["jargon-text"], "license": "public domain (The Jargon File 4.4.7)"},
}

_TYPOGRAPHY = str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'", "—": " - ", "–": "-", "…": "..."})
_NOT_PROSE = re.compile(r"[\[\]{}<>|\\_=#@*~^`+]")
_SENTENCE_END = re.compile(r"""[.!?]["')]?$""")
# A sentence ends at . ! ? (optionally closed by a quote or parenthesis) before a capital, digit or quote;
# common abbreviations ("Mr.", "e.g.") do not end one.
_SENTENCE_BREAK = re.compile(r"""([.!?]["')]?)\s+(?=["'(]?[A-Z0-9])""")
_ABBREVIATION = re.compile(r"\b(Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|vs|etc|e\.g|i\.e|Inc|Ltd|Co|No|Vol|Wm)\.$")


@dataclass
class TextPoolArguments:
    output_dir: str = field(
        default="data/text_pool",
        metadata={"help": "Folder for pool.jsonl and provenance.json (the path the training configs read)."},
    )
    min_words: int = field(default=5, metadata={"help": "Shortest sentence kept, in words."})
    max_words: int = field(
        default=40, metadata={"help": "Longest sentence kept, in words (~15 s of speech)."}
    )
    min_letter_fraction: float = field(
        default=0.75, metadata={"help": "Smallest share of letters and spaces among a sentence's characters."}
    )
    max_per_source: int = field(
        default=12_000,
        metadata={
            "help": "Most sentences kept per source (fortunes, wordnet/*, jargon), sampled with `seed`."
        },
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the per-source sampling and of the pool's order."}
    )

    def __post_init__(self):
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"Need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}.")
        if not 0.0 <= self.min_letter_fraction <= 1.0:
            raise ValueError(f"min_letter_fraction must lie in [0, 1], got {self.min_letter_fraction}.")
        if self.max_per_source < 1:
            raise ValueError(f"max_per_source must be >= 1, got {self.max_per_source}.")


def normalize(text: str) -> str:
    """ASCII punctuation for typographic quotes and dashes, NFKC, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text.translate(_TYPOGRAPHY))
    return " ".join(text.split())


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of a normalized paragraph, with a rule-based splitter (no model: the pool must build offline)."""
    sentences, start = [], 0
    for match in _SENTENCE_BREAK.finditer(paragraph):
        if _ABBREVIATION.search(paragraph[start : match.end(1)]):
            continue
        sentences.append(paragraph[start : match.end(1)].strip())
        start = match.end()
    sentences.append(paragraph[start:].strip())
    return [sentence for sentence in sentences if sentence]


def is_speakable(sentence: str, args: TextPoolArguments) -> bool:
    """Prose a TTS engine reads naturally: the length range, ASCII, no markup or code, mostly letters."""
    words = sentence.split()
    if not args.min_words <= len(words) <= args.max_words or not sentence.isascii():
        return False
    if _NOT_PROSE.search(sentence) or not _SENTENCE_END.search(sentence):
        return False
    if not (sentence[0].isalnum() or sentence[0] in "\"'"):
        return False
    letters = sum(character.isalpha() or character == " " for character in sentence)
    return letters >= args.min_letter_fraction * len(sentence)


def dedup_key(sentence: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", sentence.lower()))


# ---------------------------------------------------------------------------------------------------------
# Sources: each yields (source, raw sentence or paragraph)


def fortune_paragraphs(directory: Path = FORTUNE_DIR) -> Iterator[tuple[str, str]]:
    """Each fortune (entries separated by a line holding "%"), without its "-- Author" attribution lines."""
    files = [
        path
        for path in sorted(directory.glob("*"))
        if path.is_file() and not path.suffix and path.name not in FORTUNE_EXCLUDED
    ]
    for path in files:
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = [line for line in entry.splitlines() if not line.strip().startswith("--")]
            yield f"fortunes/{path.name}", " ".join(lines)


_GLOSS_ARTICLE = re.compile(r"^(a|an|the|any|one) ")


def wordnet_paragraphs(directory: Path = WORDNET_DIR) -> Iterator[tuple[str, str]]:
    """Usage examples of all parts of speech, and noun definitions turned into "<Lemma> is <gloss>." sentences.

    Only definitions that start with an article make grammatical sentences ("a plant or animal that ..."); the
    rest ("organisms (plants and animals) that live ...") are left out.
    """
    for part in ("noun", "verb", "adj", "adv"):
        with open(directory / f"data.{part}", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(" ") or " | " not in line:  # the license header is indented
                    continue
                fields, gloss = line.split(" | ", 1)
                for example in re.findall(r'"([^"]+)"', gloss):
                    yield "wordnet/example", _as_sentence(example)
                definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
                if part == "noun" and _GLOSS_ARTICLE.match(definition):
                    lemma = fields.split()[4].replace("_", " ")
                    yield "wordnet/definition", f"{_with_article(lemma)} is {definition}."


def _as_sentence(fragment: str) -> str:
    fragment = fragment.strip()
    fragment = fragment[:1].upper() + fragment[1:]
    return fragment if _SENTENCE_END.search(fragment) else f"{fragment}."


def _with_article(lemma: str) -> str:
    """Proper nouns stand alone ("Paris is ..."); common nouns get "A"/"An" ("An apple is ...")."""
    if lemma[:1].isupper():
        return lemma
    return f"{'An' if lemma[:1].lower() in 'aeiou' else 'A'} {lemma}"


def jargon_paragraphs(path: Path = JARGON_FILE) -> Iterator[tuple[str, str]]:
    """The prose paragraphs of the Jargon File; headwords (":word:") and cross-reference braces removed."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = paragraph.strip()
        if paragraph.startswith(":"):
            continue
        yield "jargon", paragraph.replace("{", "").replace("}", "")


def _check_installed() -> None:
    missing = [
        package
        for path, package in (
            (FORTUNE_DIR, "fortunes"),
            (WORDNET_DIR / "data.noun", "wordnet-base"),
            (JARGON_FILE, "jargon-text"),
        )
        if not path.exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"Text pool sources missing; install them with `apt-get install {' '.join(missing)}`."
        )


def collect_sentences(args: TextPoolArguments) -> dict[str, list[str]]:
    """Speakable, deduplicated `(source, sentence)` pairs per quota group: all fortune files share one quota,
    WordNet examples and definitions have one each (the first occurrence of a duplicate wins)."""
    _check_installed()
    seen, by_source = set(), {}
    for paragraphs in (fortune_paragraphs(), wordnet_paragraphs(), jargon_paragraphs()):
        for source, paragraph in paragraphs:
            for sentence in split_sentences(normalize(paragraph)):
                key = dedup_key(sentence)
                if key in seen or not is_speakable(sentence, args):
                    continue
                seen.add(key)
                quota_group = "fortunes" if source.startswith("fortunes/") else source
                by_source.setdefault(quota_group, []).append((source, sentence))
    return by_source


def build_text_pool(args: TextPoolArguments) -> dict:
    """Write `pool.jsonl` and `provenance.json` into `output_dir`; returns the provenance."""
    rng = random.Random(args.seed)
    rows = []
    for _, items in sorted(collect_sentences(args).items()):
        kept = rng.sample(items, min(len(items), args.max_per_source))
        rows += [{"text": sentence, "source": source} for source, sentence in kept]
    rng.shuffle(rows)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "pool.jsonl", "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    counts = Counter(row["source"].split("/")[0] for row in rows)
    provenance = {
        "num_sentences": len(rows),
        "sources": {
            name: {**info, "versions": _package_versions(info["packages"]), "sentences": counts[name]}
            for name, info in SOURCES.items()
        },
        "sentences_per_source": dict(sorted(Counter(row["source"] for row in rows).items())),
        "fortune_files_excluded": list(FORTUNE_EXCLUDED),
        "arguments": asdict(args),
    }
    (output / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def _package_versions(packages: list[str]) -> dict[str, str | None]:
    """Installed Debian versions, recorded so that a pool can be rebuilt from the same data."""
    versions = {}
    for package in packages:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True, check=False
        )
        versions[package] = result.stdout.strip() or None
    return versions


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((TextPoolArguments,)).parse_args_and_config(args=argv)
    provenance = build_text_pool(args)
    print(f"Wrote {provenance['num_sentences']} sentences to {args.output_dir}/pool.jsonl")
    for name, info in provenance["sources"].items():
        print(f"  {name}: {info['sentences']} ({info['license']})")


if __name__ == "__main__":
    main()
