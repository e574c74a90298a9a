"""One command that measures the paper-size pieces on a GPU (`python eval/gpu_check.py`):
bf16-mixed training steps of the VQGAN (with its discriminator) and of the GPT-2 priors, the
decoder's tokens/s against the memory roofline, eager and with CUDA graphs, and the COCO suite's
generation path, all on random weights. Each part runs in a process of its own with its own
time limit, so that one that hangs or runs out of memory is reported as failed and the others
still run. On a CPU the same parts run at tiny sizes."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

ROW_MARK = "GPU_CHECK_ROW "
# Dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s), by device name.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12,
             "L4": 121e12, "A6000": 155e12, "4090": 165e12}


def spec_peak(device: torch.device) -> float | None:
    """The data-sheet bf16 peak of this GPU, when its name is known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: allocated GPU memory, or the resident size on CPU."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """A config of configs/ composed inside this Hydra job (or outside one)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=overrides)
    with initialize_config_dir(str(Path(__file__).resolve().parents[2] / "configs"),
                               version_base="1.3"):
        return compose(name, overrides=overrides)


def bf16_matmul_flops(device: torch.device) -> float:
    """bf16 matmul FLOP/s measured here (a smaller product on CPUs, where bf16 may be
    emulated and slow)."""
    from clipgen.jobs.sampling_benchmark import matmul_flops

    return matmul_flops(device, torch.bfloat16, n=4096 if device.type == "cuda" else 256)


def _mfu_fields(flops_per_step: float, seconds: float, device: torch.device) -> dict[str, Any]:
    measured = bf16_matmul_flops(device)
    achieved = flops_per_step / seconds
    peak = spec_peak(device)
    return {"tflops": float(f"{achieved / 1e12:.3g}"),  # 3 significant digits, tiny or not
            "mfu_vs_spec": round(achieved / peak, 3) if peak else "",
            "mfu_vs_measured_matmul": round(achieved / measured, 3)}


def _timed_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int
                 ) -> float:
    """Median seconds of `steps` calls of `step` after `warmup` calls."""
    from clipgen.jobs.sampling_benchmark import synchronize

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def prior_training(spec: DictConfig, device: torch.device, warmup: int, steps: int
                   ) -> dict[str, Any]:
    """bf16-autocast training steps of a GPT-2 prior (token loss, AdamW), optionally with
    activation checkpointing: the computation of the prior stage's training step."""
    from torch.utils.flop_counter import FlopCounterMode

    from clipgen.models.prior import CLIPPrior, PriorConfig

    cfg = PriorConfig.from_dict(OmegaConf.to_container(spec.model, resolve=True))
    torch.manual_seed(0)
    prior = CLIPPrior(cfg).to(device).train()
    if spec.get("checkpointing"):
        prior.gpt.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(prior.parameters(), lr=1e-4, fused=device.type == "cuda")
    batch = int(spec.batch)
    tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.n_tokens), device=device)
    cond = torch.nn.functional.normalize(torch.randn(batch, cfg.cond_dim, device=device), dim=-1)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = prior(cond, tokens)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1),
                                                     tokens.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    seconds = _timed_steps(step, device, warmup, steps)
    return {"params_m": round(sum(p.numel() for p in prior.parameters()) / 1e6, 1),
            "batch": batch, "seconds_per_step": round(seconds, 4),
            "samples_per_s": round(batch / seconds, 2),
            "tokens_per_s": round(batch * cfg.n_tokens / seconds),
            "activation_checkpointing": bool(spec.get("checkpointing")),
            **_mfu_fields(counter.get_total_flops(), seconds, device),
            "peak_memory_gb": peak_memory_gb(device)}


