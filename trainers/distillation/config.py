"""`SaladDistillationConfig`: the training arguments of cross-modal distillation."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .losses import DIVERGENCES, LOSS_IMPLEMENTATIONS

OBJECTIVES = ("tokens", "choice")
TEACHER_MODES = ("shared", "separate")
LLM_TRAINING = ("frozen", "lora", "full")
NONFINITE_POLICIES = ("stop", "skip")


@dataclass
class SaladDistillationConfig(TrainingArguments):
    r"""
    Configuration of [`SaladDistillationTrainer`]: every `TrainingArguments` field plus the SALAD recipe.

    The loss (`objective="tokens"`, the paper's) is `alpha * D(teacher || student) + (1 - alpha) * NLL` over the
    positions whose next token is text, where the teacher (the original text LLM) reads the all-text version of what
    the student hears. `objective="choice"` distills, for spoken questions, the teacher's choice among each
    question's options instead (`trainers.distillation.losses.choice_distillation_loss`).
    """

    objective: str = field(
        default="tokens",
        metadata={
            "help": "What is distilled. tokens: the paper's loss, the teacher's next-token distribution at every "
            "supervised position (alpha, divergence, beta, temperature). choice: for spoken-question rows, the "
            "teacher's distribution over each question's options (its answer and other rows' answers, scored as the "
            "eval harness scores them, by mean log-probability per token), KL to the student's "
            "(trainers.distillation.choice; choice_num_options, choice_text_weight).",
            "choices": list(OBJECTIVES),
        },
    )
    choice_num_options: int = field(
        default=4,
        metadata={
            "help": "objective=choice: options per question, its own answer and the answers of the batch's next "
            "rows (the batch needs as many distinct answers)."
        },
    )
    choice_text_weight: float = field(
        default=1.0,
        metadata={
            "help": "objective=choice with a trained LLM: weight of the same KL for the LLM reading the question's "
            "text, against the teacher, which keeps it the text LLM it was."
        },
    )
    alpha: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the distillation term; 1 - alpha weighs the next-token NLL. SALAD uses 1.0."
        },
    )
    divergence: str = field(
        default="forward_kl",
        metadata={
            "help": "forward_kl: KL(teacher || student), the paper's; reverse_kl: KL(student || teacher); jsd: "
            "beta * KL(teacher || M) + (1 - beta) * KL(student || M) with M = beta * teacher + (1 - beta) * student.",
            "choices": list(DIVERGENCES),
        },
    )
    beta: float = field(
        default=0.5, metadata={"help": "Mixture weight of the teacher in `jsd` (0 < beta < 1)."}
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature of both distributions inside the loss only."}
    )
    teacher_mode: str = field(
        default="shared",
        metadata={
            "help": "shared: the teacher is the student's own LLM with LoRA switched off (LLM frozen or LoRA; no "
            "second copy in memory). separate: a frozen copy of the original LLM (needed for full fine-tuning).",
            "choices": list(TEACHER_MODES),
        },
    )
    train_llm: str = field(
        default="frozen",
        metadata={"help": "How the LLM trains: frozen, lora or full.", "choices": list(LLM_TRAINING)},
    )
    train_adapter: bool = field(
        default=True,
        metadata={
            "help": "Train the adapter (of a 'whisper_decoder' adapter, its residual; Whisper's decoder stays frozen). "
            "False keeps it as loaded: with the shipped model's residual at zero the LLM then reads Whisper's "
            "transcript as the cascade does, and only the LLM's LoRA learns."
        },
    )
    train_audio_encoder: bool = field(default=False, metadata={"help": "Also train the speech encoder."})
    cache_transcripts: bool = field(
        default=True,
        metadata={
            "help": "With a 'whisper_decoder' adapter and a frozen speech encoder: compute each audio window's "
            "Whisper transcript once and reuse it (trainers.distillation.transcript_cache), so that a step runs "
            "only the residual and the LLM. The transcript depends on the audio and the frozen Whisper alone."
        },
    )
    transcript_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder that keeps the cached transcripts across runs (another run on the same rows, another "
            "stage); default: this run's memory only."
        },
    )
    cache_teacher_states: bool = field(
        default=False,
        metadata={
            "help": "Compute the frozen teacher's final hidden states at each row's supervised positions once and "
            "reuse them in later epochs (trainers.distillation.teacher_cache): a step then runs the student alone. "
            "Exact: the teacher never trains. In memory, 4 bytes per hidden unit per supervised token (2.3 GB per "
            "million tokens with SmolLM2-135M): for runs that see their rows more than once."
        },
    )
    adapter_learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate of the adapter (default: learning_rate)."}
    )
    llm_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate of the LLM and its LoRA (default: learning_rate)."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (train_llm=lora)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (train_llm=lora)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (train_llm=lora)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "LLM module names that get LoRA (train_llm=lora)."},
    )
    text_span: list[int] = field(
        default_factory=lambda: [10, 30],
        metadata={"help": "Min and max words of a text span when interleaving."},
    )
    speech_span: list[int] = field(
        default_factory=lambda: [5, 15],
        metadata={"help": "Min and max words of a speech span when interleaving."},
    )
    continuation: str = field(
        default="{transcript}",
        metadata={
            "help": "Text after a whole-utterance speech segment (rows without word timestamps); `{transcript}` "
            "is replaced by the transcript ('Repeat what was said: {transcript}' gives the dense repeat format), "
            "`{answer}` by the row's `answer` (the text LLM's own reply: python -m trainers.distillation.chat_answers)."
        },
    )
    interleave_probability: float = field(
        default=1.0,
        metadata={
            "help": "Share of word-aligned rows cut into interleaved text/speech spans; the others are spoken "
            "whole and followed by `continuation`."
        },
    )
    chat_format: bool = field(
        default=False,
        metadata={
            "help": "Speak every row whole inside the LLM's chat template: the user turn holds the audio (then "
            "`chat_instruction`), the assistant turn the `continuation`, which alone is supervised, with the end "
            "of turn. This is how the speech-to-text pipeline and chat messages prompt the model. Needs "
            "interleave_probability=0."
        },
    )
    chat_instruction: str | None = field(
        default=None,
        metadata={"help": "chat_format: text after the audio in the user turn, e.g. 'Repeat what was said.'"},
    )
    text_only_ratio: float = field(
        default=1 / 3,
        metadata={"help": "Share of text-only rows mixed into training to limit forgetting (0 disables)."},
    )
    loss_chunk_size: int = field(
        default=1024,
        metadata={"help": "Positions per chunk of the loss: the [N, vocab] logits never exist at once."},
    )
    loss_implementation: str = field(
        default="fused",
        metadata={
            "help": "How the distillation loss is computed: 'fused' (each chunk's gradients taken in forward, "
            "its logits built once), 'recompute' (chunks recomputed in backward: no stored head gradient) or "
            "'materialized' (all [N, vocab] logits at once: the reference). Same values and gradients."
        },
    )
    max_bad_row_fraction: float = field(
        default=0.01,
        metadata={"help": "Stop when more than this share of rows cannot be decoded or aligned."},
    )
    nonfinite_policy: str = field(
        default="stop",
        metadata={
            "help": "What a NaN/inf loss or gradient does: 'stop' raises at once with the step and the batch's text; "
            "'skip' drops what carries it and counts it in the logs, summed over processes: a non-finite loss drops "
            "only its micro-batch (`skipped_batches`; its tokens still count in the step's loss denominator), a "
            "non-finite gradient drops the whole optimizer step, every micro-batch of it on every process "
            "(`skipped_steps`), since the accumulated gradient cannot be split back into its micro-batches."
        },
    )
    probe_data_file: str | None = field(
        default=None,
        metadata={
            "help": "Held-out rows (jsonl: `text`, `audio`) for the alignment probes (trainers/distillation/probes.py): "
            "transcript NLL/accuracy against a shuffled-audio control and greedy repeat WER, logged every "
            "probe_steps. None: no probes."
        },
    )
    answer_probe_data_file: str | None = field(
        default=None,
        metadata={
            "help": "Held-out spoken questions (jsonl with `prompt`, `continuation` and `answer`: "
            "`salad-prepare-data --source definition_questions`) for answer probes: the answer's "
            "NLL/accuracy after its question's clip against a shuffled-audio control, logged as answer_probe_* "
            "every probe_steps. None: none."
        },
    )
    probe_chat: bool | None = field(
        default=None,
        metadata={
            "help": "Ask the repeat probe inside the LLM's chat template (user turn: the clip, then "
            "`chat_instruction` or 'Repeat what was said.'). None: as `chat_format`. Set it for runs that mix "
            "chat repeat rows into interleaved rows, so the probe measures the chat repeat they train."
        },
    )
    probe_steps: int = field(default=250, metadata={"help": "Optimizer steps between two alignment probes."})
    probe_num_rows: int = field(default=32, metadata={"help": "Rows of probe_data_file that the probes use."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep every column: the collator builds the examples from raw rows."}
    )

    def __post_init__(self):
        # Batches hold per-clip audio and per-token pairs next to per-sample ids: their first dimensions differ,
        # so accelerate must not slice dispatched batches by sample (its default for iterable datasets).
        if self.accelerator_config is None:
            self.accelerator_config = {"dispatch_batches": False}
        elif isinstance(self.accelerator_config, dict):
            self.accelerator_config.setdefault("dispatch_batches", False)
        super().__post_init__()
        if self.accelerator_config.dispatch_batches:
            raise ValueError(
                "accelerator_config.dispatch_batches must be False: SALAD batches cannot be split by sample."
            )
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.objective == "choice":
            self._check_choice_objective()
        if not (self.train_adapter or self.train_audio_encoder or self.train_llm != "frozen"):
            raise ValueError(
                "Nothing would train: train_adapter is False, train_audio_encoder is False and train_llm is 'frozen'."
            )
        if self.teacher_mode not in TEACHER_MODES:
            raise ValueError(f"teacher_mode must be one of {TEACHER_MODES}, got {self.teacher_mode!r}.")
        if self.train_llm not in LLM_TRAINING:
            raise ValueError(f"train_llm must be one of {LLM_TRAINING}, got {self.train_llm!r}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}.")
        if self.divergence == "jsd" and not 0.0 < self.beta < 1.0:
            raise ValueError(
                f"jsd needs 0 < beta < 1, got {self.beta}; use forward_kl or reverse_kl for the limits."
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}.")
        if self.train_llm == "full" and self.teacher_mode == "shared":
            raise ValueError(
                "train_llm='full' changes the LLM the shared teacher would read; use teacher_mode='separate'."
            )
        for name in ("text_span", "speech_span"):
            span = getattr(self, name)
            if len(span) != 2 or not 1 <= span[0] <= span[1]:
                raise ValueError(f"{name} must be [min, max] with 1 <= min <= max, got {span}.")
        if self.chat_format and self.interleave_probability > 0:
            raise ValueError(
                f"chat_format speaks every row whole; set interleave_probability=0 (got {self.interleave_probability})."
            )
        if not 0.0 <= self.interleave_probability <= 1.0:
            raise ValueError(f"interleave_probability must lie in [0, 1], got {self.interleave_probability}.")
        if not 0.0 <= self.text_only_ratio < 1.0:
            raise ValueError(f"text_only_ratio must lie in [0, 1), got {self.text_only_ratio}.")
        if self.probe_steps < 1 or self.probe_num_rows < 2:
            raise ValueError(
                f"probe_steps must be >= 1 and probe_num_rows >= 2, got {self.probe_steps} and {self.probe_num_rows}."
            )
        if self.nonfinite_policy not in NONFINITE_POLICIES:
            raise ValueError(
                f"nonfinite_policy must be one of {NONFINITE_POLICIES}, got {self.nonfinite_policy!r}."
            )
        if self.loss_implementation not in LOSS_IMPLEMENTATIONS:
            raise ValueError(
                f"loss_implementation must be one of {LOSS_IMPLEMENTATIONS}, got {self.loss_implementation!r}."
            )
        if self.loss_chunk_size < 1:
            raise ValueError(f"loss_chunk_size must be >= 1, got {self.loss_chunk_size}.")

    def _check_choice_objective(self) -> None:
        """The settings that objective='choice' needs, or a ValueError naming the one to change."""
        if self.choice_num_options < 2:
            raise ValueError(f"choice_num_options must be >= 2, got {self.choice_num_options}.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, name) < self.choice_num_options:
                raise ValueError(
                    f"objective='choice' takes each question's distractors from its batch: {name} "
                    f"({getattr(self, name)}) must be at least choice_num_options ({self.choice_num_options})."
                )
        if self.auto_find_batch_size:
            raise ValueError(
                "objective='choice' needs a fixed batch size (its distractors); set auto_find_batch_size=False."
            )
        if self.chat_format:
            raise ValueError(
                "objective='choice' asks each question in the eval harness's raw frame (`Question: ...\\nAnswer:`); "
                "set chat_format=False."
            )
        if not self.dataloader_drop_last:
            raise ValueError(
                "objective='choice' needs dataloader_drop_last=True: an epoch's last, short batch may hold fewer "
                "distinct answers than choice_num_options."
            )
        if self.cache_teacher_states:
            raise ValueError(
                "cache_teacher_states keeps token positions of objective='tokens'; leave it off."
            )
        if self.choice_text_weight < 0:
            raise ValueError(f"choice_text_weight must be >= 0, got {self.choice_text_weight}.")


@dataclass
class SaladModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An existing SALAD checkpoint (Hub id or path) to continue training."}
    )
    audio_encoder: str | None = field(
        default=None,
        metadata={"help": "Speech encoder checkpoint for a new model (Whisper, Mimi, wav2vec2...)."},
    )
    language_model: str | None = field(
        default=None, metadata={"help": "Causal LM checkpoint for a new model."}
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The original text LLM for teacher_mode=separate (needed when continuing from a checkpoint "
            "whose LLM was already fine-tuned, e.g. Stage II after full fine-tuning). Default: a copy of the "
            "loaded model's LLM."
        },
    )
    # Adapter settings of a new model: None keeps SaladConfig's default (its docstring gives them), so the
    # defaults live in one place.
    adapter_type: str | None = field(
        default=None,
        metadata={
            "help": "New model's adapter (modeling_salad.ADAPTERS): 'mlp', 'transformer' (the paper's) or "
            "'whisper_decoder' (Whisper's own decoder transcribes; one embedding per transcript token)."
        },
    )
    adapter_stack_factor: int | None = field(
        default=None, metadata={"help": "New model: encoder frames per audio token."}
    )
    adapter_hidden_size: int | None = field(
        default=None, metadata={"help": "New model: Transformer adapter width."}
    )
    adapter_intermediate_size: int | None = field(
        default=None, metadata={"help": "New model: adapter MLP width."}
    )
    adapter_num_layers: int | None = field(
        default=None, metadata={"help": "New model: Transformer adapter layers."}
    )
    adapter_num_attention_heads: int | None = field(
        default=None, metadata={"help": "New model: adapter heads."}
    )
    adapter_num_key_value_heads: int | None = field(
        default=None, metadata={"help": "New model: adapter KV heads."}
    )
    adapter_decoder_num_beams: int | None = field(
        default=None,
        metadata={
            "help": "New model, whisper_decoder adapter: beams of Whisper's search (default 5; 1: greedy)."
        },
    )
    adapter_decoder_pad_seconds: float | None = field(
        default=None,
        metadata={
            "help": "whisper_decoder adapter, of a new model or in place of the checkpoint's: Whisper reads each "
            "window followed by at least this many seconds of silence (rounded up to a multiple of them) instead "
            "of padded to 30 s, and again over 30 s where it then fails to stop: faster, and no longer always the "
            "transcript of Whisper's own pipeline (default: 30 s)."
        },
    )
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32 or bfloat16."})

    def __post_init__(self):
        if (self.model_name_or_path is None) == (self.audio_encoder is None or self.language_model is None):
            raise ValueError(
                "Give either model_name_or_path (a SALAD checkpoint) or both audio_encoder and language_model."
            )


@dataclass
class SaladDataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Speech dataset: a Hub id, a local dataset directory or a loader name."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of dataset_name."})
    data_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Local speech data files (jsonl/json/csv/parquet) instead of a name."},
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Train on this many speech rows, drawn from all of them by a fixed seed (0): the same rows "
            "whatever the training seed, so that runs of several epochs over a subset, and runs with other "
            "seeds, meet the same clips (and read the transcripts cached for them); a streamed dataset gives its "
            "first rows. Default: every row."
        },
    )
    eval_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (None: no evaluation)."}
    )
    text_dataset_name: str | None = field(
        default=None, metadata={"help": "Text-only corpus (Hub id or path)."}
    )
    text_data_files: list[str] = field(default_factory=list, metadata={"help": "Local text-only data files."})
    text_split: str = field(default="train", metadata={"help": "Split of the text-only corpus."})
    streaming: bool = field(default=False, metadata={"help": "Stream the datasets instead of loading them."})
