"""SALAD training, in four parts: `distillation` (cross-modal distillation: config, data, loss, trainer,
salad-train, probes, F and M), `selection` (Stage II active selection: text pool, salad-select), `tts` (offline
speech synthesis) and `assets` (the embedded default's weights, converted from registry packages)."""