def vqgan_training(spec: DictConfig, device: torch.device, warmup: int, steps: int
                   ) -> dict[str, Any]:
    """bf16-mixed Lightning training steps of the VQGAN stage with its discriminator on (both
    optimisers step), on Shapes images at the configured resolution."""
    from torch.utils.flop_counter import FlopCounterMode

    from clipgen.jobs.benchmark import measure_training

    accelerator = "gpu" if device.type == "cuda" else "cpu"
    overrides = [f"experiment={spec.experiment}", "data=shapes", f"resolution={spec.resolution}",
                 f"data.batch_size={spec.batch}", "data.num_workers=2", "model.loss.disc_start=0",
                 "model.loss.perceptual_weight=0", "model.image_log_every=0",
                  "trainer=gpu" if accelerator == "gpu" else "trainer=cpu",
                 "trainer.precision=bf16-mixed", "logger=csv", *spec.get("overrides", [])]
    cfg = compose_config("bench_train", overrides)
    with FlopCounterMode(display=False) as counter:
        measure_training(cfg, 0, 2)  # 2 batches counted
    row = measure_training(cfg, warmup, steps)
    seconds = row["median_step_s"]
    return {"batch": int(spec.batch), "resolution": int(spec.resolution),
            "seconds_per_step": seconds, "samples_per_s": row["images_per_s"],
            "discriminator": True, "perceptual_loss": False,
            **_mfu_fields(counter.get_total_flops() / 2, seconds, device),
            "peak_memory_gb": peak_memory_gb(device)}


def decoding(spec: DictConfig, device: torch.device, warmup: int, steps: int
             ) -> list[dict[str, Any]]:
    """The static-cache decoder in bf16 with guidance, eager and compiled (CUDA graphs on a
    GPU), in each weight format: tokens/s and the fraction of the weight-read roofline,
    bandwidth measured here."""
    from clipgen.jobs.sampling_benchmark import Machine, copy_bandwidth, matmul_flops, sampling_rows
    from clipgen.models.prior import PriorConfig

    small = device.type != "cuda"
    machine = Machine(copy_bandwidth(device, megabytes=64 if small else 1024),
                      {"float32": matmul_flops(device, torch.float32, n=256 if small else 4096),
                       "bfloat16": bf16_matmul_flops(device)})
    cfg = PriorConfig.from_dict(OmegaConf.to_container(spec.model, resolve=True))
    rows = sampling_rows({spec.name: cfg}, [int(spec.batch)], ["static"], ["bfloat16"],
                         list(spec.compile), device, machine, float(spec.guidance_scale),
                         int(spec.top_k), windows=list(spec.get("windows") or []),
                         weight_formats=list(spec.get("weights") or ["dtype"]))
    for row in rows:
        row["bandwidth_gb_s"] = round(machine.bandwidth / 1e9, 1)
    return rows


def suite_generation(spec: DictConfig, device: torch.device, warmup: int, steps: int
                     ) -> dict[str, Any]:
    """Two batches of the evaluation suites' generation path (prompts to PNG files, best of
    n_candidates by CLIP) on random weights of the configured sizes."""
    from clipgen.evaluation.prompts import EvalPrompt
    from clipgen.evaluation.sharded_generation import generate_images
    from clipgen.evaluation.suite import method_image_generator
    from clipgen.generation.text_to_image import TextToImage
    from clipgen.models.clip import FrozenCLIP
    from clipgen.models.prior import CLIPPrior, PriorConfig
    from clipgen.models.vqgan import VQGAN, VQGANConfig

    torch.manual_seed(0)
    vqgan = VQGAN(VQGANConfig.from_dict(OmegaConf.to_container(spec.vqgan, resolve=True)))
    clip = FrozenCLIP(spec.clip_arch, random_weights=True)
    h, w = vqgan.token_grid()
    prior = CLIPPrior(PriorConfig.from_dict({**OmegaConf.to_container(spec.prior, resolve=True),
                                             "vocab_size": vqgan.config.n_embed,
                                             "n_tokens": h * w, "cond_dim": clip.embed_dim}))
    pipe = TextToImage(vqgan, clip, prior, device)
    cfg = compose_config("eval", ["suite=coco", "out_dir=unused",
                                  f"n_candidates={spec.n_candidates}", "sampling.dtype=bfloat16",
                                  f"sampling.guidance_scale={spec.guidance_scale}"])
    batch = int(spec.batch)
    prompts = [EvalPrompt(f"a photo of {i} cats on a red sofa") for i in range(2 * batch)]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        made = generate_images(method_image_generator(pipe, cfg), prompts, out, {"check": 1},
                               batch_size=batch, progress=False)
        seconds = time.perf_counter() - start
        written = len(list(Path(out, "images").glob("*.png")))
    return {"images": made, "pngs_written": written, "batch": batch,
            "n_candidates": int(spec.n_candidates), "seconds": round(seconds, 2),
            "images_per_s": round(made / seconds, 3), "peak_memory_gb": peak_memory_gb(device)}


