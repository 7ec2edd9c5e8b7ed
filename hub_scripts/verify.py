"""Check what `salad-push` published, the way a user without salad will meet it.

    python -m hub_scripts.verify --source me/salad-smollm2 --revision 0123abcd...   # 40-hex commit, as pushed
    python -m hub_scripts.verify --source /tmp/to-upload                            # a --dry_run folder

The files are downloaded at the pinned commit (or copied, for a dry-run folder) into a clean directory, then:
the files are checked (safetensors only, a complete shard index, the remote code the config names), the model
card must parse with `ModelCard.load`, and a fresh Python process in which `import modeling_salad` (and
salad's other packages) raises `ImportError` must load the checkpoint with `trust_remote_code=True` through the
`salad-speech-to-text` pipeline and answer a probe clip, and, when the LoRA was pushed apart, answer again with
it loaded. The report is printed as JSON; the exit status is 1 when any check fails.

A branch name is refused as revision: it can move between the push and the check, and then the check would
vouch for files nobody pushed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile
from huggingface_hub import ModelCard, snapshot_download
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from trl import TrlParser

COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
# Pickle-based weight formats: never published (loading them can run arbitrary code).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
LORA_SUBFOLDER = "lora"
PROBE_PROMPT = "What was said?"
PROBE_SAMPLING_RATE = 16_000
# `snapshot_download(local_dir=...)` keeps its download metadata here; it is not part of the repository.
DOWNLOAD_METADATA = ".cache"

# Runs in a fresh interpreter; argv: directory, probe wav, prompt, max_new_tokens, LoRA subfolder, blocked
# packages (comma-separated). Prints one JSON line: {step: {"passed": bool, "detail": str}}.
FRESH_PROCESS_SCRIPT = r"""
import importlib.abc, json, os, sys, traceback

directory, probe, prompt, max_new_tokens, lora = sys.argv[1:6]
blocked = set(sys.argv[6].split(","))


