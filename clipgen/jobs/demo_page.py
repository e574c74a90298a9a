"""The interactive demo: a gradio page over one loaded generator (`python demo.py` or
`clipgen-demo`), offline, on 127.0.0.1. Settings as in `sample.py`; limits in `demo:`."""

from __future__ import annotations

import json
import logging
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from clipgen.data.transforms import to_pil
from clipgen.generation.generators import METHODS, generate_by_method
from clipgen.generation.prompt_parts import PromptPart, compose_prompt
from clipgen.generation.settings import (
    build_generator,
    check_generation_settings,
    method_settings,
    resolve_device,
    settings_record,
)
from clipgen.generation.shapes_requests import shapes_warnings
from clipgen.generation.text_to_image import TextToImage
from clipgen.jobs.entry import USER_ERRORS
from clipgen.jobs.sample_run import read_image, sample_record, slug

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
FIRST_PROMPT = "a red circle"  # the prompt box's text when the page opens


class Cancelled(Exception):
    """Raised inside a generation when its request was cancelled or abandoned."""


def model_description(cfg: DictConfig, pipe: TextToImage) -> str:
    """What the page says is loaded: where the weights came from and their fingerprints."""
    source = (f"bundle `{cfg.bundle}`" if cfg.get("bundle") else
              f"VQGAN `{cfg.vqgan}`, CLIP `{cfg.clip.arch}`, prior `{cfg.prior}`"
              if cfg.get("vqgan") else "the shipped Shapes bundle")
    prints = pipe.fingerprints()
    shift = (f", text moved across the modality gap ({prints['text_shift']})"
             if "text_shift" in prints else "")
    return (f"**Model:** {source} (VQGAN {prints['vqgan']}, CLIP {prints['clip']}, prior "
            f"{prints['prior']}{shift}), {pipe.vqgan.config.resolution} px, on {pipe.device}")


def request_config(cfg: DictConfig, method: str, n_candidates: int, keep: int,
                   guidance: float, top_k: int, temperature: float, seed: int, precision: str,
                   steps: int) -> DictConfig:
    """The run config of one request: the server's config with the page's settings, checked
    against the demo's limits and the generator's own rules."""
    limits = cfg.demo
    if method not in METHODS:
        raise ValueError(f"unknown generator {method!r}; choose one of {', '.join(METHODS)}")
    if not 1 <= int(n_candidates) <= limits.max_candidates:
        raise ValueError(f"candidates must lie in 1..{limits.max_candidates} on this server")
    if not 1 <= int(steps) <= limits.max_steps:
        raise ValueError(f"steps must lie in 1..{limits.max_steps} on this server")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    run = OmegaConf.merge(cfg, {
        "method": method, "n_candidates": int(n_candidates), "samples_per_prompt": int(keep),
        "seed": int(seed), "batch_size": min(int(cfg.batch_size), int(n_candidates)),
        "sampling": {"guidance_scale": float(guidance), "top_k": int(top_k) or None,
                     "temperature": float(temperature), "dtype": precision},
        "optimize": {"steps": int(steps), "dtype": precision},
        "evolve": {"generations": int(steps), "dtype": precision}})
    check_generation_settings(run)
    return run


