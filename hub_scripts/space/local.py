"""The Space's app, served here: `python -m hub_scripts.space --model embedded:salad` (or a folder, or a Hub id).

The pipeline is built from the installed salad (not from the checkpoint's remote code, as on the Hub), so the
same page serves `embedded:salad`, `embedded:untrained`, a training checkpoint or a published model. A few
built-in questions, spoken by a held-out voice, are the examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr
from trl import TrlParser

from modeling_salad import SaladSpeechToTextPipeline
from trainers.assets.models import cache_dir
from trainers.assets.registry import load_salad

from .app import build_demo, load_examples
from .folder import speak_examples


@dataclass
class SpaceArguments:
    model: str = field(
        default="embedded:salad",
        metadata={"help": "A SALAD checkpoint folder, a Hub id, `embedded:salad` or `embedded:untrained`."},
    )
    host: str = field(
        default="127.0.0.1", metadata={"help": "Address to serve on (0.0.0.0 for every interface)."}
    )
    port: int | None = field(
        default=None, metadata={"help": "Port to serve on (default: Gradio's, 7860 or the next free one)."}
    )
    share: bool = field(default=False, metadata={"help": "Also open a public gradio.live link."})
    num_examples: int = field(
        default=4, metadata={"help": "Built-in questions spoken as examples (0 for none)."}
    )


def build_local_demo(args: SpaceArguments) -> tuple[gr.Blocks, str]:
    """The app on `args.model`, and the folder that holds its examples (Gradio must be allowed to serve it)."""
    model, processor = load_salad(args.model)
    pipe = SaladSpeechToTextPipeline(model=model, processor=processor)
    examples_dir = cache_dir() / "space-examples"  # beside the TTS cache, rewritten by each launch
    examples = load_examples(examples_dir) if speak_examples(examples_dir, args.num_examples) else []
    return build_demo(pipe, args.model, examples), str(examples_dir)


def launch_local(args: SpaceArguments, block: bool = True) -> tuple[gr.Blocks, str]:
    """Serve the app on `args.model`; with `block=False` return at once (the server runs in a thread) with the
    page's address."""
    demo, examples_dir = build_local_demo(args)
    _, url, _ = demo.queue().launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        allowed_paths=[examples_dir],
        prevent_thread_lock=not block,
        quiet=not block,
    )
    return demo, url


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((SpaceArguments,)).parse_args_and_config(args=argv)
    launch_local(args)
