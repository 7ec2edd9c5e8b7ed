"""`salad-push` against huggingface_hub's real API functions, with the HTTP layer intercepted.

No live Hub is reachable here, so `FakeHub` answers the endpoints a push and a download use (repo creation,
branch, tree listing, YAML validation, preupload, LFS batch and upload, commit, file resolution) as an
`httpx2.MockTransport` behind huggingface_hub's own client factory: everything above the transport (payloads,
headers, LFS hashing, the ndjson commit) is the library's real code. What it cannot show: server-side
validation and rate limits, Xet storage (disabled here; the Hub serves LFS clients too), and real permissions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import shutil

import httpx2
import pytest
import torch
from conftest import OTHER_INSTANCE_ULPS, OTHER_PATH_ULPS, assert_close_in_dtype, build_tiny, tone
from huggingface_hub import constants
from huggingface_hub.utils import _http

from hub_scripts import publish_folder
from hub_scripts import push as push_module
from hub_scripts import verify as verify_module
from modeling_salad import SaladForConditionalGeneration

SECRET = "hf_TestTokenThatMustNeverBePrinted0123"
REPO = "someone/salad-tiny"


class FakeHub:
    """The Hub endpoints huggingface_hub calls for a push and a snapshot download, in memory."""

    def __init__(self):
        self.requests: list[httpx2.Request] = []
        self.files: dict[str, bytes] = {".gitattributes": b"*.safetensors filter=lfs\n"}
        self.space_files: dict[str, bytes] = {}
        self.commits: list[dict] = []
        self.snapshots: dict[str, dict[str, bytes]] = {}
        self.lfs: dict[str, bytes] = {}

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        path = request.url.path
        routes = [
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", r"/api/models/[^/]+/[^/]+/branch/.+", lambda r: httpx2.Response(200, json={})),
            (
                "POST",
                r"/api/validate-yaml",
                lambda r: httpx2.Response(200, json={"errors": [], "warnings": []}),
            ),
            ("POST", r"/api/(models|spaces)/[^/]+/[^/]+/preupload/.+", self.preupload),
            ("POST", r"(/spaces)?/[^/]+/[^/]+\.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]+)", self.lfs_upload),
            ("POST", r"/api/(?P<kind>models|spaces)/[^/]+/[^/]+/commit/.+", self.commit),
            ("GET", r"/api/models/[^/]+/[^/]+/tree/(?P<revision>[^/]+)", self.tree),
            ("HEAD", r"/[^/]+/[^/]+/resolve/(?P<revision>[^/]+)/(?P<file>.+)", self.resolve),
            ("GET", r"/[^/]+/[^/]+/resolve/(?P<revision>[^/]+)/(?P<file>.+)", self.resolve),
        ]
        for method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if request.method == method and match:
                return handler(request, **match.groupdict())
        return httpx2.Response(404, json={"error": f"FakeHub has no route for {request.method} {path}"})

    def create_repo(self, request):
        body = json.loads(request.content)
        if body.get("type") == "space":
            space = f"{body['organization']}/{body['name']}"
            return httpx2.Response(200, json={"url": f"{constants.ENDPOINT}/spaces/{space}", "name": space})
        return httpx2.Response(200, json={"url": f"{constants.ENDPOINT}/{REPO}", "name": REPO})

    def preupload(self, request):
        files = json.loads(request.content)["files"]
        modes = [
            {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular"}
            for f in files
        ]
        return httpx2.Response(200, json={"files": [{**mode, "shouldIgnore": False} for mode in modes]})

    def lfs_batch(self, request):
        objects = json.loads(request.content)["objects"]
        actions = [
            {**obj, "actions": {"upload": {"href": f"{constants.ENDPOINT}/lfs-upload/{obj['oid']}"}}}
            for obj in objects
        ]
        return httpx2.Response(200, json={"transfer": "basic", "objects": actions})

    def lfs_upload(self, request, oid):
        content = request.content
        assert hashlib.sha256(content).hexdigest() == oid
        self.lfs[oid] = content
        return httpx2.Response(200)

    def commit(self, request, kind="models"):
        lines = [json.loads(line) for line in request.content.splitlines()]
        commit = {
            "header": lines[0]["value"],
            "params": dict(request.url.params),
            "ops": lines[1:],
            "kind": kind,
        }
        files = self.space_files if kind == "spaces" else self.files
        for op in commit["ops"]:
            value = op["value"]
            if op["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif op["key"] == "lfsFile":
                files[value["path"]] = self.lfs[value["oid"]]
            elif op["key"] == "deletedFile":
                del files[value["path"]]
        self.commits.append(commit)
        if kind == "spaces":
            space = "/".join(request.url.path.split("/")[3:5])
            url = f"{constants.ENDPOINT}/spaces/{space}/commit/{'1' * 40}"
            return httpx2.Response(200, json={"commitUrl": url, "commitOid": "1" * 40})
        oid = hashlib.sha1(json.dumps(sorted(self.files)).encode() + bytes(len(self.commits))).hexdigest()
        self.snapshots[oid] = dict(self.files)
        pr = {"pullRequestUrl": f"{constants.ENDPOINT}/{REPO}/discussions/1"} if commit["params"] else {}
        return httpx2.Response(
            200, json={"commitUrl": f"{constants.ENDPOINT}/{REPO}/commit/{oid}", "commitOid": oid, **pr}
        )

    def _snapshot(self, revision):
        return self.snapshots.get(revision, self.files)

    def tree(self, request, revision):
        entries = [
            {"type": "file", "path": path, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}
            for path, content in sorted(self._snapshot(revision).items())
        ]
        return httpx2.Response(200, json=entries)

    def resolve(self, request, revision, file):
        content = self._snapshot(revision)[file]
        headers = {
            constants.HUGGINGFACE_HEADER_X_REPO_COMMIT: revision,
            "ETag": f'"{hashlib.sha1(content).hexdigest()}"',
            "Content-Length": str(len(content)),
        }
        return httpx2.Response(200, headers=headers, content=b"" if request.method == "HEAD" else content)

    def calls(self, method: str, pattern: str) -> list[httpx2.Request]:
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.url.path)]


@pytest.fixture
def fake_hub(monkeypatch):
    """Route huggingface_hub's HTTP client to a FakeHub, online, with a token in the environment."""
    hub = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    _http.set_client_factory(
        lambda: httpx2.Client(
            transport=httpx2.MockTransport(hub.handle),
            event_hooks={"request": [_http.hf_request_event_hook]},
            follow_redirects=True,
        )
    )
    yield hub
    _http.set_client_factory(_http.default_client_factory)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, processor = build_tiny("whisper", "transformer")
    path = tmp_path_factory.mktemp("checkpoint")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def results_file(tmp_path_factory):
    from test_model_card import fake_results

    path = tmp_path_factory.mktemp("eval") / "results.json"
    path.write_text(json.dumps(fake_results()))
    return path


