"""Export a trained stage checkpoint to inference weights: safetensors plus a YAML config.

    clipgen-export outputs/vqgan/<run>/checkpoints/last.ckpt bundle/

writes `bundle/<stage>.safetensors` (for the VQGAN, taming key names; for CLIP, an open_clip
state dict that `open_clip.create_model(arch, pretrained=<file>)` loads; for the prior, its
weights) and `bundle/<stage>.yaml` (the architecture, the run config and the package versions;
for the prior also the fingerprints of the VQGAN and CLIP it was trained with).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from clipgen.checkpoint import (
    clipgen_metadata,
    load_torch_file,
    save_safetensors,
    strip_prefix,
)
from clipgen.jobs.entry import exit_on_user_error
from clipgen.models.vqgan import extract_vqgan_state


def stage_weights(checkpoint: dict[str, Any], stage: str, use_ema: bool = True) -> dict:
    """The inference weights of a stage checkpoint, with the names its loader expects."""
    state = checkpoint["state_dict"]
    if stage == "vqgan":
        weights = extract_vqgan_state(checkpoint, use_ema=use_ema)
        return {k: v for k, v in weights.items() if not k.startswith("loss.")}
    if stage == "clip":
        return strip_prefix(state, "model.")
    if stage == "prior":
        return strip_prefix(state, "prior.")
    raise ValueError(f"no export for stage {stage!r}")


def portable_config(run_config: dict[str, Any]) -> dict[str, Any]:
    """The run config without where the run wrote its files (machine-specific paths)."""
    return {k: v for k, v in run_config.items() if k not in ("run_dir", "logger")}


def export_checkpoint(path: str | Path, out_dir: str | Path, use_ema: bool = True,
                      half: bool = False) -> Path:
    """Write `<stage>.safetensors` and `<stage>.yaml` into `out_dir`; return the weights path.
    `half` stores floating-point weights as fp16 (half the size; loaders cast them back)."""
    checkpoint = load_torch_file(path)
    meta = clipgen_metadata(checkpoint, path)
    stage = meta["stage"]
    weights = stage_weights(checkpoint, stage, use_ema)
    if half:  # a VQGAN or CLIP: before any cache or prior is made with it (see --half)
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{stage}.safetensors"
    save_safetensors(weights, target, metadata={"stage": stage, "source": Path(path).name})
    extra = {}
    if stage == "prior":
        arch, extra = meta["prior"], {"encoders": meta["encoders"]}
    else:
        arch = meta["config"]["model"][stage]
    OmegaConf.save(OmegaConf.create({"stage": stage, "arch": arch, **extra,
                                     "versions": meta["versions"],
                                     "global_step": checkpoint.get("global_step"),
                                     "run_config": portable_config(meta["config"])}),
                   out / f"{stage}.yaml")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a clipgen training checkpoint (.ckpt)")
    parser.add_argument("out_dir", help="folder for <stage>.safetensors and <stage>.yaml")
    parser.add_argument("--no-ema", action="store_true", help="export raw, not EMA, weights")
    parser.add_argument("--half", action="store_true",
                        help="store the weights as fp16 (loaders cast them back). For a VQGAN or "
                        "CLIP, export it this way before precomputing a cache or training a prior "
                        "with it: priors record the fingerprint of the encoder weights they were "
                        "trained with and refuse any other, rounded copies included")
    args = parser.parse_args(argv)
    target = exit_on_user_error(lambda: export_checkpoint(
        args.checkpoint, args.out_dir, use_ema=not args.no_ema, half=args.half))
    print(f"wrote {target} and {target.with_suffix('.yaml')}")


if __name__ == "__main__":
    main()
