"""`salad-push`: publish a SALAD checkpoint to the Hugging Face Hub in one commit, with its model card.

    salad-push --model_name_or_path runs/my-salad --repo_id me/salad-smollm2 --results runs/eval/results.json
    salad-push --model_name_or_path runs/my-salad --repo_id me/salad-smollm2 --dry_run /tmp/to-upload
    salad-push --config configs/push.yaml --create_pr          # flags override the YAML's values

What is uploaded is a folder written here first: weights re-saved as safetensors (sharded past
`--max_shard_size`, with an index), config and generation config, processor, the remote code and custom
pipeline that `save_pretrained` writes, the model card (`README.md`) and, when given, the gap harness's
`results.json` under `eval/`. `--dry_run DIR` writes exactly that folder to DIR and uploads nothing; without it
the folder goes up as a single commit (`create_repo`, then `create_commit`), to a branch (`--revision`) or as a
pull request (`--create_pr`). Remote files are never deleted unless `--delete_patterns` names them.

The token comes from `hf auth login` or the `HF_TOKEN` environment variable, as for every huggingface_hub
call; this script neither takes it as a flag (it would land in shell histories) nor prints it.

LoRA: a checkpoint whose LLM still holds LoRA layers (a Trainer `checkpoint-N` folder of a `train_llm=lora` run)
is merged into the LLM by default; `--no_merge_lora` keeps the LoRA apart as a PEFT adapter of the LLM in
`lora/`, with the original LLM weights at the top level. Such checkpoints do not record the LoRA scaling, so
`--lora_alpha` must repeat the value used in training.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
import yaml
from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.utils import HFValidationError, filter_repo_objects, validate_repo_id
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from trl import TrlParser

from modeling_salad import SaladForConditionalGeneration, SaladProcessor
from trainers.assets.registry import hub_id_of_converted

from .model_card import build_model_card
from .verify import LORA_SUBFOLDER, PICKLE_SUFFIXES

logger = logging.getLogger(__name__)

RESULTS_PATH_IN_REPO = "eval/results.json"


@dataclass
class PushArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "SALAD checkpoint folder: a save_pretrained output or a Trainer checkpoint-N folder."
        },
    )
    repo_id: str | None = field(
        default=None, metadata={"help": "Target Hub repository, 'namespace/name' (also named in the card)."}
    )
    private: bool = field(
        default=False,
        metadata={"help": "Create the repository as private (an existing repo keeps its visibility)."},
    )
    revision: str | None = field(
        default=None,
        metadata={
            "help": "Branch to commit to (created from main when missing); with --create_pr, the PR's base."
        },
    )
    create_pr: bool = field(
        default=False, metadata={"help": "Open a pull request instead of committing directly."}
    )
    commit_message: str = field(
        default="Upload SALAD model with salad-push",
        metadata={"help": "Title of the commit (or pull request)."},
    )
    results: str | None = field(
        default=None,
        metadata={
            "help": "results.json of salad-eval: its numbers fill the card's model-index and are uploaded."
        },
    )
    training_recipe: str | None = field(
        default=None,
        metadata={
            "help": "YAML/JSON file with the training recipe for the card: {stages: [{name, ...}], ...}."
        },
    )
    base_model: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Hub ids of the speech encoder and the LLM (default: read from the checkpoint's config)."
        },
    )
    datasets: list[str] = field(default_factory=list, metadata={"help": "Hub ids of the training datasets."})
    license: str = field(
        default="apache-2.0", metadata={"help": "License of the weights (mind the base models')."}
    )
    language: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "Languages of the model."})
    tags: list[str] = field(default_factory=list, metadata={"help": "Extra Hub tags for the card."})
    merge_lora: bool = field(
        default=True,
        metadata={
            "help": "Merge the LLM's LoRA into its weights; --no_merge_lora keeps it as an adapter in lora/."
        },
    )
    lora_alpha: float | None = field(
        default=None,
        metadata={
            "help": "LoRA scaling numerator used in training; required when the checkpoint holds LoRA."
        },
    )
    max_shard_size: str = field(
        default="5GB", metadata={"help": "Largest safetensors file; bigger models are sharded with an index."}
    )
    dry_run: str | None = field(
        default=None,
        metadata={"help": "Write the folder that would be uploaded to this empty directory; upload nothing."},
    )
    delete_patterns: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Remote files to delete in the same commit (globs, e.g. '*.safetensors'); none by default."
        },
    )

    def __post_init__(self):
        if not self.model_name_or_path:
            raise ValueError("--model_name_or_path is required: the SALAD checkpoint folder to publish.")
        if not self.repo_id or self.repo_id.count("/") != 1:
            raise ValueError(
                f"--repo_id must be 'namespace/name' (got {self.repo_id!r}); the card's snippets load from it."
            )
        try:
            validate_repo_id(self.repo_id)
        except HFValidationError as error:
            raise ValueError(
                f"--repo_id {self.repo_id!r} is not a valid Hub repository id: {error}"
            ) from error


# ------------------------------------------------------------------------------------------------- loading
def weight_files(checkpoint: Path) -> list[Path]:
    """The checkpoint's safetensors files; pickle weights are refused rather than loaded."""
    index = checkpoint / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [checkpoint / shard for shard in shards]
    single = checkpoint / SAFE_WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise ValueError(
        f"No safetensors weights in {checkpoint} ({SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}). salad-push only "
        "publishes safetensors; re-save pickle checkpoints with save_pretrained from code you trust."
    )


