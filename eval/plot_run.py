"""Plot a training run's logged metrics: python eval/plot_run.py <run folder> [--out file.png].

Reads <run>/logs/version_*/metrics.csv (all versions of a resumed run) and writes one panel per
metric (losses, PSNR, codebook usage and perplexity, zero-shot accuracy, token loss ...)."""

import argparse

from clipgen.evaluation.plots import footer_text
from clipgen.evaluation.run_plots import plot_run
from clipgen.jobs.entry import exit_on_user_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", help="a train.py run folder (hydra.run.dir)")
    parser.add_argument("--out", help="PNG to write (default: <run folder>/curves.png)")
    args = parser.parse_args()
    path = exit_on_user_error(lambda: plot_run(args.run_dir, footer_text(), args.out))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
