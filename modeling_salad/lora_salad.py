"""LoRA on a SALAD model's LLM: added, switched off (the distillation teacher), merged or removed.

`SaladLoraMixin` gives `SaladForConditionalGeneration` these methods, as transformers' `PeftAdapterMixin` gives
its models theirs; a checkpoint records the LoRA settings in `config.lora` and re-creates the layers when loaded
(`inject_lora`). peft is imported only where LoRA is used, so remote code loads without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


class SaladLoraMixin:
    """LoRA management of `self.language_model`, recorded in `self.config.lora`."""

    def add_lora_to_language_model(self, lora_config) -> None:
        """Add LoRA layers (a `peft.LoraConfig`) to the LLM only, and freeze the LLM's base weights.

        The settings are recorded in `config.lora`, so a checkpoint saved now loads back with its LoRA layers.
        `lora_disabled()` then gives back the original LLM, the teacher of cross-modal distillation, without a
        second copy in memory; `merge_lora()` folds the LoRA weights in before publishing.
        """
        if lora_config.target_modules is None:
            lora_config.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
        if self.has_lora():
            raise ValueError("The LLM already holds LoRA layers; merge_lora() or unload_lora() them first.")
        self.language_model.requires_grad_(False)
        inject_lora(self.language_model, lora_config)
        self.config.lora = lora_settings(lora_config)

    def _lora_layers(self) -> list[nn.Module]:
        from peft.tuners.tuners_utils import BaseTunerLayer  # lazily: remote code loads without peft

        return [module for module in self.language_model.modules() if isinstance(module, BaseTunerLayer)]

    def has_lora(self) -> bool:
        return bool(self._lora_layers())

    def set_lora_enabled(self, enabled: bool) -> None:
        """Switch the LLM's LoRA layers on or off (off: the original text LLM)."""
        for layer in self._lora_layers():
            layer.enable_adapters(enabled)

    @contextlib.contextmanager
    def lora_disabled(self) -> Iterator[None]:
        """The original text LLM for the duration of the block (a no-op without LoRA): the shared teacher of
        cross-modal distillation and the reference of forgetting, with no second copy of the LLM in memory."""
        has_lora = self.has_lora()
        if has_lora:
            self.set_lora_enabled(False)
        try:
            yield
        finally:
            if has_lora:
                self.set_lora_enabled(True)

    def merge_lora(self) -> None:
        """Fold LoRA into the LLM's weights and remove the LoRA layers, leaving a plain LLM."""
        self.unload_lora(merge=True)

    def unload_lora(self, merge: bool = False) -> None:
        """Remove the LoRA layers, folding them into the LLM's weights first when `merge` (else the original
        LLM comes back); save their weights before if you want to keep them as an adapter."""
        lora_layers = set(self._lora_layers())
        for name, module in list(self.language_model.named_modules()):
            if module in lora_layers:
                if merge:
                    module.merge()
                parent_name, _, child = name.rpartition(".")
                setattr(self.language_model.get_submodule(parent_name), child, module.get_base_layer())
        if getattr(
            self.language_model, "_hf_peft_config_loaded", False
        ):  # transformers' record of the adapter
            del self.language_model.peft_config
            self.language_model._hf_peft_config_loaded = False
        self.config.lora = None


LORA_SETTINGS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora")


def lora_settings(lora_config) -> dict:
    """What a checkpoint must record to re-create its LoRA layers: the `LoraConfig` fields that shape them."""
    settings = {name: getattr(lora_config, name) for name in LORA_SETTINGS}
    targets = settings["target_modules"]
    settings["target_modules"] = targets if isinstance(targets, str) else sorted(targets)
    return settings


def inject_lora(language_model: nn.Module, lora_config) -> None:
    """LoRA layers into the LLM with `peft.inject_adapter_in_model`. (transformers' own PEFT integration,
    `add_adapter`, needs peft >= 0.22, which no registry serves yet; this works with the peft we pin.)"""
    from peft import inject_adapter_in_model  # lazily: only models with LoRA need peft

    inject_adapter_in_model(lora_config, language_model)


def lora_config_from_settings(settings: dict):
    """The `peft.LoraConfig` of recorded `lora_settings` (peft is needed only by models that hold LoRA)."""
    from peft import LoraConfig  # lazily: only models with LoRA need peft

    return LoraConfig(**settings)