class BlockSalad(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is blocked: a published checkpoint must not need the salad package")


sys.meta_path.insert(0, BlockSalad())
report, state = {}, {}


def step(name, function):
    try:
        report[name] = {"passed": True, "detail": function()}
    except Exception as error:
        message = "".join(traceback.format_exception_only(type(error), error)).strip()
        report[name] = {"passed": False, "detail": message[-2000:]}
    return report[name]["passed"]


def salad_is_blocked():
    try:
        import modeling_salad  # noqa: F401
    except ImportError:
        return "import modeling_salad raises ImportError"
    raise AssertionError("modeling_salad could be imported, so this process proves nothing")


def load_remote_code():
    from transformers import pipeline

    state["pipe"] = pipeline("salad-speech-to-text", model=directory, trust_remote_code=True)
    model_class = type(state["pipe"].model)
    if not model_class.__module__.startswith("transformers_modules"):
        raise AssertionError(f"the model class comes from {model_class.__module__}, not the checkpoint's code")
    return f"{model_class.__name__} from {model_class.__module__}"


def answer():
    text = state["pipe"](probe, prompt=prompt, max_new_tokens=int(max_new_tokens))["generated_text"]
    if not isinstance(text, str):
        raise AssertionError(f"the pipeline answered {text!r}, not text")
    return text


def answer_with_lora():
    state["pipe"].model.language_model.load_adapter(os.path.join(directory, lora))
    return answer()


if step("salad_blocked", salad_is_blocked) and step("load_remote_code", load_remote_code):
    step("pipeline_answer", answer)
    if os.path.isdir(os.path.join(directory, lora)):
        step("lora_adapter_answer", answer_with_lora)
print(json.dumps(report))
"""


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class VerificationReport:
    """What was checked, where, and how each check went. `ok` is what the exit status reports."""

    source: str
    revision: str | None
    directory: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def check(self, name: str) -> Check:
        return next(check for check in self.checks if check.name == name)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


@dataclass
class VerifyArguments:
    source: str | None = field(
        default=None,
        metadata={"help": "Hub repository id, or a local folder (a salad-push --dry_run output)."},
    )
    revision: str | None = field(
        default=None, metadata={"help": "Full commit hash to check (required for a Hub repository)."}
    )
    work_dir: str | None = field(
        default=None,
        metadata={"help": "Empty directory to work in, kept afterwards (default: a temporary one)."},
    )
    max_new_tokens: int = field(default=8, metadata={"help": "Length of the probe answer."})
    timeout: int = field(default=900, metadata={"help": "Seconds the fresh process may take."})
    output_json: str | None = field(default=None, metadata={"help": "Also write the report to this file."})

    def __post_init__(self):
        if not self.source:
            raise ValueError("--source is required: a Hub repository id or a dry-run folder.")


# --------------------------------------------------------------------------------------------------- fetch
def fetch(source: str, revision: str | None, destination: Path) -> Path:
    """Put the published files, and nothing else, into the new directory `destination`."""
    if Path(source).is_dir():
        if revision is not None:
            raise ValueError(f"{source} is a local folder: it has no revision to pin; leave --revision out.")
        shutil.copytree(source, destination)
        return destination
    if revision is None or not COMMIT_HASH.fullmatch(revision):
        raise ValueError(
            f"Pin the revision to check with a full commit hash (got {revision!r}): salad-push prints it after "
            "uploading. Branch names can move, and the check would no longer be about what was pushed."
        )
    snapshot_download(repo_id=source, revision=revision, local_dir=destination)
    return destination


def published_files(directory: Path) -> list[Path]:
    return sorted(
        path
        for path in directory.rglob("*")
        if path.is_file() and path.relative_to(directory).parts[0] != DOWNLOAD_METADATA
    )


# -------------------------------------------------------------------------------------------- file checks
def check_weights(directory: Path) -> list[Check]:
    """Safetensors only, and a shard index that names exactly the shards present."""
    files = published_files(directory)
    pickled = [path.name for path in files if path.suffix in PICKLE_SUFFIXES]
    weights = [path.name for path in files if path.suffix == ".safetensors" and path.parent == directory]
    checks = [
        Check(
            "safetensors_only",
            not pickled and bool(weights),
            f"pickle files: {pickled}" if pickled else f"weights: {weights}",
        )
    ]
    index = directory / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        listed = set(json.loads(index.read_text())["weight_map"].values())
        present = {name for name in weights if name != SAFE_WEIGHTS_NAME}
        checks.append(
            Check(
                "shard_index",
                listed == present,
                f"{len(listed)} shards"
                if listed == present
                else f"index {sorted(listed)} != files {sorted(present)}",
            )
        )
    return checks


def _code_files(auto_map: dict) -> set[str]:
    """Module files an `auto_map` points to ("module.Class", or "repo--module.Class" for code kept elsewhere)."""
    references = [
        value for value in auto_map.values() for value in (value if isinstance(value, list) else [value])
    ]
    return {f"{reference.split('--')[-1].split('.')[0]}.py" for reference in references if reference}


def check_remote_code(directory: Path) -> Check:
    """Every module the config's `auto_map` and `custom_pipelines` (and the processor's) name is there."""
    config = json.loads((directory / CONFIG_NAME).read_text())
    missing_tasks = sorted({"salad-speech-to-text", "any-to-any"} - set(config.get("custom_pipelines", {})))
    if missing_tasks:
        return Check("remote_code", False, f"config.json declares no custom pipeline for {missing_tasks}")
    needed = _code_files(config.get("auto_map", {}))
    needed |= {f"{entry['impl'].split('.')[0]}.py" for entry in config["custom_pipelines"].values()}
    processor_config = directory / "processor_config.json"
    if processor_config.is_file():
        needed |= _code_files(json.loads(processor_config.read_text()).get("auto_map", {}))
    missing = sorted(name for name in needed if not (directory / name).is_file())
    return Check(
        "remote_code", not missing, f"missing {missing}" if missing else f"code files: {sorted(needed)}"
    )


def check_card(directory: Path) -> Check:
    """The card parses, with its metadata and model-index, the way the Hub reads it."""
    readme = directory / "README.md"
    if not readme.is_file():
        return Check("model_card", False, "no README.md")
    try:
        data = ModelCard.load(readme).data
    except Exception as error:  # the card's own parser decides what is valid
        return Check("model_card", False, f"{type(error).__name__}: {error}")
    problems = []
    if data.get("library_name") != "transformers":
        problems.append(f"library_name is {data.get('library_name')!r}, not 'transformers'")
    if not data.get("pipeline_tag"):
        problems.append("no pipeline_tag")
    metrics = len(data.eval_results or [])
    return Check("model_card", not problems, "; ".join(problems) or f"{metrics} model-index metrics")


# -------------------------------------------------------------------------------------------- fresh process
def probe_clip() -> np.ndarray:
    """One second of a noisy tone: any audio exercises the whole path (decode, features, encoder, LLM)."""
    rng = np.random.default_rng(0)
    t = np.arange(PROBE_SAMPLING_RATE) / PROBE_SAMPLING_RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def fresh_process_env(work_dir: Path) -> dict[str, str]:
    """Offline, with a private module cache, no extra import paths and no Hub token."""
    env = {
        key: value for key, value in os.environ.items() if key not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    }
    env.update(
        HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(work_dir / "modules"), PYTHONPATH="", PYTHONNOUSERSITE="1"
    )
    return env


def salad_packages() -> tuple[str, ...]:
    """salad's own top-level packages, as the installed distribution lists them (setup.py's `packages`): a
    published checkpoint must load without any of them."""
    distribution = importlib.metadata.packages_distributions()[__name__.split(".")[0]][0]
    top_level = importlib.metadata.distribution(distribution).read_text("top_level.txt") or ""
    return tuple(sorted(set(top_level.split())))


def check_in_fresh_process(directory: Path, work_dir: Path, max_new_tokens: int, timeout: int) -> list[Check]:
    """Load and query the checkpoint in a new interpreter where salad's packages cannot be imported."""
    probe = work_dir / "probe.wav"
    soundfile.write(probe, probe_clip(), PROBE_SAMPLING_RATE, subtype="FLOAT")
    command = [
        sys.executable, "-c", FRESH_PROCESS_SCRIPT, str(directory), str(probe), PROBE_PROMPT, str(max_new_tokens),
        LORA_SUBFOLDER, ",".join(salad_packages()),
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=fresh_process_env(work_dir),
            cwd=work_dir,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return [Check("fresh_process", False, f"no answer within {timeout} s")]
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return [Check("fresh_process", False, f"exit status {result.returncode}: {result.stderr[-2000:]}")]
    steps = json.loads(lines[-1])
    return [Check(name, outcome["passed"], outcome["detail"]) for name, outcome in steps.items()]


# ------------------------------------------------------------------------------------------------ verify
def verify(
    source: str,
    revision: str | None = None,
    work_dir: str | Path | None = None,
    max_new_tokens: int = 8,
    timeout: int = 900,
) -> VerificationReport:
    """Fetch `source` at `revision` into a clean directory and run every check on it."""
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="salad-verify-") as temporary:
            return verify(source, revision, temporary, max_new_tokens, timeout)
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    if any(work_dir.iterdir()):
        raise ValueError(f"work_dir {work_dir} is not empty: the check needs a clean directory.")
    directory = fetch(source, revision, work_dir / "checkpoint")
    report = VerificationReport(source=source, revision=revision, directory=str(directory))
    if not (directory / CONFIG_NAME).is_file():
        report.checks.append(Check("config", False, "no config.json"))
        return report
    report.checks += check_weights(directory)
    if not report.check("safetensors_only").passed:
        # Loading pickle files can run arbitrary code: the checkpoint's code is not run at all then.
        report.checks.append(
            Check("code_not_run", False, "pickle files or no weights: nothing was loaded or run")
        )
        return report
    report.checks.append(check_remote_code(directory))
    report.checks.append(check_card(directory))
    report.checks += check_in_fresh_process(directory, work_dir, max_new_tokens, timeout)
    return report


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((VerifyArguments,)).parse_args_and_config(args=argv)
    report = verify(args.source, args.revision, args.work_dir, args.max_new_tokens, args.timeout)
    text = json.dumps(report.to_dict(), indent=2)
    print(text)
    if args.output_json:
        Path(args.output_json).write_text(text + "\n")
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
