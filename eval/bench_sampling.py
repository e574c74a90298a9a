"""Sampling speed: the static-cache decoder against the Hugging Face reference and full
recomputation, fp32 and bf16, batch 1 / 4 / 16, in one run:

    python eval/bench_sampling.py [models=[gpt_8x512]] [batches=[1,4,16]] [dtypes=[float32]]
        [compile=[false,true]] [windows=[16]] [weights=[dtype,int8,int8_dynamic]]
        [guidance_scale=3] [device=cuda] [repeats=3] [plot=speed.png]

Models have random weights (sizes in configs/bench_sampling.yaml), except `shapes_bundle`, the
shipped Shapes prior sampled under CLIP text embeddings of `prompts`. `windows` adds speculative
Jacobi decoding rows (decode steps per image, tokens per step); `weights` adds int8 weight
rows (`sampling.weights`). Reports tokens/s (token sampling only; VQGAN decoding excluded),
weight bytes read per token, the fraction of the weight-read roofline (the bytes each step
reads, in its weight format, / copy bandwidth, measured in the same run) and of matmul peak in
that precision, the key/value cache bytes a plain static decode reads per token and the
fraction of the memory roofline for weights and cache together, and the speed-up over full
recomputation and the plain static decoder in fp32 (bf16 on a CPU without native bf16 is
marked emulated); `repeats=3` takes each time as the best of three runs. Prints JSON and a
markdown table; with plot=<file> also a PNG of tokens/s against batch size per decoder and
precision, rooflines dashed."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from clipgen.evaluation.plots import footer_text, sampling_speed_figure, save_figure
from clipgen.generation.settings import resolve_device
from clipgen.jobs.benchmark import machine_description, print_report
from clipgen.jobs.entry import run_job
from clipgen.jobs.sampling_benchmark import BenchPrior, measure_machine, sampling_rows
from clipgen.models.prior import PriorConfig

TRAINED = "shapes_bundle"


def shipped_prior(prompts: list[str], device) -> BenchPrior:
    """The shipped Shapes prior with the CLIP text embeddings of `prompts`."""
    from clipgen.generation.text_to_image import TextToImage
    from clipgen.models.bundle import default_bundle

    pipe = TextToImage.from_bundle(default_bundle(), device=device)
    return BenchPrior(pipe.prior.eval(), pipe.text_conditions(prompts).prior)


def bench(cfg: DictConfig) -> tuple[list[dict], dict]:
    device = resolve_device(cfg.device)
    unknown = set(cfg.models) - set(cfg.sizes) - {TRAINED}
    if unknown:
        raise ValueError(f"unknown models {sorted(unknown)}; known: {sorted(cfg.sizes)}")
    machine = measure_machine(device, sorted({"float32", *cfg.dtypes}))
    models = {name: shipped_prior(list(cfg.prompts), device) if name == TRAINED
              else PriorConfig.from_dict(cfg.sizes[name]) for name in cfg.models}
    rows = sampling_rows(models, list(cfg.batches), list(cfg.decoders), list(cfg.dtypes),
                         list(cfg.compile), device, machine, cfg.guidance_scale, cfg.top_k,
                         cfg.max_seconds, list(cfg.windows), list(cfg.weights), cfg.repeats)
    info = {**machine_description(), "bandwidth_gb_s": round(machine.bandwidth / 1e9, 1),
            **{f"matmul_gflops_{d}": round(f / 1e9, 1) for d, f in machine.matmul.items()}}
    return rows, info


@hydra.main(version_base="1.3", config_path="../configs", config_name="bench_sampling")
def main(cfg: DictConfig) -> None:
    rows, info = run_job(bench, cfg)
    title = f"sampling speed on {info.get('gpu', info['cpu'])}"
    print_report(rows, title)
    print(info)
    if cfg.get("plot"):
        path = save_figure(sampling_speed_figure(rows, title), Path(cfg.plot), footer_text())
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
