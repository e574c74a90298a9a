"""Safe checkpoint I/O: strict key matching with clear reports, versions stored with weights."""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from clipgen.atomic import write_atomic

log = logging.getLogger(__name__)

TRACKED_PACKAGES = ("clipgen", "torch", "torchvision", "pytorch-lightning", "open_clip_torch",
                    "taming-transformers-rom1504", "transformers", "safetensors")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a checkpoint depends on."""
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class InertPickledObject:
    """Stands in for a class that a public training checkpoint names besides its weights
    (Lightning 1.x callbacks, OmegaConf containers of `hyper_parameters`): unpickling builds
    this instead, runs none of the named class's code, and keeps what it was given as plain
    data. clipgen reads only the weights of such files."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.items = args, kwargs, {}
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.items[len(self.items)] = value

    def extend(self, values: Iterable[Any]) -> None:
        for value in values:
            self.append(value)


# What the public Lightning 1.x checkpoints (taming's VQGANs among them) pickle besides tensors
# and plain containers: the ModelCheckpoint class as a key of `callbacks`, OmegaConf and
# argparse containers in `hyper_parameters`. Each is read as an InertPickledObject; anything
# else outside torch's weights-only allowlist is refused.
INERT_GLOBALS = tuple(
    [f"pytorch_lightning.callbacks.{m}" for m in (
        "model_checkpoint.ModelCheckpoint", "early_stopping.EarlyStopping",
        "lr_monitor.LearningRateMonitor")]
    + [f"omegaconf.{m}" for m in (
        "dictconfig.DictConfig", "listconfig.ListConfig", "base.ContainerMetadata",
        "base.Metadata", "nodes.AnyNode", "nodes.StringNode", "nodes.IntegerNode",
        "nodes.FloatNode", "nodes.BooleanNode", "nodes.EnumNode")]
    + ["argparse.Namespace", "typing.Any"])
# Harmless builtins those containers name (OmegaConf records value types).
PLAIN_GLOBALS = (int, float, str, bool, bytes, dict, list, set, tuple, collections.defaultdict)


class UnreadableCheckpointError(RuntimeError):
    """A weights file that cannot be read safely: pickled code, a damaged file, another
    format. The message names the file."""


def load_torch_file(path: str | Path) -> Any:
    """`torch.load` with `weights_only=True` (no pickled code ever runs), reading the extra
    objects of public Lightning 1.x checkpoints as inert placeholders; clear errors for missing
    files and refused contents."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    inert = [(InertPickledObject, name) for name in INERT_GLOBALS] + list(PLAIN_GLOBALS)
    try:
        with torch.serialization.safe_globals(inert):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UnreadableCheckpointError(
            f"could not load {path} safely (weights_only=True): {error}. Only tensors, plain "
            "containers and the objects of public Lightning checkpoints are accepted; re-save "
            "the checkpoint's state_dict, or convert it to safetensors") from error


class CheckpointMismatchError(RuntimeError):
    """A state dict whose keys or shapes do not match the model."""


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor],
                           ignore_prefixes: Iterable[str] = (), what: str = "checkpoint"
                           ) -> list[str]:
    """Load `state` into `model` strictly except for keys under `ignore_prefixes`, which are
    dropped and returned. Missing, unexpected or mis-shaped keys raise a
    CheckpointMismatchError that lists them."""
    ignore = tuple(ignore_prefixes)
    dropped = sorted(k for k in state if ignore and k.startswith(ignore))
    kept = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    own = model.state_dict()
    missing = sorted(set(own) - set(kept))
    unexpected = sorted(set(kept) - set(own))
    shapes = sorted(f"{k}: {tuple(kept[k].shape)} in {what}, {tuple(own[k].shape)} in model"
                    for k in set(own) & set(kept) if kept[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = [f"{what} does not match the model configuration:"]
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {show(shapes)}")
        parts.append("check that the model config is the one the checkpoint was trained with")
        raise CheckpointMismatchError("\n  ".join(parts))
    model.load_state_dict(kept, strict=True)
    if dropped:
        log.info("dropped %d %s keys on purpose (%s...)", len(dropped), what, dropped[0])
    return dropped


# Stage names of earlier releases, read as today's (stage 2 was called "gpt" before 0.2).
LEGACY_STAGE_NAMES = {"gpt": "prior"}


def clipgen_metadata(checkpoint: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The `clipgen` block (stage, run config, package versions) of a clipgen checkpoint."""
    meta = checkpoint.get("clipgen")
    if not isinstance(meta, Mapping) or "stage" not in meta:
        raise ValueError(f"{path} is not a clipgen training checkpoint (no 'clipgen' block with "
                         "its stage and config); a taming-format VQGAN checkpoint needs its "
                         "architecture named: vqgan_arch=<name>")
    meta = dict(meta)
    meta["stage"] = LEGACY_STAGE_NAMES.get(meta["stage"], meta["stage"])
    return meta


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state` under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def fingerprint(module: nn.Module) -> str:
    """A short hash of a module's weights (names, shapes, values): identifies which VQGAN or
    CLIP a stage-2 model or a token cache was made with."""
    return state_fingerprint(module.state_dict())


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """A short hash of named tensors (names, shapes, values), as `fingerprint`."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
                      .tobytes())
    return digest.hexdigest()[:16]


def save_safetensors(state: Mapping[str, torch.Tensor], path: str | Path,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Save a state dict as safetensors, atomically (`write_atomic`: a kill mid-write never
    leaves a half-written file under `path`, and the file gets the usual permissions). Tensors
    that share memory (tied weights) are stored once; the other names are recorded in the
    metadata and restored by `load_safetensors`."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = tensor.detach().contiguous()
    meta = {**(metadata or {}), "aliases": json.dumps(aliases)}
    write_atomic(path, lambda tmp: save_file(kept, str(tmp), metadata=meta))


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors state dict, restoring tied names recorded by `save_safetensors`."""
    return read_safetensors(path)[0]


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's state dict (tied names restored, as `load_safetensors`) and its
    string metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        aliases = json.loads(metadata.get("aliases", "{}"))
    except Exception as error:  # SafetensorError, a bad header's JSON, a truncated file
        raise UnreadableCheckpointError(
            f"could not read {path} as safetensors ({type(error).__name__}: {error}); the "
            "file is damaged or not a safetensors file: export it again") from error
    for name, target in aliases.items():
        state[name] = state[target]
    return state, metadata


def dataclass_from_dict(cls: type, d: Mapping[str, Any], what: str) -> Any:
    """Build a config dataclass from a stored dict, naming unknown keys (a config from another
    version or another model) instead of failing inside the constructor."""
    known = set(cls.__dataclass_fields__)
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {what} config keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**dict(d))
