"""The Space (`hub_scripts/space/`): the app answers as the pipeline does, through a real server and
`gradio_client`; it shows the pipeline's own refusals; the folder `salad-push --space_id --dry_run` writes launches
in a clean process that cannot import salad; and the page opens in headless Chromium where Chromium is installed."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
from conftest import BLOCK_SALAD_IMPORTS, build_tiny, decoder_tiny, tone
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from huggingface_hub import SpaceCard

from hub_scripts import push as push_module
from hub_scripts.space import app
from hub_scripts.space.folder import APP_SOURCE, REQUIREMENTS
from hub_scripts.space.screenshot import find_chromium
from modeling_salad import SaladForConditionalGeneration, SaladProcessor, SaladSpeechToTextPipeline
from modeling_salad.processing_salad import load_audio

INSTRUCTION = "Answer briefly."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_pipe():
    model, processor = decoder_tiny()
    return SaladSpeechToTextPipeline(model=model, processor=processor)


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "question.wav"
    soundfile.write(path, tone(1.2, seed=3), 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def served(tiny_pipe, question_wav):
    """The app on the tiny model, on a free local port, with one example."""
    examples = [{"audio": str(question_wav), "instruction": INSTRUCTION, "question": "What was asked?"}]
    demo = app.build_demo(tiny_pipe, "tiny", examples)
    _, url, _ = demo.queue().launch(
        server_port=free_port(),
        prevent_thread_lock=True,
        quiet=True,
        allowed_paths=[str(question_wav.parent)],
    )
    yield url
    demo.close()


def pipeline_answer(pipe, clip, **kwargs) -> tuple[str, str]:
    answer = pipe(
        clip, prompt=INSTRUCTION, max_new_tokens=app.MAX_NEW_TOKENS, return_transcript=True, **kwargs
    )
    return answer["generated_text"], answer["transcript"]


def test_the_app_answers_as_the_pipeline_does(served, tiny_pipe, question_wav):
    answer, heard = Client(served, verbose=False).predict(
        handle_file(str(question_wav)), INSTRUCTION, api_name="/answer"
    )
    assert (answer, heard) == pipeline_answer(tiny_pipe, str(question_wav))
    assert answer and heard  # the tiny model writes something for a tone: the comparison is not of two blanks


def test_a_browser_recording_in_stereo_at_48_khz_is_heard_as_the_pipeline_hears_it(
    served, tiny_pipe, question_wav, tmp_path
):
    mono, _ = soundfile.read(question_wav, dtype="float32")
    stereo_48k = np.stack(
        [load_audio(mono, 48000, 16000)] * 2, axis=1
    )  # [samples, channels], as a WAV holds it
    path = tmp_path / "browser.wav"
    soundfile.write(path, stereo_48k, 48000)
    answer = Client(served, verbose=False).predict(handle_file(str(path)), INSTRUCTION, api_name="/answer")
    assert tuple(answer) == pipeline_answer(tiny_pipe, {"array": stereo_48k.T, "sampling_rate": 48000})


@pytest.mark.parametrize(
    ("make_file", "message"),
    [
        (lambda path: soundfile.write(path, np.zeros(16000, np.int16), 16000), "The clip is silent"),
        (lambda path: soundfile.write(path, tone(61.0), 16000), "past the limit of 60 s"),
        (lambda path: path.write_text("not audio"), "Could not decode audio"),
    ],
    ids=["silence", "too-long", "not-audio"],
)
def test_the_app_shows_the_pipelines_refusals(served, tmp_path, make_file, message):
    path = tmp_path / "input.wav"
    make_file(path)
    with pytest.raises(AppError, match=message):
        Client(served, verbose=False).predict(handle_file(str(path)), INSTRUCTION, api_name="/answer")


def test_no_audio_is_an_error_that_says_what_to_do(served):
    with pytest.raises(AppError, match="record a question or upload"):
        Client(served, verbose=False).predict(None, INSTRUCTION, api_name="/answer")


def test_the_answer_streams_and_ends_as_the_pipelines(tiny_pipe, question_wav):
    steps = list(app.answer_stream(tiny_pipe, str(question_wav), INSTRUCTION))
    answers = [answer for answer, _ in steps]
    assert len(steps) > 2, "the answer came in one piece, not streamed"
    assert all(later.startswith(earlier) for earlier, later in zip(answers[:-2], answers[1:-1]))
    assert all(heard == "" for _, heard in steps[:-1])  # what the model heard comes with the full answer
    assert steps[-1] == pipeline_answer(tiny_pipe, str(question_wav))


def test_the_transcript_is_what_the_llm_read_and_leaves_the_answer_unchanged(tiny_pipe, question_wav):
    with_transcript = tiny_pipe(
        str(question_wav), prompt=INSTRUCTION, max_new_tokens=8, return_transcript=True
    )
    without = tiny_pipe(str(question_wav), prompt=INSTRUCTION, max_new_tokens=8)
    assert with_transcript["generated_text"] == without["generated_text"]
    inputs = tiny_pipe.processor(
        text="<|audio|>", audio=load_audio(str(question_wav), 16000), return_tensors="pt"
    )
    transcript = tiny_pipe.model.transcribe(inputs["input_features"], inputs["input_features_mask"])
    assert with_transcript["transcript"] == " ".join(tiny_pipe.model.adapter.transcript_texts(transcript))


@pytest.mark.parametrize("search", [{"num_beams": 2}, {"num_return_sequences": 2, "do_sample": True}])
def test_a_transcript_serves_one_sequence_and_a_wider_search_is_refused(tiny_pipe, question_wav, search):
    with pytest.raises(ValueError, match="one answer with one beam"):
        tiny_pipe(str(question_wav), max_new_tokens=2, return_transcript=True, generate_kwargs=search)


def test_a_model_that_writes_no_transcript_is_refused_one_and_the_app_hides_it(question_wav):
    model, processor = build_tiny("whisper", "mlp")
    pipe = SaladSpeechToTextPipeline(model=model, processor=processor)
    with pytest.raises(ValueError, match="needs a 'whisper_decoder' adapter"):
        pipe(str(question_wav), max_new_tokens=2, return_transcript=True)
    assert not app.hears_transcript(pipe)
    *_, (answer, heard) = app.answer_stream(pipe, str(question_wav), INSTRUCTION)
    assert (
        heard == ""
        and answer == pipe(str(question_wav), prompt=INSTRUCTION, max_new_tokens=64)["generated_text"]
    )


@pytest.mark.parametrize(
    ("peak_dbfs", "refused"), [(-59.0, False), (-61.0, True), (-np.inf, True)], ids=["-59", "-61", "zeros"]
)
def test_the_silence_threshold_is_the_peak_in_dbfs(tiny_pipe, peak_dbfs, refused):
    clip = np.sin(np.linspace(0, 200, 16000)).astype(np.float32)
    clip *= 10 ** (peak_dbfs / 20) / np.abs(clip).max() if np.isfinite(peak_dbfs) else 0.0
    call = lambda: tiny_pipe(  # noqa: E731
        {"array": clip, "sampling_rate": 16000}, max_new_tokens=1, min_peak_dbfs=-60.0
    )
    if refused:
        with pytest.raises(ValueError, match="The clip is silent"):
            call()
    else:
        assert isinstance(call()["generated_text"], str)


# ------------------------------------------------------------------------------------ the published Space
CLEAN_PROCESS = BLOCK_SALAD_IMPORTS + 'import runpy\nrunpy.run_path("app.py", run_name="__main__")\n'


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """`salad-push --dry_run DIR --space_id ...` on a tiny whisper_decoder checkpoint: (model folder, Space)."""
    model, processor = decoder_tiny()
    root = tmp_path_factory.mktemp("push")
    model.save_pretrained(root / "checkpoint")
    processor.save_pretrained(root / "checkpoint")
    push_module.main(
        [
            "--model_name_or_path", str(root / "checkpoint"), "--repo_id", "someone/salad-tiny",
            "--space_id", "someone/salad-tiny-demo", "--space_num_examples", "2", "--dry_run", str(root / "model"),
        ]
    )  # fmt: skip
    return root / "model", root / "model-space"


def test_the_dry_run_space_folder_is_complete(dry_run):
    model_folder, space = dry_run
    assert (space / "app.py").read_bytes() == APP_SOURCE.read_bytes()
    pins = dict(line.split("==") for line in (space / "requirements.txt").read_text().splitlines())
    assert set(pins) == set(REQUIREMENTS) and all(pins.values())
    card = SpaceCard.load(space / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.sdk_version
    assert card.data.models == ["someone/salad-tiny"]
    assert (
        card.data.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    )  # what the pins need
    assert "https://huggingface.co/spaces/someone/salad-tiny-demo" in (model_folder / "README.md").read_text()
    if not (space / app.EXAMPLES_FILE).is_file():
        pytest.skip("no held-out TTS voice (flite or espeak-ng) is installed: the Space got no examples")
    examples = app.load_examples(space)
    assert len(examples) == 2 and all(os.path.isfile(row["audio"]) for row in examples)
    assert all(option in examples[0]["instruction"] for option in examples[0]["options"])


def wait_for_app(url: str, process: subprocess.Popen, timeout: float = 240.0) -> Client:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app.py exited with {process.returncode}: {process.stderr.read()[-3000:]}")
        try:
            return Client(url, verbose=False)
        except Exception:  # not listening yet
            time.sleep(1.0)
    raise AssertionError(f"app.py did not serve {url} within {timeout:.0f} s")


def test_the_dry_run_space_launches_in_a_clean_process_and_answers(dry_run, question_wav, tmp_path):
    """As on the Hub: `python app.py` in the Space folder, without salad importable, on the model's remote code;
    its answer is the one salad's own pipeline gives on the published folder."""
    model_folder, space = dry_run
    port = free_port()
    env = {
        **os.environ,
        "SALAD_MODEL": str(model_folder),
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": "",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", CLEAN_PROCESS], cwd=space, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        client = wait_for_app(f"http://127.0.0.1:{port}/", process)
        answer = client.predict(handle_file(str(question_wav)), INSTRUCTION, api_name="/answer")
    finally:
        process.terminate()
        process.wait(timeout=30)
    model = SaladForConditionalGeneration.from_pretrained(model_folder).eval()
    pipe = SaladSpeechToTextPipeline(model=model, processor=SaladProcessor.from_pretrained(model_folder))
    assert tuple(answer) == pipeline_answer(pipe, str(question_wav))


# ------------------------------------------------------------------------------------------- the browser
def chromium_or_skip() -> str:
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed (`pip install -e .[dev]`)")
    try:
        return find_chromium()
    except FileNotFoundError as error:
        pytest.skip(f"{error} (`make test` installs it as root)")


def test_the_page_opens_in_headless_chromium(served):
    chromium = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(served)
        expect(page.locator("#question")).to_be_visible()
        assert page.title() == "SALAD: ask tiny aloud"
        expect(page.get_by_role("button", name="Record", exact=True)).to_be_visible()  # the microphone input
        expect(page.locator("#examples").get_by_text("What was asked?")).to_be_visible()
        browser.close()


def test_the_examples_file_names_what_each_example_asks(tmp_path):
    (tmp_path / "examples").mkdir()
    rows = [{"audio": "examples/a.wav", "instruction": "Options: x; y.", "question": "Q?"}]
    (tmp_path / app.EXAMPLES_FILE).write_text(json.dumps(rows))
    assert app.load_examples(tmp_path) == [{**rows[0], "audio": str(tmp_path / "examples" / "a.wav")}]
    assert app.load_examples(tmp_path / "nowhere") == []