def files_of(folder) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def committed(commit: dict) -> dict[str, str]:
    return {op["value"]["path"]: op["key"] for op in commit["ops"]}


def test_dry_run_writes_exactly_what_one_commit_uploads(checkpoint, results_file, fake_hub, tmp_path, capsys):
    args = ["--model_name_or_path", str(checkpoint), "--repo_id", REPO, "--results", str(results_file)]
    push_module.main([*args, "--dry_run", str(tmp_path / "dry")])
    assert fake_hub.requests == []  # a dry run talks to nobody
    dry = files_of(tmp_path / "dry")
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "README.md",
        "eval/results.json",
    } <= set(dry)
    assert {"modeling_salad.py", "pipeline_salad.py", "processing_salad.py", "configuration_salad.py"} <= set(
        dry
    )
    assert "processor_config.json" in dry and "tokenizer.json" in dry

    push_module.main(args)
    assert len(fake_hub.commits) == 1
    (commit,) = fake_hub.commits
    assert committed(commit) == {path: "lfsFile" if path.endswith(".safetensors") else "file" for path in dry}
    assert {path: fake_hub.files[path] for path in dry} == dry  # byte for byte what the dry run wrote
    assert commit["header"]["summary"] == "Upload SALAD model with salad-push"
    assert commit["params"] == {}  # not a PR
    assert len(fake_hub.calls("POST", r"/api/models/.*/commit/main")) == 1
    assert fake_hub.calls("GET", r"/api/models/.*/tree/.*") == []  # no deletions asked, no listing
    out = capsys.readouterr().out
    assert "in one commit" in out and "--revision" in out


