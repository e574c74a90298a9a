"""Writing a file so that a crash or kill never leaves a half-written file under its name."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp)` on a temporary file in the same folder, then rename it over `path`.
    If `write` fails, the partial file is removed and the error propagates; `path` keeps its
    previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
