"""The static decoder's kernels on this CPU, in one run:

    python eval/bench_kernels.py [batches=[1,4,16]] [copies=40]
        ['attention.dtypes=[float32,bfloat16,float16]']

(1) one linear layer in the two weight layouts the decoder chooses between (x @ W(in, out) and
W(out, in) @ x.T), with weights cycled out of cache as in decoding: ms and weight GB/s;
(2) drawing a token with top-k over the whole vocabulary against among the k best;
(3) one decode step's attention over the key/value cache, the layers' caches cycled as in
decoding and one layer's alone, with the cache in each of `attention.dtypes`: ms per layer and
cache GB/s.
Prints JSON and markdown tables."""

import hydra
from omegaconf import DictConfig

from clipgen.jobs.benchmark import machine_description, print_report
from clipgen.jobs.entry import run_job
from clipgen.jobs.sampling_benchmark import attention_rows, layout_rows, token_pick_rows


def bench(cfg: DictConfig) -> tuple[list[dict], list[dict], list[dict]]:
    layouts = layout_rows([list(s) for s in cfg.shapes], list(cfg.batches), cfg.copies)
    a = cfg.attention
    attention = attention_rows(list(a.batches), a.heads, a.head_dim, a.length, a.layers,
                               dtypes=list(a.dtypes))
    return layouts, token_pick_rows(cfg.vocab, cfg.pick_rows, cfg.top_k), attention


@hydra.main(version_base="1.3", config_path="../configs", config_name="bench_kernels")
def main(cfg: DictConfig) -> None:
    layouts, picks, attention = run_job(bench, cfg)
    print_report(layouts, "linear layer: weight layouts")
    print_report(picks, "top-k token draw per step")
    print_report(attention, "attention over the key/value cache, one decode step")
    print(machine_description())


if __name__ == "__main__":
    main()