def test_the_space_goes_up_in_one_commit_of_its_own_after_the_model(checkpoint, fake_hub, tmp_path):
    """`--space_id`: the model's commit, then the Space's (created as a Gradio Space), holding what a dry run
    writes to `DIR-space`, byte for byte; the model card links to it."""
    space = "someone/salad-demo"
    args = ["--model_name_or_path", str(checkpoint), "--repo_id", REPO, "--space_id", space]
    push_module.main([*args, "--space_num_examples", "0", "--dry_run", str(tmp_path / "dry")])
    assert fake_hub.requests == []
    dry_space = files_of(tmp_path / "dry-space")
    assert set(dry_space) == {"app.py", "requirements.txt", "README.md"}
    assert f"https://huggingface.co/spaces/{space}" in (tmp_path / "dry" / "README.md").read_text()

    push_module.main([*args, "--space_num_examples", "0"])
    assert [commit["kind"] for commit in fake_hub.commits] == ["models", "spaces"]
    assert fake_hub.space_files == dry_space
    assert "app.py" not in fake_hub.files
    created = [json.loads(r.content) for r in fake_hub.calls("POST", r"/api/repos/create")]
    assert created[-1]["type"] == "space" and created[-1]["sdk"] == "gradio"
    assert created[-1]["name"] == space.split("/")[1] and created[-1]["organization"] == space.split("/")[0]


def test_flags_reach_the_hub(checkpoint, fake_hub, tmp_path):
    push_module.main(
        ["--model_name_or_path", str(checkpoint), "--repo_id", REPO, "--private", "--revision", "v1",
         "--create_pr", "--commit_message", "Add the tiny model"]
    )  # fmt: skip
    (create,) = fake_hub.calls("POST", r"/api/repos/create")
    assert json.loads(create.content) == {
        "name": "salad-tiny",
        "organization": "someone",
        "visibility": "private",
    }
    assert [r.url.path for r in fake_hub.calls("POST", r".*/branch/.*")] == [f"/api/models/{REPO}/branch/v1"]
    (commit_request,) = fake_hub.calls("POST", r"/api/models/.*/commit/.*")
    assert commit_request.url.path == f"/api/models/{REPO}/commit/v1"
    (commit,) = fake_hub.commits
    assert commit["params"] == {"create_pr": "1"} and commit["header"]["summary"] == "Add the tiny model"


def test_remote_files_are_deleted_only_when_asked(checkpoint, fake_hub):
    fake_hub.files.update(
        {"old-00001-of-00002.safetensors": b"x", "pytorch_model.bin": b"y", "notes.txt": b"z"}
    )
    args = ["--model_name_or_path", str(checkpoint), "--repo_id", REPO]
    push_module.main(args)
    assert "deletedFile" not in committed(fake_hub.commits[0]).values()
    assert {"old-00001-of-00002.safetensors", "pytorch_model.bin", "notes.txt"} <= set(fake_hub.files)

    push_module.main([*args, "--delete_patterns", "*.safetensors", "*.bin", ".gitattributes"])
    operations = committed(fake_hub.commits[1])
    deleted = {path for path, key in operations.items() if key == "deletedFile"}
    assert deleted == {
        "old-00001-of-00002.safetensors",
        "pytorch_model.bin",
    }  # not .gitattributes, not re-added
    assert operations["model.safetensors"] == "lfsFile"
    assert "notes.txt" in fake_hub.files and ".gitattributes" in fake_hub.files


