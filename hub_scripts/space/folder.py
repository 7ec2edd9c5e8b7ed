"""The folder of a Hugging Face Space that serves a SALAD model: `salad-push --space_id` writes and uploads it.

    app.py                  hub_scripts/space/app.py as it is: the Gradio app, with no salad import
    requirements.txt        the libraries the model's remote code runs on, pinned to the versions it was saved with
    README.md               Spaces front matter (sdk: gradio, its version, app_file, models: the model)
    examples/               a few built-in questions spoken by a voice the model never trained on, and their options

The Space runs the remote code published with the model (`trust_remote_code=True`), so it needs no salad release.
"""

from __future__ import annotations

import json
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import soundfile
from huggingface_hub import SpaceCard, SpaceCardData

from eval.speech import synthesize_items
from eval.tasks import MultipleChoiceItem, evenly_spaced, load_offline_tasks
from trainers.tts import EngineNotFoundError

# The app is copied, not imported: building a Space folder needs no gradio, only its version for the front matter.
APP_SOURCE = Path(__file__).with_name("app.py")
# Where app.py looks for its examples (its `EXAMPLES_FILE`; a test checks that the two agree).
EXAMPLES_DIR = "examples"
# What the model's remote code and the app import; gradio itself comes with the Space's sdk_version.
REQUIREMENTS = ("torch", "transformers", "numpy", "scipy", "soundfile")
# The held-out voices of the harness (README, "The embedded default"): the first one installed speaks.
EXAMPLE_VOICES = (("flite", "slt"), ("espeak-ng", "en-us"))
EXAMPLES_SAMPLING_RATE = 16_000


def requirements() -> str:
    """`requirements.txt`: each library pinned to the version installed here (a local build tag such as torch's
    `+cpu` dropped, so that the Space's pip finds it on PyPI)."""
    return "".join(f"{name}=={version(name).split('+')[0]}\n" for name in REQUIREMENTS)


def example_instruction(item: MultipleChoiceItem) -> str:
    """The instruction that goes with a spoken question: its options, which the audio does not say."""
    return f"Options: {'; '.join(item.options)}. Answer with one of them."


def speak_examples(folder: str | Path, count: int = 4) -> list[dict]:
    """`count` questions of the built-in task set, from different domains, spoken by the first held-out voice that
    is installed, as WAV files in `folder/examples/` with `examples.json`; none (and a note) when no voice is."""
    items = evenly_spaced(load_offline_tasks(), count)
    for backend, voice in EXAMPLE_VOICES:
        try:
            clips = synthesize_items(items, EXAMPLES_SAMPLING_RATE, backend=backend, voice=voice)
        except EngineNotFoundError:
            continue
        break
    else:
        print(f"No held-out TTS voice is installed ({EXAMPLE_VOICES}): the Space gets no examples.")
        return []
    directory = Path(folder) / EXAMPLES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for item, clip in zip(items, clips):
        soundfile.write(directory / f"{item.id}.wav", clip, EXAMPLES_SAMPLING_RATE, subtype="PCM_16")
        rows.append(
            {
                "audio": f"{EXAMPLES_DIR}/{item.id}.wav",
                "instruction": example_instruction(item),
                "question": item.question,
                "options": list(item.options),
                "answer": item.options[item.answer],
                "voice": f"{backend}/{voice}",
            }
        )
    (directory / "examples.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def gradio_version() -> str:
    """The Gradio the Space runs on (`sdk_version`): the one installed here, where the app was tested."""
    try:
        return version("gradio")
    except PackageNotFoundError:
        raise ValueError(
            "A Space pins the Gradio it runs on, and Gradio is not installed: pip install 'salad-speech[space]'."
        ) from None


def space_card(model_id: str, space_id: str) -> SpaceCard:
    """The Space's README: its front matter and what the page does."""
    data = SpaceCardData(
        title=f"SALAD: {model_id.split('/')[-1]}"[:30],  # the Hub caps a Space's title at 30 characters
        sdk="gradio",
        sdk_version=gradio_version(),
        # the pins above need the Python they were installed on (the Hub's default may be older)
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        app_file="app.py",
        models=[model_id],
        tags=["salad", "speech", "audio-text-to-text"],
        short_description="Ask a SALAD speech LLM aloud",
    )
    body = (
        f"# Ask [{model_id}](https://huggingface.co/{model_id}) aloud\n\n"
        "Record a question (or upload a recording) and read the answer as the model writes it. The model hears the "
        "audio itself; for models whose adapter reads Whisper's decoder, the page also shows what it heard.\n\n"
        f"Built by `salad-push --space_id {space_id}`; the app is `app.py`, and the model's own remote code "
        "(`trust_remote_code=True`) runs it.\n"
    )
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def write_space_folder(folder: str | Path, model_id: str, space_id: str, num_examples: int = 4) -> list[Path]:
    """Write the Space that serves `model_id` into the empty `folder` and return its files, sorted."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(APP_SOURCE, folder / "app.py")
    (folder / "requirements.txt").write_text(requirements())
    space_card(model_id, space_id).save(folder / "README.md")
    if num_examples:
        speak_examples(folder, num_examples)
    return sorted(path for path in folder.rglob("*") if path.is_file())


__all__ = ["gradio_version", "requirements", "space_card", "speak_examples", "write_space_folder"]
