"""Writing a file so that a crash or kill never leaves a half-written file under its name."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
TEMP_NAME = re.compile(r"\..+\.\d+\.tmp")


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (changing it for a
    moment would race with files other threads create)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass  # no /proc (not Linux): read it by setting it
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp)` on a temporary file in the same folder, then rename it over `path`.
    If `write` fails, the partial file is removed and the error propagates; `path` keeps its
    previous content. The file gets the permissions a plain `open` would give it (0666 less
    the umask), whatever the writer chose: safetensors writes 0600 files, which the rest of a
    group sharing a bundle could not read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temps(folder: str | os.PathLike, min_age_s: float = 0.0) -> list[Path]:
    """Delete the temporary files `write_atomic` leaves in `folder` when a process is killed
    mid-write (`.<name>.<pid>.tmp`), those last modified at least `min_age_s` ago (so that
    another process's write in progress is left alone). Returns the files removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed = []
    for path in folder.iterdir():
        if TEMP_NAME.fullmatch(path.name) and now - path.stat().st_mtime >= min_age_s:
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d partial file(s) left by an interrupted write in %s",
                 len(removed), folder)
    return removed