def lora_layer_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint's LoRA layers (`lora_A`, `lora_B` and the wrapped `base_layer`); empty for a
    plain checkpoint."""
    tensors = {}
    for path in weight_files(checkpoint):
        with safe_open(path, framework="pt") as shard:
            keys = [key for key in shard.keys() if ".lora_" in key or ".base_layer." in key]  # noqa: SIM118
            tensors.update({key: shard.get_tensor(key) for key in keys})
    return tensors


def lora_config_from_tensors(tensors: Mapping[str, torch.Tensor], lora_alpha: float | None):
    """Rebuild the `LoraConfig` of a checkpoint from its LoRA weights and the scaling given by the user.

    Rank and target modules are in the weights; the scaling `lora_alpha / r` is not, hence `lora_alpha`.
    """
    from peft import LoraConfig

    if lora_alpha is None:
        raise ValueError(
            "The checkpoint's LLM holds LoRA weights but not their scaling: pass --lora_alpha with the value used "
            "in training (salad-train's lora_alpha, 32 by default)."
        )
    modules = {key.split(".lora_A.")[0]: tensor for key, tensor in tensors.items() if ".lora_A." in key}
    outside_llm = sorted(module for module in modules if not module.startswith("language_model."))
    if outside_llm:
        raise ValueError(f"LoRA outside the LLM is not supported by salad-push: {outside_llm[:3]}.")
    ranks = {tensor.shape[0] for tensor in modules.values()}
    if len(ranks) != 1:
        raise ValueError(f"LoRA layers of different ranks {sorted(ranks)} are not supported by salad-push.")
    targets = sorted({module.rsplit(".", 1)[-1] for module in modules})
    return LoraConfig(r=ranks.pop(), lora_alpha=lora_alpha, target_modules=targets)


@contextmanager
def _quiet_transformers():
    """Silence transformers' load report while LoRA keys it cannot place are loaded separately."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