PARTS: dict[str, Callable[..., Any]] = {"vqgan_f16_16384": vqgan_training,
                                        "prior_gpt2_medium": prior_training,
                                        "prior_gpt2_xl": prior_training,
                                        "decode_gpt2_medium": decoding,
                                        "suite_coco_generation": suite_generation}


def run_part(cfg: DictConfig, name: str) -> None:
    """Run one part in this process and print its rows, marked for the parent to read."""
    from clipgen.generation.settings import resolve_device

    device = resolve_device(cfg.device)
    torch.set_flush_denormal(True)
    out = PARTS[name](cfg.sizes[size_name(cfg, device)][name], device, cfg.warmup, cfg.steps)
    for row in out if isinstance(out, list) else [out]:
        print(ROW_MARK + json.dumps({"part": name, "status": "ok", **row}), flush=True)


def size_name(cfg: DictConfig, device: torch.device) -> str:
    """`paper` on a GPU and `tiny` on a CPU unless `size` names one."""
    if cfg.size != "auto":
        return str(cfg.size)
    return "paper" if device.type == "cuda" else "tiny"


def run_all(cfg: DictConfig, overrides: list[str]) -> list[dict[str, Any]]:
    """Every part of `cfg.parts` in a child process under its own time limit; a part that
    fails or runs out of time gives one row saying so."""
    rows: list[dict[str, Any]] = []
    script = Path(__file__).resolve().parents[2] / "eval" / "gpu_check.py"
    for name in cfg.parts:
        if name not in PARTS:
            raise ValueError(f"unknown part {name!r}; known: {', '.join(PARTS)}")
        limit = float(cfg.timeouts[name])
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(script), *overrides, f"part={name}",
                                   "hydra.run.dir=.", "hydra.output_subdir=null"],
                                  capture_output=True, text=True, timeout=limit)
            found = [json.loads(line[len(ROW_MARK):]) for line in proc.stdout.splitlines()
                     if line.startswith(ROW_MARK)]
            if proc.returncode == 0 and found:
                rows.extend(found)
            else:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"part": name, "status": f"failed (exit {proc.returncode}): "
                                                     f"{last[:300]}"})
        except subprocess.TimeoutExpired:
            rows.append({"part": name, "status": f"failed: timed out after {limit:.0f} s"})
        rows[-1]["part_s"] = round(time.perf_counter() - start, 1)
        print(f"{name}: {rows[-1]['status']} ({rows[-1]['part_s']} s)", file=sys.stderr,
              flush=True)
    return rows


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    """One markdown table per part, over the keys its rows have."""
    out = []
    for part in dict.fromkeys(row["part"] for row in rows):
        mine = [row for row in rows if row["part"] == part]
        keys = list(dict.fromkeys(k for row in mine for k in row if k != "part"))
        out += [f"**{part}**", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        out += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in mine]
        out.append("")
    return "\n".join(out)


def write_report(rows: list[dict[str, Any]], info: dict[str, Any], path: Path) -> str:
    """The JSON (machine and rows) to `path` and the tables to `path` with `.md`; returns the
    tables."""
    tables = markdown_tables(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    path.with_suffix(".md").write_text(f"{json.dumps(info)}\n\n{tables}")
    return tables
