"""Files written whole or not at all, and names derived from what they hold.

Caches (synthesized speech, Stage II embeddings, converted checkpoints) are filled by long runs that may be
killed at any moment; an entry must then be either complete or absent, and its name must change whenever what
determines its content changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary)` and rename the result to `path`: a killed run never leaves a truncated file.

    The temporary file keeps `path`'s suffix, for writers that add one when it is missing (`numpy.save`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    write(temporary)
    os.replace(temporary, path)


def content_hash(*parts: object, length: int = 16) -> str:
    """A stable hex digest of JSON-serializable `parts` (the same in every process and run, unlike `hash`)."""
    encoded = json.dumps(list(parts), sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:length]