def load_checkpoint(
    checkpoint: str | Path, lora_alpha: float | None = None
) -> tuple[SaladForConditionalGeneration, SaladProcessor]:
    """Load a SALAD checkpoint in its saved dtype, with its LoRA layers when it has some.

    A LoRA-tuned LLM saves each adapted linear layer as `*.base_layer.weight` plus `lora_A`/`lora_B`, names a
    plain model does not have. The plain model is loaded first (those layers left unfilled), LoRA is injected
    again, and the LoRA layers' weights are loaded under their own names.
    """
    checkpoint = Path(checkpoint)
    if not (checkpoint / CONFIG_NAME).is_file():
        raise ValueError(f"{checkpoint} is not a checkpoint folder (no config.json).")
    processor = SaladProcessor.from_pretrained(checkpoint)
    tensors = lora_layer_tensors(checkpoint)
    if not any(".lora_A." in key for key in tensors):
        return SaladForConditionalGeneration.from_pretrained(checkpoint, dtype="auto"), processor
    lora_config = lora_config_from_tensors(tensors, lora_alpha)
    with _quiet_transformers():
        model, info = SaladForConditionalGeneration.from_pretrained(
            checkpoint, dtype="auto", output_loading_info=True
        )
    model.add_lora_to_language_model(lora_config)
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"LoRA weights that match no LoRA layer: {result.unexpected_keys[:5]}")
    unfilled = [key for key in info["missing_keys"] if _as_base_layer(key) not in tensors]
    if unfilled:
        raise ValueError(f"Weights missing from {checkpoint}: {sorted(unfilled)[:5]}")
    return model, processor


def _as_base_layer(key: str) -> str:
    module, _, parameter = key.rpartition(".")
    return f"{module}.base_layer.{parameter}"


def infer_base_models(config) -> list[str]:
    """Hub ids of the encoder and the LLM, read from the names the sub-configs were loaded from.

    Hub ids are kept; the converted offline assets map to the Hub models they reproduce; other local paths
    cannot be named on the Hub and are left out (give `--base_model` then).
    """
    found = []
    for sub_config in (config.audio_config, config.text_config):
        name = getattr(sub_config, "_name_or_path", "") or ""
        embedded = hub_id_of_converted(name) if name else None
        if embedded is not None:
            found.append(embedded)
        elif _looks_like_hub_id(name):
            found.append(name)
    if len(found) < 2:
        logger.warning(
            "The card's base_model names %s: the checkpoint's config does not name both the encoder and the LLM "
            "on the Hub. Pass them with --base_model.",
            found or "nothing",
        )
    return found


def _looks_like_hub_id(name: str) -> bool:
    if name.count("/") != 1 or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


# ------------------------------------------------------------------------------------------ the folder
def split_lora(model: SaladForConditionalGeneration):
    """Take the LoRA layers out of the LLM, unmerged: returns their `LoraConfig` and PEFT-format weights.

    The model is left with the original LLM weights. The weights are keyed as PEFT saves an adapter of the LLM
    alone, so `model.language_model.load_adapter(...)` puts them back exactly.
    """
    from peft import get_peft_model_state_dict

    language_model = model.language_model
    lora_config = language_model.peft_config["default"]
    state_dict = get_peft_model_state_dict(language_model, adapter_name="default")
    model.unload_lora(merge=False)
    return lora_config, {key: tensor.detach().contiguous() for key, tensor in state_dict.items()}


