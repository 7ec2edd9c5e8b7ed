"""Multiple-choice tasks: the item type, the built-in offline set, a generic loader and the paper's six tasks.

Every task becomes a list of `MultipleChoiceItem`s. What is spoken is `spoken_text` (context + question);
options are always scored as text continuations (see `eval.scoring`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from datasets import load_dataset

OFFLINE_TASKS = Path(__file__).parent / "data" / "offline_tasks.jsonl"


@dataclass(frozen=True)
class MultipleChoiceItem:
    id: str
    domain: str
    question: str
    options: tuple[str, ...]
    answer: int
    context: str = ""
    task: str = "offline"
    split: str = "test"
    audio_path: str | None = None  # the task's own recording, when it ships one (e.g. VoiceBench MMSU)

    @property
    def spoken_text(self) -> str:
        """What the speech systems hear: the context, then the question."""
        return f"{self.context} {self.question}".strip()

    def to_dict(self) -> dict:
        return asdict(self)


def validate_item(raw: dict, where: str) -> MultipleChoiceItem:
    """One item from a dict, or a `ValueError` naming `where` (file and line) and what is wrong."""
    missing = [key for key in ("id", "question", "options", "answer") if key not in raw]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}.")
    options = raw["options"]
    if (
        not isinstance(options, list)
        or len(options) < 2
        or not all(isinstance(o, str) and o.strip() for o in options)
    ):
        raise ValueError(f"{where}: 'options' must be a list of at least 2 non-empty strings.")
    if len(set(options)) != len(options):
        raise ValueError(f"{where}: options must be distinct.")
    answer = raw["answer"]
    if not isinstance(answer, int) or not 0 <= answer < len(options):
        raise ValueError(
            f"{where}: 'answer' must be an option index in [0, {len(options) - 1}], got {answer!r}."
        )
    if not str(raw["question"]).strip() and not str(raw.get("context", "")).strip():
        raise ValueError(f"{where}: the item has neither a question nor a context.")
    return MultipleChoiceItem(
        id=str(raw["id"]),
        domain=str(raw.get("domain", "all")),
        question=str(raw["question"]).strip(),
        options=tuple(o.strip() for o in options),
        answer=answer,
        context=str(raw.get("context", "")).strip(),
        task=str(raw.get("task", "offline")),
        split=str(raw.get("split", "test")),
        audio_path=raw.get("audio_path"),
    )


def load_jsonl_tasks(path: str | Path, split: str | None = "test") -> list[MultipleChoiceItem]:
    """Items of a JSONL task file (schema: `eval/data/README.md`); a malformed line fails with its number."""
    items, seen = [], set()
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg}).") from error
            item = validate_item(raw, where)
            if item.audio_path is not None and not Path(item.audio_path).is_absolute():
                item = replace(item, audio_path=str(Path(path).resolve().parent / item.audio_path))
            if item.id in seen:
                raise ValueError(f"{where}: duplicate id {item.id!r}.")
            seen.add(item.id)
            if split is None or item.split == split:
                items.append(item)
    return items


def load_offline_tasks(split: str = "test") -> list[MultipleChoiceItem]:
    """The built-in offline set (written for salad; `eval/data/README.md`); `split="fewshot"` for examples."""
    return load_jsonl_tasks(OFFLINE_TASKS, split=split)


def items_from_rows(
    rows: Iterable[dict], task: str, to_item: Callable[[dict, int], dict | None]
) -> list[MultipleChoiceItem]:
    """Map dataset rows to items with `to_item(row, index) -> dict` (None skips a row on purpose, e.g. a
    row without a gold answer in an unlabeled split; such rows are counted in the item ids' gaps, not hidden)."""
    items = []
    for index, row in enumerate(rows):
        raw = to_item(row, index)
        if raw is not None:
            items.append(validate_item({"task": task, **raw}, f"{task} row {index}"))
    return items


def generic_mapper(
    question_column: str,
    options_column: str | list[str],
    answer_column: str,
    domain_column: str | None = None,
    context_column: str | None = None,
    answer_format: str = "index",
    id_column: str | None = None,
) -> Callable[[dict, int], dict]:
    """A row mapper for any multiple-choice dataset given its column names.

    `options_column` is one list-valued column or several string columns; `answer_format` is `index` (0-based
    int or numeric string), `letter` ("A", "B"...), or `text` (the answer string itself).
    """
    if answer_format not in ("index", "letter", "text"):
        raise ValueError(f"answer_format must be index, letter or text, got {answer_format!r}.")

    def to_item(row: dict, index: int) -> dict:
        if isinstance(options_column, str):
            options = list(row[options_column])
        else:
            options = [row[column] for column in options_column]
        answer = row[answer_column]
        if answer_format == "letter":
            answer = "ABCDEFGHIJ".index(str(answer).strip().upper())
        elif answer_format == "text":
            answer = options.index(answer)
        return {
            "id": str(row[id_column]) if id_column else str(index),
            "question": row[question_column],
            "options": options,
            "answer": int(answer),
            "domain": row[domain_column] if domain_column else "all",
            "context": row[context_column] if context_column else "",
        }

    return to_item


def _arc_or_obqa(row: dict, index: int) -> dict:
    return {
        "id": row["id"],
        "question": row.get("question_stem", row.get("question")),
        "options": list(row["choices"]["text"]),
        "answer": list(row["choices"]["label"]).index(row["answerKey"]),
    }


def _hellaswag(row: dict, index: int) -> dict | None:
    if str(row["label"]).strip() == "":
        return None  # the test split has no labels
    return {
        "id": str(row.get("ind", index)),
        "question": "",
        "context": row["ctx"],
        "options": list(row["endings"]),
        "answer": int(row["label"]),
        "domain": row.get("activity_label", "all"),
    }


def _piqa(row: dict, index: int) -> dict:
    return {
        "id": str(index),
        "question": row["goal"],
        "options": [row["sol1"], row["sol2"]],
        "answer": int(row["label"]),
    }


def _storycloze(row: dict, index: int) -> dict:
    story = " ".join(row[f"input_sentence_{i}"] for i in range(1, 5))
    return {
        "id": row.get("story_id", str(index)),
        "question": "",
        "context": story,
        "options": [row["sentence_quiz1"], row["sentence_quiz2"]],
        "answer": int(row["answer_right_ending"]) - 1,
    }


def _mmsu(row: dict, index: int) -> dict:
    options = [row[f"option_{letter}"] for letter in "abcd"]
    return {
        "id": str(row.get("question_id", index)),
        "question": row["question"],
        "options": options,
        "answer": "abcd".index(str(row["reference"]).strip().lower()[-1]),
        "domain": row.get("question_category", "all"),
    }


#: The paper's six tasks: (dataset id, config, split, row mapper). They need the Hub (online).
PAPER_TASKS: dict[str, tuple[str, str | None, str, Callable]] = {
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test", _arc_or_obqa),
    "openbookqa": ("allenai/openbookqa", "main", "test", _arc_or_obqa),
    "hellaswag": ("Rowan/hellaswag", None, "validation", _hellaswag),
    "piqa": ("ybisk/piqa", None, "validation", _piqa),
    "storycloze": ("LSDSem/story_cloze", "2016", "validation", _storycloze),
    "mmsu": ("hlt-lab/voicebench", "mmsu", "test", _mmsu),
}


def load_paper_task(name: str, limit: int | None = None) -> list[MultipleChoiceItem]:
    """One of the paper's six tasks from the Hub (needs network; StoryCloze needs its manual download)."""
    if name not in PAPER_TASKS:
        raise ValueError(f"Unknown task {name!r}; the paper's tasks are {sorted(PAPER_TASKS)}.")
    dataset_id, config, split, mapper = PAPER_TASKS[name]
    rows = load_dataset(dataset_id, config, split=split)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return items_from_rows(rows, name, mapper)


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """`name` with every run of characters other than letters, digits, `.`, `_` and `-` replaced by `_`, for
    file names derived from task and domain names (no path separators, no spaces)."""
    cleaned = _UNSAFE_NAME.sub("_", name).strip("._")
    return cleaned or "task"


def parse_task_spec(spec: str) -> tuple[str, str]:
    """`(name, source)` of a `--tasks` entry: `name=path` names a task file; a bare file path is named by its
    stem (`/data/quiz.jsonl` -> `quiz`); `offline` and the paper's tasks are their own names. The name is what
    results, plots and the model card show; the source stays in the results' config for provenance."""
    name, separator, source = spec.partition("=")
    if separator:
        if not name.strip() or not source.strip():
            raise ValueError(f"Task {spec!r}: write `name=path/to/items.jsonl` with both parts.")
        return name.strip(), source.strip()
    if spec == "offline" or spec in PAPER_TASKS:
        return spec, spec
    if Path(spec).suffix in (".jsonl", ".json") or Path(spec).exists():
        return Path(spec).stem, spec
    return spec, spec


def load_task(spec: str, limit: int | None = None) -> list[MultipleChoiceItem]:
    """`offline`, a paper task name, or a path to a JSONL file in our schema (`name=path` is accepted too).

    `limit` keeps that many items evenly spaced over a local file (the offline set is sorted by domain, so a
    prefix would be one domain), or the first ones of a Hub task.
    """
    spec = parse_task_spec(spec)[1]
    if spec == "offline":
        items = load_offline_tasks()
    elif spec in PAPER_TASKS:
        return load_paper_task(spec, limit)
    elif Path(spec).is_file():
        items = load_jsonl_tasks(spec)
    else:
        raise ValueError(
            f"Unknown task {spec!r}: use 'offline', one of {sorted(PAPER_TASKS)} or a JSONL path."
        )
    if not items:
        raise ValueError(f"Task {spec!r} has no items: a task file needs at least one JSON line.")
    return evenly_spaced(items, limit) if limit is not None else items


def evenly_spaced(items: list, count: int) -> list:
    """`count` items spread evenly over the list, in order (all of them when it is shorter)."""
    if count >= len(items):
        return list(items)
    return [items[index * len(items) // count] for index in range(count)]
