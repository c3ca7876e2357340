"""Two real processes over gloo: rank 0 builds the index caches while rank 1 waits; ranks read disjoint samples."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os


def _rank_main(rank: int, world: int, prefix: str, workdir: str) -> None:
    import torch.distributed as dist

    from megadfm.data.config import BlendSource, DataConfig
    from megadfm.data.loader import make_train_iterator

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("megadfm.data").addHandler(handler)
    logging.getLogger("megadfm.data").setLevel(logging.INFO)
    dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank, world_size=world)
    cfg = DataConfig(blend=[BlendSource(prefix, 1.0)], seq_len=128, split=[0.9, 0.1, 0.0],
                     cache_dir=os.path.join(workdir, "cache"))
    samples = [i for b in make_train_iterator(cfg, rank, world, 3, 0, num_samples=600) for i in b["sample_index"].tolist()]
    dist.destroy_process_group()
    with open(os.path.join(workdir, f"rank{rank}.json"), "w") as f:
        json.dump({"samples": samples, "log": records}, f)


def test_rank0_builds_the_cache_and_ranks_are_disjoint(stdlib_corpus, tmp_path):
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as the deepspeed launcher gives
    procs = [ctx.Process(target=_rank_main, args=(r, 2, stdlib_corpus[0], str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    out = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert set(out[0]["samples"]).isdisjoint(out[1]["samples"])
    assert sorted(out[0]["samples"] + out[1]["samples"]) == list(range(600))
    assert out[0]["samples"][:6] == [0, 1, 2, 6, 7, 8]
    assert any(line.startswith("building packed index") for line in out[0]["log"])
    assert not any(line.startswith("building") for line in out[1]["log"])  # it waited at the barrier, then read
