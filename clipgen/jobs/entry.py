"""The start-up every entry point shares (`train.py`, `sample.py`, `precompute.py`, `eval/*`):
CPU settings once, and the user's mistakes as one clear line and exit status 2 instead of a
traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from clipgen.checkpoint import CheckpointMismatchError, UnreadableCheckpointError

T = TypeVar("T")
# Errors that name a bad setting or file: the message is the whole story.
USER_ERRORS = (FileNotFoundError, ValueError, CheckpointMismatchError, UnreadableCheckpointError)


def start_up() -> None:
    """Process-wide settings: flush denormal floats to zero (they made CPU steps 3x slower)."""
    torch.set_flush_denormal(True)


def check_settings_given(cfg: DictConfig) -> None:
    """Resolve the whole config now, before any model loads or file is written: a required
    setting left unset (`???`) raises a ValueError that names it."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        key = error.full_key
        raise ValueError(f"{key} is not set: give it on the command line ({key}=...); the "
                         "config that asks for it says what it takes") from None


def run_job(job: Callable[[DictConfig], T], cfg: DictConfig, *args: Any) -> T:
    """Run `job(cfg, *args)` after `start_up()` and `check_settings_given(cfg)`; a user error
    prints `error: <message>` on stderr and exits with status 2."""
    start_up()

    def checked_job() -> T:
        check_settings_given(cfg)
        return job(cfg, *args)

    return exit_on_user_error(checked_job)


def exit_on_user_error(call: Callable[[], T]) -> T:
    """`call()`; a user error prints `error: <message>` on stderr and exits with status 2."""
    try:
        return call()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
