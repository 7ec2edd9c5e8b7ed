"""`SaladDistillationTrainer`: cross-modal distillation of a text LLM into its speech-adapted self."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import torch
from accelerate.utils import gather_object
from peft import LoraConfig
from transformers import Trainer, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from modeling_salad import SaladForConditionalGeneration, SaladProcessor, WhisperTranscript

from ..paper import CITATION, PAPER_ARXIV_ID, PAPER_TITLE
from .choice import SaladChoiceCollator
from .config import SaladDistillationConfig
from .data import SaladDistillationCollator
from .losses import ChoiceLossOutput, choice_distillation_loss, distillation_loss, option_log_probs
from .teacher_cache import TeacherCache
from .transcript_cache import TranscriptCache

logger = logging.getLogger(__name__)


class SaladDistillationTrainer(Trainer):
    """Trainer for SALAD's cross-modal distillation (Stage I, and Stage II on selected synthetic speech).

    Each batch holds the student's interleaved text/speech inputs, the teacher's all-text inputs and the
    pairs of positions that predict the same text token (see `trainers.distillation.data`). The student runs up to its
    last hidden states; the loss projects the paired positions through the LM heads chunk by chunk
    (`trainers.distillation.losses`), so neither model's `[batch, seq, vocab]` logits are ever materialized.
    With `objective="choice"` a batch holds every option of every spoken question instead
    (`trainers.distillation.choice`), and the loss compares the teacher's and the student's choices among them.

    Args:
        model: a [`SaladForConditionalGeneration`].
        args: a [`SaladDistillationConfig`]; `train_llm`, `train_audio_encoder` set what trains.
        processing_class: the model's [`SaladProcessor`].
        teacher_model: for `teacher_mode="separate"`, the frozen original LLM (`AutoModelForCausalLM`);
            default: a frozen copy of the model's LLM taken before training.
        data_collator: default [`SaladDistillationCollator`] built from `args`, or for `objective="choice"`
            [`SaladChoiceCollator`].
    """

    _tag_names = ["salad", "speech", "cross-modal-distillation"]
    _name = "SALAD"
    _paper = {
        "title": PAPER_TITLE,
        "id": PAPER_ARXIV_ID,
        "citation": CITATION,
    }
    # compute_loss divides by the supervised-token count of the whole accumulated batch itself
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: SaladForConditionalGeneration,
        args: SaladDistillationConfig,
        processing_class: SaladProcessor,
        train_dataset=None,
        eval_dataset=None,
        teacher_model=None,
        data_collator=None,
        **kwargs,
    ):
        set_seed(args.seed)  # before LoRA is drawn: the same command gives the same initial weights
        set_trainable_parts(model, args)
        if data_collator is None and args.objective == "choice":
            data_collator = SaladChoiceCollator(
                processing_class, args.choice_num_options, max_bad_row_fraction=args.max_bad_row_fraction
            )
        elif data_collator is None:
            data_collator = SaladDistillationCollator(
                processing_class,
                text_span=tuple(args.text_span),
                speech_span=tuple(args.speech_span),
                continuation=args.continuation,
                interleave_probability=args.interleave_probability,
                chat_format=args.chat_format,
                chat_instruction=args.chat_instruction,
                max_bad_row_fraction=args.max_bad_row_fraction,
                seed=args.seed,
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.transcript_cache = None
        if args.cache_transcripts and model.adapter.writes_text and not args.train_audio_encoder:
            self.transcript_cache = TranscriptCache(model, args.transcript_cache_dir)
        self.teacher_cache = TeacherCache() if args.cache_teacher_states and args.alpha > 0 else None
        self.teacher = None
        if args.teacher_mode == "separate":
            teacher = teacher_model if teacher_model is not None else copy.deepcopy(model.language_model)
            self.teacher = teacher.requires_grad_(False).eval().to(self.args.device)
        self._metrics = defaultdict(list)
        self._speech_seconds_seen = 0.0  # on this process, since this run (re)started
        # Rows the collator skipped, per reason, micro-batches dropped for a non-finite loss and optimizer steps
        # dropped for a non-finite gradient: counted from the batches themselves, so dataloader worker processes
        # cannot hide them (this process, this run; `run_counts` sums them over processes).
        self._rows_seen, self._bad_row_reasons = 0, Counter()
        self._skipped_batches, self._skipped_steps = 0, 0
        self._counts_before_this_run = None  # a resumed run's, from its checkpoint (`counts_at_checkpoint`)
        self._checkpoint_staging = None  # set while `_save_checkpoint` writes a checkpoint

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, model=None):
        """AdamW (or `args.optim`) with separate peak learning rates for the adapter and the LLM."""
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[float, float], list] = defaultdict(list)
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            learning_rate = self.args.learning_rate
            if name.startswith("adapter.") and self.args.adapter_learning_rate is not None:
                learning_rate = self.args.adapter_learning_rate
            elif name.startswith("language_model.") and self.args.llm_learning_rate is not None:
                learning_rate = self.args.llm_learning_rate
            groups[(learning_rate, self.args.weight_decay if name in decay else 0.0)].append(param)
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(
            [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()],
            lr=self.args.learning_rate,
            **optimizer_kwargs,
        )
        return self.optimizer

    # ------------------------------------------------------------------ loss
    # Private override: transformers counts `labels` here and has no public hook for another count; its public
    # caller, `get_batch_samples`, also fetches the batches, which an override there would have to repeat.
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """The loss's denominator over the whole accumulated batch (and all processes): supervised tokens, or for
        `objective="choice"` questions."""
        count = torch.tensor(sum(self.loss_items(batch) for batch in batch_samples), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def loss_items(self, batch: dict) -> int:
        """What the objective's loss is a mean over, in one batch: its supervised tokens, or its questions."""
        if self.args.objective == "choice":
            return len(batch["teacher_spans"]) // batch["options_per_question"]
        return len(batch["target_ids"])

    def teacher_hidden_states(
        self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Final hidden states of the frozen teacher on all-text rows, `[batch, seq, hidden]`."""
        with torch.no_grad():
            if self.teacher is not None:
                return self.teacher.get_decoder()(
                    input_ids=input_ids, attention_mask=attention_mask
                ).last_hidden_state
            with self.accelerator.unwrap_model(model).lora_disabled():
                return model(
                    input_ids=input_ids, attention_mask=attention_mask, return_last_hidden_state=True
                ).last_hidden_state

    def teacher_states(self, model, inputs) -> tuple[torch.Tensor, torch.nn.Module]:
        """The teacher's final hidden states at the supervised positions, `[tokens, hidden]` (from the cache where
        a row was seen before), and its LM head."""
        teacher = self.teacher if self.teacher is not None else self.accelerator.unwrap_model(model)
        head = teacher.get_output_embeddings()
        ids, mask, index = (
            inputs["teacher_input_ids"],
            inputs["teacher_attention_mask"],
            inputs["teacher_index"],
        )
        if self.teacher_cache is None:
            return self.teacher_hidden_states(model, ids, mask).flatten(0, 1)[index], head
        states = self.teacher_cache.states(
            lambda rows: self.teacher_hidden_states(model, ids[rows], mask[rows]), ids, mask, index
        )
        return states, head

    def cached_transcripts(self, model, inputs) -> WhisperTranscript | None:
        """The batch's Whisper transcripts from the cache (computing only windows never seen), or None: no cache,
        or no audio in the batch."""
        if self.transcript_cache is None or inputs.get("input_features") is None:
            return None
        return self.transcript_cache.transcripts(
            self.accelerator.unwrap_model(model), inputs["input_features"], inputs["input_features_mask"]
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The objective's loss, guarded: a non-finite loss stops the run or drops the batch (`nonfinite_policy`)."""
        result = self.objective_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        if torch.isfinite(loss.detach()).all():
            return result
        self.handle_nonfinite(f"loss {loss.item()}", inputs)
        self._skipped_batches += 1
        unwrapped = self.accelerator.unwrap_model(model)
        zero = (
            sum(p.sum() for p in unwrapped.parameters() if p.requires_grad) * 0.0
        )  # no update, no NaN grads
        return (zero, result[1]) if return_outputs else zero

    def objective_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss of `args.objective`, as a mean over the optimizer step's items."""
        if self.args.objective == "choice":
            output = self.choice_loss(model, inputs, num_items_in_batch)
        else:
            output = self.token_loss(model, inputs, num_items_in_batch)
        loss = output.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        self._record_metrics(output, "train" if model.training else "eval")
        return (loss, output) if return_outputs else loss

    def token_loss(self, model, inputs, num_items_in_batch=None):
        """SALAD's loss at every supervised position (`distillation_loss`)."""
        # At alpha = 0 the loss is the transcript's NLL alone (an ASR stage): no teacher forward pass.
        teacher_hidden, teacher_head = (
            self.teacher_states(model, inputs) if self.args.alpha > 0 else (None, None)
        )
        student_hidden = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            input_features=inputs.get("input_features"),
            input_features_mask=inputs.get("input_features_mask"),
            whisper_transcript=self.cached_transcripts(model, inputs),
            return_last_hidden_state=True,
        ).last_hidden_state
        student_head = self.accelerator.unwrap_model(model).get_output_embeddings()
        output = distillation_loss(
            student_hidden.flatten(0, 1)[inputs["student_index"]],
            teacher_hidden,
            student_head.weight,
            None if teacher_head is None else teacher_head.weight,
            inputs["target_ids"],
            alpha=self.args.alpha,
            divergence=self.args.divergence,
            beta=self.args.beta,
            temperature=self.args.temperature,
            implementation=self.args.loss_implementation,
            chunk_size=self.args.loss_chunk_size,
            num_items_in_batch=num_items_in_batch,
            student_head_bias=getattr(student_head, "bias", None),
            teacher_head_bias=getattr(teacher_head, "bias", None),
        )
        if inputs.get("input_features") is None:
            # A text-only batch leaves the adapter out of the graph: tie it in with a zero term, so DDP sees
            # every trainable parameter used and a frozen-LLM run still has something to backpropagate.
            unwrapped = self.accelerator.unwrap_model(model)
            tie = sum(p.sum() for p in unwrapped.adapter.parameters() if p.requires_grad) * 0.0
            output = dataclasses.replace(output, loss=output.loss + tie)
        return output

    def choice_loss(self, model, inputs, num_items_in_batch=None):
        """The KL between the teacher's and the student's choices among each question's options
        (`choice_distillation_loss`), and with a trained LLM the same for it reading the question's text.

        The student's sequences (the clips) and, with the text term, the same LLM's text sequences go through one
        forward pass: under DDP a second pass with gradients would mark the shared parameters ready twice."""
        unwrapped = self.accelerator.unwrap_model(model)
        options = inputs["options_per_question"]
        text_ids, text_mask = inputs["teacher_input_ids"], inputs["teacher_attention_mask"]
        teacher = self.teacher if self.teacher is not None else unwrapped
        teacher_scores = self.option_scores(
            self.teacher_hidden_states(model, text_ids, text_mask),
            teacher,
            text_ids,
            inputs["teacher_spans"],
            options,
        )
        with_text = self.args.choice_text_weight > 0 and any(
            p.requires_grad for p in unwrapped.language_model.parameters()
        )
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        if with_text:
            pad = self.processing_class.tokenizer.pad_token_id
            width = max(input_ids.shape[1], text_ids.shape[1])
            input_ids = torch.cat([pad_to(input_ids, width, pad), pad_to(text_ids, width, pad)])
            attention_mask = torch.cat([pad_to(attention_mask, width, 0), pad_to(text_mask, width, 0)])
        windows = inputs["sequence_windows"]
        transcript = self.cached_transcripts(model, inputs)  # each clip once, then repeated for its options
        hidden = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            input_features=inputs["input_features"][windows],
            input_features_mask=inputs["input_features_mask"][windows],
            whisper_transcript=None
            if transcript is None
            else type(transcript)(*(p[windows] for p in transcript)),
            return_last_hidden_state=True,
        ).last_hidden_state
        sequences = len(inputs["input_ids"])
        student_scores = self.option_scores(
            hidden[:sequences], unwrapped, input_ids[:sequences], inputs["student_spans"], options
        )
        text_scores = None
        if with_text:
            text_scores = self.option_scores(
                hidden[sequences:], unwrapped, input_ids[sequences:], inputs["teacher_spans"], options
            )
        return choice_distillation_loss(
            teacher_scores, student_scores, text_scores,
            text_weight=self.args.choice_text_weight, num_items_in_batch=num_items_in_batch,
        )  # fmt: skip

    @staticmethod
    def option_scores(
        hidden: torch.Tensor, lm, input_ids: torch.Tensor, spans: torch.Tensor, options: int
    ) -> torch.Tensor:
        """`[questions, options]` mean log-probabilities of the options, through `lm`'s head."""
        head = lm.get_output_embeddings()
        scores = option_log_probs(hidden, head.weight, input_ids, spans, getattr(head, "bias", None))
        return scores.view(-1, options)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------ logging
    def _record_metrics(self, output, mode: str) -> None:
        if isinstance(output, ChoiceLossOutput):
            questions = max(output.num_questions, 1)
            self._metrics[f"{mode}_choice_divergence"].append(float(output.divergence_sum) / questions)
            if output.text_divergence_sum is not None:
                self._metrics[f"{mode}_text_choice_divergence"].append(
                    float(output.text_divergence_sum) / questions
                )
            self._metrics[f"{mode}_teacher_choice_accuracy"].append(output.teacher_right / questions)
            self._metrics[f"{mode}_student_choice_accuracy"].append(output.student_right / questions)
            return
        tokens = max(int(output.num_tokens), 1)
        if self.args.alpha > 0:  # at alpha = 0 no divergence is computed
            self._metrics[f"{mode}_divergence"].append(float(output.divergence_sum) / tokens)
        self._metrics[f"{mode}_nll"].append(float(output.nll_sum) / tokens)
        self._metrics[f"{mode}_supervised_tokens"].append(float(output.num_tokens))

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._speech_seconds_seen += float(inputs.get("speech_seconds", 0.0))
        self._rows_seen += int(inputs.pop("rows_in_batch", 0))
        self._bad_row_reasons.update(inputs.pop("bad_row_reasons", {}))
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients and not self.gradients_are_finite(model):
            # The accumulated gradient of the whole optimizer step is dropped on every process: which micro-batch
            # made it non-finite cannot be told apart once it is summed in. A non-finite *loss* drops only its own
            # micro-batch (`compute_loss`).
            self.handle_nonfinite("gradient", inputs)
            self._skipped_steps += 1
            model.zero_grad(set_to_none=True)  # parameters without a gradient are left alone by the optimizer
        return loss

    def gradients_are_finite(self, model) -> bool:
        """Whether every process's gradients are finite, checked where the optimizer step will read them (after
        DDP's all-reduce; on each process's own shard under FSDP), so that all processes decide alike."""
        local = [p.grad for p in model.parameters() if p.grad is not None]
        local = [g.to_local() if hasattr(g, "to_local") else g for g in local]  # FSDP2 shards are DTensors
        # one host sync for all gradients, not one per tensor; every process reaches the reduce below
        flags = [g.isfinite().all() for g in local]
        nonfinite = (~torch.stack(flags)).any().float() if flags else torch.zeros((), device=self.args.device)
        if self.args.world_size > 1:
            nonfinite = self.accelerator.reduce(nonfinite, reduction="sum")
        return not bool(nonfinite)

    def handle_nonfinite(self, what: str, inputs: dict) -> None:
        """Stop with the step and the batch's text (`nonfinite_policy: stop`), or warn that it is dropped."""
        texts = self.processing_class.tokenizer.batch_decode(
            inputs["teacher_input_ids"], skip_special_tokens=True
        )
        if self.args.nonfinite_policy == "stop":
            raise FloatingPointError(
                f"Non-finite {what} at step {self.state.global_step} on the batch {texts}. Check these rows' audio "
                "(loud or corrupt clips) and the learning rate, or set nonfinite_policy='skip' to drop such batches."
            )
        logger.warning("Dropped a non-finite %s at step %d (batch: %s)", what, self.state.global_step, texts)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Refuse to write non-finite weights (a checkpoint of NaNs would look like any other). Every process checks
        its own parameters (its shard under FSDP), and all agree before any of them writes."""
        local = [
            (name, p.to_local() if hasattr(p, "to_local") else p) for name, p in self.model.named_parameters()
        ]
        broken = [name for name, p in local if not torch.isfinite(p).all()]
        count = torch.tensor(float(len(broken)), device=self.args.device)
        if self.args.world_size > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        if count:
            raise FloatingPointError(
                f"Refusing to save non-finite weights ({broken[:3] or 'on another process'}...) to {output_dir}."
            )
        super().save_model(output_dir, _internal_call)

    # ------------------------------------------------------------------ checkpoints
    # Private overrides: transformers writes `checkpoint-N` in place and has no hook around the whole write (a
    # callback's `on_save` runs after it), so a run killed mid-save would leave a checkpoint that looks complete
    # to its rotation. `_save_checkpoint` stages it and renames it into place; `_get_output_dir` points the
    # write at the staging folder.
    def _get_output_dir(self, trial) -> str:
        return self._checkpoint_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-N` under a hidden temporary folder and rename it into place once complete, so a run
        killed during a save leaves only complete checkpoints (`resume_from_checkpoint: latest` finds them)."""
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / f".{name}.partial"
        self._checkpoint_staging = str(staging)
        try:
            super()._save_checkpoint(
                model, trial
            )  # into staging/checkpoint-N (its rotation sees only that one)
        finally:
            self._checkpoint_staging = None
        self.accelerator.wait_for_everyone()
        if not self.args.should_save:
            return
        final = run_dir / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging / name, final)
        shutil.rmtree(staging)
        if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(str(staging)):
            self.state.best_model_checkpoint = str(final)
        rotate_checkpoints(
            output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True,
        )  # fmt: skip

    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)
        counts = self.run_counts()  # on every process: it gathers
        if counts["bad_rows"] or counts["skipped_batches"] or counts["skipped_steps"]:
            logger.warning(
                "Of %d rows (all processes), %d were skipped (since this (re)start: %s); %d micro-batches were "
                "dropped for a non-finite loss and %d optimizer steps for a non-finite gradient.",
                counts["rows_seen"], counts["bad_rows"], dict(counts["bad_row_reasons"]),
                counts["skipped_batches"], counts["skipped_steps"],
            )  # fmt: skip
        return output

    def run_counts(self) -> dict:
        """Rows seen, rows skipped, micro-batches and steps dropped and speech seconds since training began (a
        resumed run goes on from its checkpoint's counts), summed over all processes: each process counts the
        batches it drew, while dropped optimizer steps are decided and counted alike by every process.
        `bad_row_reasons` covers this (re)start only. Every process must call it: it gathers."""
        local = {
            "rows_seen": self._rows_seen,
            "bad_row_reasons": Counter(self._bad_row_reasons),
            "skipped_batches": self._skipped_batches,
            "speech_seconds": self._speech_seconds_seen,
        }
        per_process = gather_object([local]) if self.args.world_size > 1 else [local]
        total = {
            key: sum((counts[key] for counts in per_process), type(value)()) for key, value in local.items()
        }
        total["skipped_steps"] = self._skipped_steps
        total["bad_rows"] = sum(total["bad_row_reasons"].values())
        if self._counts_before_this_run is None:
            self._counts_before_this_run = self.counts_at_checkpoint()
        for key, value in self._counts_before_this_run.items():
            total[key] += value
        return total

    def counts_at_checkpoint(self) -> dict:
        """The counts that a resumed run's checkpoint had logged last (all zero for a fresh run)."""
        logged = [entry for entry in self.state.log_history if "rows_seen" in entry]
        last = logged[-1] if logged else {}
        return {
            "rows_seen": last.get("rows_seen", 0),
            "bad_rows": last.get("bad_rows", 0),
            "skipped_batches": last.get("skipped_batches", 0),
            "skipped_steps": last.get("skipped_steps", 0),
            "speech_seconds": 60 * last.get("speech_minutes_seen", 0.0),
        }

    def log(self, logs: dict, *args, **kwargs) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        for key in [k for k in self._metrics if k.startswith(mode)]:
            values = self._metrics.pop(key)
            name = key[len(mode) + 1 :]
            logs[f"eval_{name}" if mode == "eval" else name] = sum(values) / len(values)
        if mode == "train":  # every process logs, so every process gathers
            counts = self.run_counts()
            logs["speech_minutes_seen"] = round(counts["speech_seconds"] / 60, 3)
            if counts["rows_seen"]:
                logs["bad_rows"] = counts["bad_rows"]
                logs["rows_seen"] = counts["rows_seen"]
            if counts["skipped_batches"]:
                logs["skipped_batches"] = counts["skipped_batches"]
            if counts["skipped_steps"]:
                logs["skipped_steps"] = counts["skipped_steps"]
            # this process's windows and rows, since this run (re)started
            for name, cache in (("transcript", self.transcript_cache), ("teacher", self.teacher_cache)):
                if cache is not None:
                    logs[f"{name}_cache_hit_rate"] = round(cache.hits / max(cache.hits + cache.misses, 1), 3)
        super().log(logs, *args, **kwargs)


def pad_to(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    """`[rows, length]` padded on the right to `[rows, width]` with `value`."""
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)


def set_trainable_parts(model: SaladForConditionalGeneration, args: SaladDistillationConfig) -> None:
    """Freeze or unfreeze encoder, adapter and LLM as the config says; add LoRA when asked and missing."""
    model.audio_tower.requires_grad_(args.train_audio_encoder)
    # `requires_grad_` of an adapter leaves its pretrained `frozen_parts` (Whisper's decoder) frozen
    model.adapter.requires_grad_(args.train_adapter)
    if args.train_llm == "lora" and not model.has_lora():
        model.add_lora_to_language_model(
            LoraConfig(
                r=args.lora_r,
                lora_alpha=args.lora_alpha,
                lora_dropout=args.lora_dropout,
                target_modules=list(args.lora_target_modules),
            )
        )
    elif args.train_llm == "full":
        model.language_model.requires_grad_(True)
    elif args.train_llm == "frozen":
        model.language_model.requires_grad_(False)
