"""`salad-push`: publish a SALAD checkpoint to the Hugging Face Hub in one commit, with its model card.

    salad-push --model_name_or_path runs/my-salad --repo_id me/salad-smollm2 --results runs/eval/results.json
    salad-push --model_name_or_path runs/my-salad --repo_id me/salad-smollm2 --dry_run /tmp/to-upload
    salad-push --config configs/push.yaml --create_pr          # flags override the YAML's values
    salad-push --model_name_or_path runs/my-salad --repo_id me/salad-smollm2 --space_id me/salad-demo

What is uploaded is a folder written here first: weights re-saved as safetensors (sharded past
`--max_shard_size`, with an index), config and generation config, processor, the remote code and custom
pipeline that `save_pretrained` writes, the model card (`README.md`) and, when given, the gap harness's
`results.json` under `eval/`. `--dry_run DIR` writes exactly that folder to DIR and uploads nothing; without it
the folder goes up as a single commit (`create_repo`, then `create_commit`), to a branch (`--revision`) or as a
pull request (`--create_pr`). Remote files are never deleted unless `--delete_patterns` names them.

The token comes from `hf auth login` or the `HF_TOKEN` environment variable, as for every huggingface_hub
call; this script neither takes it as a flag (it would land in shell histories) nor prints it.

Space: `--space_id` also builds a Gradio Space that serves the model (`hub_scripts/space/folder.py`: `app.py`,
pinned `requirements.txt`, a README with Spaces front matter, spoken examples), links the model card to it, and
uploads it in one commit of its own after the model's. With `--dry_run DIR` it is written to `DIR-space`; there
`SALAD_MODEL=DIR python app.py` serves the dry-run model folder.

LoRA: a checkpoint whose LLM still holds LoRA layers (a Trainer `checkpoint-N` folder of a `train_llm=lora` run)
is merged into the LLM by default; `--no_merge_lora` keeps the LoRA apart as a PEFT adapter of the LLM in
`lora/`, with the original LLM weights at the top level (the LoRA settings come from the checkpoint's
`config.lora`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.utils import filter_repo_objects
from trl import TrlParser

from .publish_folder import FolderArguments, load_checkpoint, prepare_folder
from .space.folder import gradio_version, write_space_folder


@dataclass
class PushArguments(FolderArguments):
    """The folder's arguments plus where it comes from and how it goes up."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "SALAD checkpoint folder: a save_pretrained output or a Trainer checkpoint-N folder."
        },
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
    space_num_examples: int = field(
        default=4,
        metadata={"help": "With --space_id: built-in questions spoken as the Space's examples (0 for none)."},
    )

    def __post_init__(self):
        if not self.model_name_or_path:
            raise ValueError("--model_name_or_path is required: the SALAD checkpoint folder to publish.")
        super().__post_init__()
        if self.space_id is not None:
            self.check_space()

    def check_space(self) -> None:
        """Before anything is written or uploaded: the Space loads the model's main branch, merged, with the
        Gradio installed here."""
        if self.revision not in (None, "main") or self.create_pr:
            raise ValueError(
                "--space_id serves the model from its main branch, and this push goes to a branch or a pull "
                "request: push the model to main first, or leave --space_id out."
            )
        if not self.merge_lora:
            raise ValueError(
                "--space_id serves the model through its pipeline, which loads the top-level weights: with "
                "--no_merge_lora they lack the LoRA the adapter was trained with. Leave --no_merge_lora out."
            )
        gradio_version()


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


def additions(folder: Path, files: list[Path]) -> list[CommitOperationAdd]:
    """`files` of `folder`, added at their paths relative to it."""
    return [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=path)
        for path in files
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
    added = additions(folder, files)
    operations = [*deletions(api, args, {op.path_in_repo for op in added}), *added]
    return api.create_commit(
        args.repo_id,
        operations,
        commit_message=args.commit_message,
        revision=args.revision,
        create_pr=args.create_pr,
    )


def upload_space(
    folder: Path, files: list[Path], args: PushArguments, api: HfApi | None = None
) -> CommitInfo:
    """Create the Gradio Space when missing and upload its folder in a single commit to its main branch."""
    api = api or HfApi()
    api.create_repo(args.space_id, repo_type="space", space_sdk="gradio", private=args.private, exist_ok=True)
    return api.create_commit(
        args.space_id,
        additions(folder, files),
        commit_message=f"Serve {args.repo_id} (salad-push)",
        repo_type="space",
    )


def space_dry_run_folder(dry_run: str) -> Path:
    """Where a dry run writes the Space: beside the model's folder, named after it."""
    path = Path(dry_run).resolve()
    return path.with_name(f"{path.name}-space")


def _size(files: list[Path]) -> str:
    return f"{sum(path.stat().st_size for path in files) / 1e6:.1f} MB"


def push(args: PushArguments) -> CommitInfo | None:
    """Load the checkpoint, write the folder, and upload it (or, for a dry run, leave it in `args.dry_run`)."""
    if args.dry_run is None and get_token() is None:
        raise ValueError("Not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN.")
    if args.dry_run is not None:
        targets = [Path(args.dry_run)] + ([space_dry_run_folder(args.dry_run)] if args.space_id else [])
        for target in targets:
            if target.exists() and any(target.iterdir()):
                raise ValueError(
                    f"{target} is not empty: a dry run writes exactly what would be uploaded into empty folders."
                )
    model, processor = load_checkpoint(args.model_name_or_path)
    if args.dry_run is not None:
        folder = Path(args.dry_run)
        files = prepare_folder(model, processor, folder, args)
        print(f"Dry run: wrote {len(files)} files ({_size(files)}) to {folder}; nothing was uploaded.")
        print(f"Check it with: python -m hub_scripts.verify --source {folder}")
        if args.space_id:
            space = space_dry_run_folder(args.dry_run)
            files = write_space_folder(space, args.repo_id, args.space_id, args.space_num_examples)
            print(f"Dry run: wrote the Space's {len(files)} files ({_size(files)}) to {space}.")
            print(f"Try it with: cd {space} && SALAD_MODEL={folder.resolve()} python app.py")
        return None
    with tempfile.TemporaryDirectory(prefix="salad-push-") as staging:
        files = prepare_folder(model, processor, staging, args)
        size = _size(files)
        commit = upload(Path(staging), files, args)
    print(f"Uploaded {len(files)} files ({size}) in one commit: {commit.commit_url}")
    if commit.pr_url:
        print(f"Pull request: {commit.pr_url}")
    print(f"Check it with: python -m hub_scripts.verify --source {args.repo_id} --revision {commit.oid}")
    if args.space_id:
        with tempfile.TemporaryDirectory(prefix="salad-space-") as staging:
            files = write_space_folder(staging, args.repo_id, args.space_id, args.space_num_examples)
            space_commit = upload_space(Path(staging), files, args)
        print(f"Uploaded the Space ({len(files)} files) in one commit: {space_commit.commit_url}")
    return commit


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((PushArguments,)).parse_args_and_config(args=argv)
    push(args)


if __name__ == "__main__":
    main()
