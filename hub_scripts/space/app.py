"""Ask a SALAD speech LLM aloud in the browser: a Gradio app on its `salad-speech-to-text` pipeline.

This one file runs in two places:
- here, through `python -m hub_scripts.space --model embedded:salad` (or a folder, or a Hub id), which builds the
  pipeline from the installed salad and speaks a few built-in questions as examples;
- as the `app.py` of a Hugging Face Space that `salad-push --space_id` builds. There it imports nothing from salad:
  the model is the first of `models:` in the Space's README (`$SALAD_MODEL` overrides it), its own remote code
  (`trust_remote_code=True`) brings the pipeline, and the examples lie in `examples/`.

The audio goes to the pipeline as a file, so that decoding, down-mixing, resampling and every refusal (a file that
is not audio, a silent or too long clip) are the pipeline's own, shown to the user as its message says them.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
from huggingface_hub import RepoCard
from transformers import Pipeline, TextIteratorStreamer, pipeline

TASK = "salad-speech-to-text"
DEFAULT_INSTRUCTION = "Answer briefly."
MAX_NEW_TOKENS = 64
# A Space runs on shared CPUs: a question is seconds long, and a minute is far past any of them.
MAX_AUDIO_SECONDS = 60.0
# A microphone that records nothing gives digital silence; speech peaks tens of decibels higher.
MIN_PEAK_DBFS = -60.0
EXAMPLES_FILE = Path("examples") / "examples.json"


def hears_transcript(pipe: Pipeline) -> bool:
    """Whether the model transcribes inside itself (a `"whisper_decoder"` adapter), so that the app can show what
    it heard."""
    return pipe.model.config.adapter_type == "whisper_decoder"


def answer_stream(
    pipe: Pipeline, audio: str | None, instruction: str, max_new_tokens: int = MAX_NEW_TOKENS
) -> Iterator[tuple[str, str]]:
    """The answer to a spoken question as it is generated, then in full with the transcript the model read.

    Yields `(answer so far, transcript)`; the transcript is empty until the last yield, and always for models
    that write none. The last answer is the pipeline's own output for the clip. The pipeline's refusals become
    `gr.Error`s with its message."""
    if audio is None:
        raise gr.Error("No audio yet: record a question or upload a recording, then press Answer.")
    streamer = TextIteratorStreamer(pipe.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    outcome: dict = {}

    def generate() -> None:
        try:
            outcome["answer"] = pipe(
                audio,
                prompt=instruction.strip() or None,
                max_new_tokens=max_new_tokens,
                return_transcript=hears_transcript(pipe),
                max_audio_seconds=MAX_AUDIO_SECONDS,
                min_peak_dbfs=MIN_PEAK_DBFS,
                generate_kwargs={"streamer": streamer},
            )
        except Exception as error:  # handed to the caller's thread below
            outcome["error"] = error
            streamer.end()

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    partial = ""
    for piece in streamer:
        partial += piece
        yield partial, ""
    worker.join()
    if "error" in outcome:
        if isinstance(outcome["error"], ValueError):
            raise gr.Error(str(outcome["error"]))
        raise outcome["error"]
    yield outcome["answer"]["generated_text"], outcome["answer"].get("transcript", "")


def load_examples(folder: str | Path) -> list[dict]:
    """The rows of `examples/examples.json` under `folder` (`audio`, `instruction`, `question`, ...), each `audio`
    made a path; none when there is no such file."""
    path = Path(folder) / EXAMPLES_FILE
    if not path.is_file():
        return []
    return [{**row, "audio": str(Path(folder) / row["audio"])} for row in json.loads(path.read_text())]


def build_demo(pipe: Pipeline, model_name: str, examples: list[dict] = ()) -> gr.Blocks:
    """The page: a recording (microphone or file) and an instruction in; the answer, streamed, and what the model
    heard out. `examples` are rows of `load_examples`, each labelled with its question."""
    with gr.Blocks(title=f"SALAD: ask {model_name} aloud") as demo:
        gr.Markdown(
            f"# Ask `{model_name}` aloud\n"
            "Record a question or upload a recording, add an instruction if you like, and press **Answer**. "
            "The model hears the audio itself: there is no separate speech recognizer in front of it."
        )
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(
                    sources=["microphone", "upload"],
                    type="filepath",
                    label="Your question",
                    elem_id="question",
                )
                instruction = gr.Textbox(value=DEFAULT_INSTRUCTION, label="Instruction", lines=2)
                submit = gr.Button("Answer", variant="primary")
            with gr.Column():
                answer = gr.Textbox(label="Answer", lines=4, interactive=False, elem_id="answer")
                transcript = gr.Textbox(
                    label="What the model heard (Whisper's decoder, inside the model)",
                    lines=2,
                    interactive=False,
                    visible=hears_transcript(pipe),
                    elem_id="transcript",
                )
        if examples:
            gr.Examples(
                examples=[[row["audio"], row["instruction"]] for row in examples],
                inputs=[audio, instruction],
                example_labels=[row.get("question", Path(row["audio"]).name) for row in examples],
                label="Built-in questions, spoken by a voice the model never trained on",
                elem_id="examples",
            )

        def respond(clip: str | None, text: str) -> Iterator[tuple[str, str]]:
            yield from answer_stream(pipe, clip, text)

        submit.click(respond, inputs=[audio, instruction], outputs=[answer, transcript], api_name="answer")
    return demo


def space_model(card: str | Path = "README.md") -> str:
    """The model a Space serves: `$SALAD_MODEL`, else the first of `models:` in its README's front matter."""
    if os.environ.get("SALAD_MODEL"):
        return os.environ["SALAD_MODEL"]
    models = RepoCard.load(card).data.models if Path(card).is_file() else None
    if not models:
        raise ValueError(
            f"No model to serve: set SALAD_MODEL, or list the model under `models:` in {card}'s front matter."
        )
    return models[0]


def main() -> None:
    """The Space's entry point (`python app.py` in the Space folder)."""
    model = space_model()
    pipe = pipeline(TASK, model=model, trust_remote_code=True)
    build_demo(pipe, model, load_examples(Path(__file__).parent)).queue().launch()


if __name__ == "__main__":
    main()