def test_token_is_used_but_never_printed(checkpoint, fake_hub, capfd, caplog):
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_debug()
    try:
        with caplog.at_level(logging.DEBUG):
            push_module.main(["--model_name_or_path", str(checkpoint), "--repo_id", REPO])
    finally:
        hub_logging.set_verbosity_warning()
    assert all(r.headers["authorization"] == f"Bearer {SECRET}" for r in fake_hub.calls("POST", r"/api/.*"))
    out, err = capfd.readouterr()
    assert SECRET not in out + err + caplog.text
    assert "(authenticated: True)" in caplog.text  # huggingface_hub's debug log of each request was captured


def test_push_without_login_fails_before_loading(checkpoint, fake_hub, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(ValueError, match="hf auth login"):
        push_module.main(["--model_name_or_path", str(checkpoint), "--repo_id", REPO])
    assert fake_hub.requests == []


def test_pushed_commit_downloads_at_its_pinned_revision(checkpoint, fake_hub, tmp_path):
    args = push_module.PushArguments(model_name_or_path=str(checkpoint), repo_id=REPO)
    commit = push_module.push(args)
    pushed = dict(fake_hub.files)
    fake_hub.files["README.md"] = b"moved on after the push"  # main moves; the pinned commit must not
    folder = verify_module.fetch(REPO, commit.oid, tmp_path / "download")
    downloaded = {p: c for p, c in files_of(folder).items() if not p.startswith(".cache/")}
    assert downloaded == pushed
    with pytest.raises(ValueError, match="full commit hash"):
        verify_module.fetch(REPO, "main", tmp_path / "branch")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"repo_id": "no-namespace"}, "--repo_id must be 'namespace/name'"),
        ({"model_name_or_path": None}, "model_name_or_path"),
        ({"space_id": "no-namespace"}, "--space_id must be 'namespace/name'"),
        ({"space_id": "someone/demo", "create_pr": True}, "serves the model from its main branch"),
        ({"space_id": "someone/demo", "revision": "dev"}, "serves the model from its main branch"),
        ({"space_id": "someone/demo", "merge_lora": False}, "lack the LoRA"),
    ],
)
def test_arguments_are_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        push_module.PushArguments(**{"model_name_or_path": "x", "repo_id": REPO, **overrides})


def test_dry_run_refuses_a_non_empty_folder(checkpoint, tmp_path):
    (tmp_path / "stale.txt").write_text("left over")
    with pytest.raises(ValueError, match="not empty"):
        push_module.main(
            ["--model_name_or_path", str(checkpoint), "--repo_id", REPO, "--dry_run", str(tmp_path)]
        )


def test_small_max_shard_size_shards_with_an_index(checkpoint, tmp_path):
    push_module.main(
        ["--model_name_or_path", str(checkpoint), "--repo_id", REPO, "--dry_run", str(tmp_path / "dry"),
         "--max_shard_size", "100KB"]
    )  # fmt: skip
    folder = tmp_path / "dry"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    assert all(p.stat().st_size <= 100_000 for p in folder.glob("*.safetensors"))
    assert all(check.passed for check in verify_module.check_weights(folder))
    reloaded = SaladForConditionalGeneration.from_pretrained(folder)
    original = SaladForConditionalGeneration.from_pretrained(checkpoint)
    for (name, a), (_, b) in zip(reloaded.state_dict().items(), original.state_dict().items()):
        assert torch.equal(a, b), name  # bitwise: the stored weights


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory):
    """A tiny model with trained-looking (non-zero) LoRA on its LLM, saved as a Trainer checkpoint would be."""
    from peft import LoraConfig

    model, processor = build_tiny("whisper", "mlp", seed=1)
    model.add_lora_to_language_model(LoraConfig(r=4, lora_alpha=8))
    torch.manual_seed(1)
    for layer in model._lora_layers():
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.2)
    path = tmp_path_factory.mktemp("lora-checkpoint")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    inputs = processor(text="Hear <|audio|> now", audio=tone(0.5))
    with torch.no_grad():
        logits = model(**inputs).logits
        model.set_lora_enabled(False)
        base_logits = model(**inputs).logits
    return path, inputs, logits, base_logits


