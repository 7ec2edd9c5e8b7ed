"""SALAD training: cross-modal distillation (config, trainer, loss, data, salad-train), TTS backends and Stage II
active selection (salad-select)."""