def write_results(results: list, prompt: str, seed: int, settings: dict, out_dir: Path
                  ) -> tuple[list[tuple[Any, str]], list[str]]:
    """PNGs and their samples.jsonl lines into `out_dir`: (gallery items, files to offer)."""
    gallery, files, lines = [], [], []
    for rank, (image, cos) in enumerate(zip(results[0].images, results[0].clip_cosine)):
        path = out_dir / f"{slug(prompt)}_{rank:02d}.png"
        picture = to_pil(image)
        picture.save(path)
        record = sample_record(prompt, seed, rank, path.name, float(cos), settings)
        lines.append(json.dumps(record))
        gallery.append((picture, f"#{rank + 1}  CLIP score {record['clip_score']:.1f}"))
        files.append(str(path))
    (out_dir / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return gallery, files + [str(out_dir / "samples.jsonl")]


def generation_stream(pipe: TextToImage, cfg: DictConfig, prompt: str, image: str | None,
                      **settings: Any) -> Iterator[tuple[list, list[str], str]]:
    """Run one request in a worker thread; yield (gallery, files, status) as previews arrive,
    then the results. Closing the iterator (a cancelled request) stops the worker."""
    run = request_config(cfg, **settings)
    label = (prompt or "").strip()
    if image and label:
        raise ValueError("both a prompt and an image are given: clear the prompt to make "
                         "variations of the image, or remove the image to draw the prompt")
    if image:
        if run.method != "clipgen":
            raise ValueError("an uploaded image gives variations with the clipgen generator")
        label = f"variations of {Path(image).name}"
        cond = pipe.image_conditions(read_image(image, pipe))
    else:
        if not label:
            raise ValueError("empty prompt: type what the image should show, or upload an "
                             "image for variations")
        cond = pipe.text_conditions([label])
    previews: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def on_preview(images: torch.Tensor) -> None:
        if stop.is_set():
            raise Cancelled()
        try:
            previews.put_nowait(images)
        except queue.Full:  # the page is behind: drop this preview, keep generating
            pass

    def work() -> None:
        try:
            outcome["results"], _ = generate_by_method(
                pipe, run.method, cond, keep=run.samples_per_prompt,
                settings=method_settings(run), seed=run.seed, n_candidates=run.n_candidates,
                batch_size=run.batch_size, on_preview=on_preview)
        except Cancelled:
            outcome["cancelled"] = True
        except Exception as error:  # handed to the request, which reports it on the page
            outcome["error"] = error

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        shown = 0
        while worker.is_alive() or not previews.empty():
            try:
                images = previews.get(timeout=0.2)
            except queue.Empty:
                continue
            shown += 1
            yield ([(to_pil(im), "in progress") for im in images], [],
                   f"{run.method}: working ({shown} previews) on {label!r}")
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        out_dir = Path(tempfile.mkdtemp(prefix="clipgen-demo-"))
        gallery, files = write_results(outcome["results"], label, run.seed,
                                       settings_record(run), out_dir)
        notes = "" if image else "".join(
            f" (warning: {line})" for line in shapes_warnings([label], pipe.clip.arch))
        yield gallery, files, f"done: {len(gallery)} image(s) for {label!r}{notes}"
    finally:
        stop.set()  # a closed (cancelled) request stops its worker at the next preview


def parts_prompt(*texts_and_weights: Any) -> str:
    """The prompt of the page's part rows, given as text, weight, text, weight, ...: rows
    with no text are left out, a negative weight is a NOT part (`compose_prompt`)."""
    rows = list(zip(texts_and_weights[::2], texts_and_weights[1::2]))
    parts = [PromptPart(str(text).strip(), float(weight if weight is not None else 1.0))
             for text, weight in rows if text and str(text).strip()]
    if not parts:
        raise ValueError("no parts: write the text of at least one part")
    return compose_prompt(parts)  # refuses weights that sum to zero, as for a typed prompt


def input_choice(prompt: str | None, image: str | None) -> str:
    """What the page says it will draw from: the prompt, the image, or neither / both (which a
    request refuses)."""
    text = (prompt or "").strip()
    if image and text:
        return ("**Input:** both a prompt and an image are given: Generate refuses this; clear "
                "the prompt to vary the image, or remove the image to draw the prompt")
    if image:
        return f"**Input:** the image {Path(image).name} (variations of it)"
    if text:
        return f"**Input:** the prompt {text!r}"
    return "**Input:** none yet: type a prompt or upload an image"


def build_demo(cfg: DictConfig, pipe: TextToImage | None = None) -> Any:
    """The gradio Blocks page over `pipe` (built from `cfg` when not given)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    pipe = pipe or build_generator(cfg, resolve_device(cfg.device))
    limits = cfg.demo
    lock = threading.Lock()  # one model in memory: one generation at a time

    def generate(prompt, image, method, n_candidates, keep, guidance, top_k, temperature,
                 seed, precision, steps):
        try:
            with lock:
                yield from generation_stream(
                    pipe, cfg, prompt, image, method=method, n_candidates=n_candidates,
                    keep=keep, guidance=guidance, top_k=top_k, temperature=temperature,
                    seed=seed, precision=precision, steps=steps)
        except USER_ERRORS as error:
            raise gr.Error(str(error)) from error
        except Exception as error:  # never a stack trace on the page; logged here in full
            log.exception("demo request failed")
            raise gr.Error(f"generation failed ({type(error).__name__}: {error})") from error

    def compose(*texts_and_weights):
        try:
            return parts_prompt(*texts_and_weights)
        except ValueError as error:
            raise gr.Error(str(error)) from error

    sampling = cfg.sampling
    with gr.Blocks(title="clipgen", analytics_enabled=False) as demo:
        gr.Markdown("# clipgen: text to image without captions")
        gr.Markdown(model_description(cfg, pipe))
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", value=FIRST_PROMPT, elem_id="prompt")
                # a file, not gr.Image: gradio would decode an upload before this code sees it
                # and show its own stack dump for a file that is not an image
                image = gr.File(label="Or an image, for variations (clipgen only; clear the "
                                "prompt)", type="filepath", elem_id="image")
                choice = gr.Markdown(input_choice(FIRST_PROMPT, None), elem_id="input_choice")
                with gr.Accordion("Compose the prompt from parts (a product of experts)",
                                  open=False, elem_id="parts"):
                    part_fields = []
                    for i in range(limits.parts):
                        with gr.Row():
                            part_fields.append(gr.Textbox(label=f"Part {i + 1}",
                                                          elem_id=f"part{i}", scale=3))
                            part_fields.append(gr.Number(1.0, label="Weight (< 0: NOT)",
                                                         elem_id=f"weight{i}", scale=1))
                    compose_button = gr.Button("Write the parts into the prompt",
                                               elem_id="compose")
                method = gr.Radio(list(METHODS), value=cfg.method, label="Generator")
                with gr.Row():
                    n_candidates = gr.Slider(1, limits.max_candidates, step=1,
                                             value=min(cfg.n_candidates, limits.max_candidates),
                                             label="Candidates (best kept by CLIP)")
                    keep = gr.Slider(1, limits.max_candidates, step=1,
                                     value=min(cfg.samples_per_prompt, limits.max_candidates),
                                     label="Images kept")
                with gr.Row():
                    guidance = gr.Number(sampling.guidance_scale, label="Guidance scale")
                    top_k = gr.Number(sampling.top_k or 0, precision=0, label="Top-k (0 = off)")
                    temperature = gr.Number(sampling.temperature, label="Temperature")
                with gr.Row():
                    seed = gr.Number(cfg.seed, precision=0, label="Seed")
                    precision = gr.Dropdown(list(PRECISIONS), value=sampling.dtype,
                                            label="Precision")
                    steps = gr.Slider(1, limits.max_steps, step=1,
                                      value=min(cfg.optimize.steps, limits.max_steps),
                                      label="Steps / generations (optimize, evolve)")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel = gr.Button("Cancel")
            with gr.Column():
                status = gr.Markdown("", elem_id="status")
                gallery = gr.Gallery(label="Images", columns=4, elem_id="gallery")
                files = gr.File(label="PNG files and samples.jsonl", file_count="multiple")
        event = run.click(generate, [prompt, image, method, n_candidates, keep, guidance,
                                     top_k, temperature, seed, precision, steps],
                          [gallery, files, status], api_name="generate")
        cancel.click(None, None, None, cancels=[event])
        compose_button.click(compose, part_fields, prompt, concurrency_limit=None)
        for source in (prompt, image):
            source.change(input_choice, [prompt, image], choice, queue=False)
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=1)
    return demo


def launch_options(cfg: DictConfig) -> dict[str, Any]:
    """`Blocks.launch` settings: loopback host and port, no share link, the upload limit."""
    return {"server_name": cfg.demo.host, "server_port": int(cfg.demo.port), "share": False,
            "max_file_size": f"{cfg.demo.max_upload_mb}mb", "show_error": True}


def serve_demo(cfg: DictConfig) -> None:
    """Build the page and serve it until interrupted."""
    build_demo(cfg).launch(**launch_options(cfg))


def main(argv: list[str] | None = None) -> None:
    """`clipgen-demo [overrides]`: the same page as `python demo.py`, for a clone of the
    repository installed with pip (its configs folder is read in place)."""
    import sys

    from hydra import compose, initialize_config_dir

    from clipgen.jobs.entry import run_job

    configs = Path(__file__).resolve().parents[2] / "configs"
    if not (configs / "demo.yaml").is_file():
        print(f"error: {configs}/demo.yaml not found: run clipgen-demo from a pip install -e of "
              "a clipgen clone, or python demo.py there", file=sys.stderr)
        sys.exit(2)
    with initialize_config_dir(str(configs), version_base="1.3"):
        cfg = compose("demo", overrides=list(sys.argv[1:] if argv is None else argv))
    run_job(serve_demo, cfg)