def save_lora_adapter(lora_config, state_dict: Mapping[str, torch.Tensor], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lora_config.save_pretrained(directory)
    save_file(dict(state_dict), directory / SAFETENSORS_WEIGHTS_NAME, metadata={"format": "pt"})


def read_structured_file(path: str | None) -> dict | None:
    """A JSON or YAML file as a dict (YAML is a superset of JSON)."""
    if path is None:
        return None
    content = yaml.safe_load(Path(path).read_text())
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a mapping at its top level.")
    return content


def prepare_folder(
    model: SaladForConditionalGeneration,
    processor: SaladProcessor,
    folder: str | Path,
    args: PushArguments,
) -> list[Path]:
    """Write everything that gets uploaded into `folder` and return the files, sorted.

    The model is modified in place when it has LoRA layers (merged, or split off into `lora/`).
    """
    folder = Path(folder)
    results = read_structured_file(args.results)
    recipe = read_structured_file(args.training_recipe)
    lora_subfolder = None
    if model.has_lora():
        if args.merge_lora:
            model.merge_lora()
        else:
            save_lora_adapter(*split_lora(model), folder / LORA_SUBFOLDER)
            lora_subfolder = LORA_SUBFOLDER
    model.save_pretrained(folder, max_shard_size=args.max_shard_size)
    processor.save_pretrained(folder)
    card = build_model_card(
        args.repo_id,
        model.config,
        base_model=args.base_model or infer_base_models(model.config),
        results=results,
        training_recipe=recipe,
        datasets=args.datasets,
        license=args.license,
        language=args.language,
        tags=args.tags,
        lora_subfolder=lora_subfolder,
    )
    card.save(folder / "README.md")
    if results is not None:
        (folder / RESULTS_PATH_IN_REPO).parent.mkdir(parents=True, exist_ok=True)
        (folder / RESULTS_PATH_IN_REPO).write_text(json.dumps(results, indent=2) + "\n")
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    pickled = [path.name for path in files if path.suffix in PICKLE_SUFFIXES]
    if pickled:
        raise ValueError(f"Refusing to publish pickle files {pickled}: weights go out as safetensors only.")
    return files


# ------------------------------------------------------------------------------------------------ upload
def deletions(api: HfApi, args: PushArguments, keep: set[str]) -> list[CommitOperationDelete]:
    """Remote files matching `--delete_patterns`, except those this commit overwrites and `.gitattributes`."""
    if not args.delete_patterns:
        return []
    remote = api.list_repo_files(args.repo_id, revision=args.revision)
    matched = filter_repo_objects(remote, allow_patterns=args.delete_patterns)
    return [
        CommitOperationDelete(path_in_repo=path)
        for path in matched
        if path != ".gitattributes" and path not in keep
    ]


def upload(folder: Path, files: list[Path], args: PushArguments, api: HfApi | None = None) -> CommitInfo:
    """Create the repository (and branch) when missing and upload `files` in a single commit.

    `upload_folder` is not used: with hf_xet installed it may split large folders into several commits, and
    a published model should appear (or not) in one piece.
    """
    api = api or HfApi()
    api.create_repo(args.repo_id, private=args.private, exist_ok=True)
    if args.revision and args.revision != "main" and not args.revision.startswith("refs/pr/"):
        api.create_branch(args.repo_id, branch=args.revision, exist_ok=True)
    additions = [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=path)
        for path in files
    ]
    operations = [*deletions(api, args, {op.path_in_repo for op in additions}), *additions]
    return api.create_commit(
        args.repo_id,
        operations,
        commit_message=args.commit_message,
        revision=args.revision,
        create_pr=args.create_pr,
    )


def _size(files: list[Path]) -> str:
    return f"{sum(path.stat().st_size for path in files) / 1e6:.1f} MB"


def push(args: PushArguments) -> CommitInfo | None:
    """Load the checkpoint, write the folder, and upload it (or, for a dry run, leave it in `args.dry_run`)."""
    if args.dry_run is None and get_token() is None:
        raise ValueError("Not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN.")
    if args.dry_run is not None and Path(args.dry_run).exists() and any(Path(args.dry_run).iterdir()):
        raise ValueError(
            f"--dry_run {args.dry_run} is not empty: it must hold exactly what would be uploaded."
        )
    model, processor = load_checkpoint(args.model_name_or_path, args.lora_alpha)
    if args.dry_run is not None:
        folder = Path(args.dry_run)
        files = prepare_folder(model, processor, folder, args)
        print(f"Dry run: wrote {len(files)} files ({_size(files)}) to {folder}; nothing was uploaded.")
        print(f"Check it with: python -m hub_scripts.verify --source {folder}")
        return None
    with tempfile.TemporaryDirectory(prefix="salad-push-") as staging:
        files = prepare_folder(model, processor, staging, args)
        size = _size(files)
        commit = upload(Path(staging), files, args)
    print(f"Uploaded {len(files)} files ({size}) in one commit: {commit.commit_url}")
    if commit.pr_url:
        print(f"Pull request: {commit.pr_url}")
    print(f"Check it with: python -m hub_scripts.verify --source {args.repo_id} --revision {commit.oid}")
    return commit


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((PushArguments,)).parse_args_and_config(args=argv)
    push(args)


if __name__ == "__main__":
    main()
