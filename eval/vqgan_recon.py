"""Shapes tokenizer quality: `python eval/vqgan_recon.py [vqgan=<checkpoint or export>]
[num_images=512] [split=val|test|heldout] [colour_reference=8000]`: PSNR, codebook use and
attributes read back from reconstructions, by colour x shape too. Prints JSON and markdown
tables: the whole split, then one row per colour x shape."""

import hydra
from omegaconf import DictConfig, OmegaConf

from clipgen.evaluation.shapes_reconstruction import shapes_reconstruction_report
from clipgen.jobs.benchmark import machine_description, print_report
from clipgen.jobs.entry import run_job
from clipgen.models.bundle import default_bundle
from clipgen.models.vqgan import load_vqgan


def report(cfg: DictConfig) -> dict:
    weights = cfg.vqgan or default_bundle() / "vqgan.safetensors"
    return {"vqgan": str(cfg.vqgan or "shipped"),
            **shapes_reconstruction_report(load_vqgan(weights), cfg.num_images, cfg.batch_size,
                                           split=cfg.split,
                                           holdout=OmegaConf.to_container(cfg.holdout),
                                           colour_reference=cfg.colour_reference)}


@hydra.main(version_base="1.3", config_path="../configs", config_name="vqgan_recon")
def main(cfg: DictConfig) -> None:
    row = run_job(report, cfg)
    combinations = row.pop("by_combination", {})
    print_report([{**row, **machine_description()}], f"VQGAN reconstruction: {row['vqgan']}")
    print_report([{"combination": name, **values} for name, values in combinations.items()],
                 f"by colour x shape ({cfg.split})")


if __name__ == "__main__":
    main()