def test_lora_checkpoint_describes_itself(lora_checkpoint):
    """The checkpoint records its LoRA settings, so loading re-creates the layers: no flags needed."""
    path, inputs, logits, _ = lora_checkpoint
    model, _ = publish_folder.load_checkpoint(path)
    assert model.has_lora() and model.config.lora["r"] == 4 and model.config.lora["lora_alpha"] == 8
    with torch.no_grad():
        assert_close_in_dtype(model(**inputs).logits, logits, ulps=OTHER_INSTANCE_ULPS)


def test_lora_weights_without_their_settings_are_refused(lora_checkpoint, tmp_path):
    path, *_ = lora_checkpoint
    old = tmp_path / "old"
    shutil.copytree(path, old)
    config = json.loads((old / "config.json").read_text())
    del config["lora"]
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="records no LoRA settings"):
        push_module.main(
            ["--model_name_or_path", str(old), "--repo_id", REPO, "--dry_run", str(tmp_path / "d")]
        )


def test_lora_is_merged_by_default(lora_checkpoint, tmp_path):
    path, inputs, logits, _ = lora_checkpoint
    push_module.main(
        [
            "--model_name_or_path",
            str(path),
            "--repo_id",
            REPO,
            "--dry_run",
            str(tmp_path / "d"),
        ]
    )
    assert not (tmp_path / "d" / "lora").exists()
    merged = SaladForConditionalGeneration.from_pretrained(tmp_path / "d")
    assert not merged.has_lora()
    with torch.no_grad():
        assert_close_in_dtype(
            merged(**inputs).logits, logits, ulps=OTHER_PATH_ULPS
        )  # W + BA against W, then BA


def test_lora_kept_as_an_adapter_loads_back_exactly(lora_checkpoint, tmp_path):
    path, inputs, logits, base_logits = lora_checkpoint
    folder = tmp_path / "d"
    push_module.main(
        ["--model_name_or_path", str(path), "--repo_id", REPO, "--dry_run", str(folder),
         "--no_merge_lora"]
    )  # fmt: skip
    assert {"adapter_config.json", "adapter_model.safetensors"} == {
        p.name for p in (folder / "lora").iterdir()
    }
    model = SaladForConditionalGeneration.from_pretrained(folder)
    with torch.no_grad():
        assert_close_in_dtype(model(**inputs).logits, base_logits, ulps=OTHER_INSTANCE_ULPS)
        model.language_model.load_adapter(str(folder), adapter_kwargs={"subfolder": "lora"})
        assert_close_in_dtype(model(**inputs).logits, logits, ulps=OTHER_INSTANCE_ULPS)
    # `lora/` is a standard PEFT adapter folder of the published LLM: peft itself loads it
    from peft import PeftModel

    text = {"input_ids": inputs["input_ids"][:, :3]}
    tuned = SaladForConditionalGeneration.from_pretrained(path).language_model
    peft_llm = PeftModel.from_pretrained(
        SaladForConditionalGeneration.from_pretrained(folder).language_model, folder / "lora"
    )
    with torch.no_grad():
        assert_close_in_dtype(peft_llm(**text).logits, tuned(**text).logits, ulps=OTHER_INSTANCE_ULPS)
    assert 'subfolder": "lora"' in (folder / "README.md").read_text()


def test_yaml_config_gives_defaults_that_flags_override(checkpoint, tmp_path):
    config = tmp_path / "push.yaml"
    config.write_text(
        f"model_name_or_path: {checkpoint}\nrepo_id: someone/from-yaml\ndry_run: {tmp_path / 'dry'}\nlicense: mit\n"
    )
    push_module.main(["--config", str(config), "--repo_id", REPO])
    card = (tmp_path / "dry" / "README.md").read_text()
    assert "license: mit" in card and f'model="{REPO}"' in card
