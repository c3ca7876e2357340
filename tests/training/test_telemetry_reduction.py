"""Per-bucket [sum, count] accounting: bucket edges, micro-batch accumulation, and the exact global sums
of 2 real gloo ranks with one all-reduce per logging step."""

from __future__ import annotations

import json
import math
import os
import random

import pytest
import torch

from megadfm.training.telemetry.recorder import Telemetry
from megadfm.training.telemetry.buckets import Buckets, make_bucket_edges, summarize
from megadfm.training.telemetry.config import TelemetryConfig
from tests.training.telemetry_helpers import record
from tests.training.dist_helpers import run_distributed

VOLATILE = ("time", "perf/window_seconds")


def micro_batch(key, batch_size: int = 4, seq_len: int = 64, spike_row: bool = False, min_k: int = 1) -> dict:
    """Per-sequence DFM loss sums with dyadic values (exact in float64 whatever the summation order).

    r = k/64 (k >= min_k), w ~ 1/r rounded to 1/8, masked counts in {1, 2, 4, 8}, CE per token in [2, 4] in 1/8 steps.
    ``spike_row``: the first sequence sits at r = 0.5 with CE 30 per token (a real instability)."""
    rng = random.Random(str(key))
    ks = [rng.randint(min_k, 63) for _ in range(batch_size)]
    masked = [rng.choice([1, 2, 4, 8]) for _ in range(batch_size)]
    ce = [rng.randint(16, 32) / 8 for _ in range(batch_size)]
    if spike_row:
        ks[0], masked[0], ce[0] = 32, 8, 30.0
    r = [k / 64 for k in ks]
    w = [round(64 / k * 8) / 8 for k in ks]
    unweighted = [c * m for c, m in zip(ce, masked)]
    d = torch.float64
    return {
        "mask_ratio": torch.tensor(r, dtype=d), "t": torch.tensor([1 - x for x in r], dtype=d), "weight": torch.tensor(w, dtype=d),
        "per_seq_weighted_sum": torch.tensor([wi * u for wi, u in zip(w, unweighted)], dtype=d),
        "per_seq_unweighted_sum": torch.tensor(unweighted, dtype=d), "per_seq_masked_count": torch.tensor(masked, dtype=d),
        "normalizer": float(seq_len * batch_size),
        "sample_index": torch.tensor([rng.randint(0, 10 ** 6) for _ in range(batch_size)]),
        "dataset_index": torch.tensor([rng.randint(0, 2) for _ in range(batch_size)]),
        "dataset_sample_index": torch.tensor([rng.randint(0, 10 ** 5) for _ in range(batch_size)]),
    }


def concat(mbs) -> dict:
    out = {k: torch.cat([mb[k] for mb in mbs]) for k in mbs[0] if k != "normalizer"}
    out["normalizer"] = sum(mb["normalizer"] for mb in mbs)
    return out


def stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VOLATILE}


def test_bucket_edges_labels_and_assignment():
    assert make_bucket_edges(TelemetryConfig()) == [i / 10 for i in range(11)]
    edges = make_bucket_edges(TelemetryConfig(log_spaced_low_buckets=2, log_spaced_min_ratio=1e-3))
    assert edges[0] == 0.0 and edges[3:] == [i / 10 for i in range(1, 11)]
    assert edges[1] == pytest.approx(0.1 * 0.01 ** (2 / 3)) and edges[2] == pytest.approx(0.1 * 0.01 ** (1 / 3))
    # polynomial scheduler kappa = t^2: r = 1 - t^2, t = sqrt(1 - r)
    b = Buckets(edges, lambda r: math.sqrt(1 - r))
    idx = b.index(torch.tensor([0.0, 0.001, 0.0999, 0.1, 0.55, 0.9, 1.0]))
    assert idx.tolist() == [0, 0, 2, 3, 7, 11, 11]
    assert b.names[0] == "bucket_00" and b.names[-1] == "bucket_11"
    assert b.label(3) == "r∈[0.1, 0.2) t∈(0.894, 0.9487]"
    assert b.label(11) == "r∈[0.9, 1] t∈[0, 0.316]"
    assert b.t_range(0)[1] == 1.0 and b.t_range(0)[0] == pytest.approx(math.sqrt(1 - edges[1]))
    with pytest.raises(Exception, match="bucket_edges"):
        TelemetryConfig(bucket_edges=[0.0, 0.5, 0.4, 1.0])


def test_micro_batch_accumulation_equals_one_big_batch(tmp_path):
    cfg = TelemetryConfig(wandb="disabled", log_spaced_low_buckets=2)
    mbs = [micro_batch(("accum", i)) for i in range(3)]
    with Telemetry(cfg, str(tmp_path / "micro")) as a, Telemetry(cfg, str(tmp_path / "big")) as b:
        for mb in mbs:
            record(a, mb)
        record(b, concat(mbs))
        ra, rb = stable(a.end_step(1)), stable(b.end_step(1))
    assert ra.pop("train/micro_batches") == 3 and rb.pop("train/micro_batches") == 1
    assert ra == rb
    # and the means are the ratios of the raw sums, bucket by bucket
    big = concat(mbs)
    bucket = Buckets(make_bucket_edges(cfg)).index(big["mask_ratio"])
    for i in set(bucket.tolist()):
        sel = bucket == i
        name = f"train/bucket_{i:02d}"
        assert ra[f"{name}/loss"] == float(big["per_seq_weighted_sum"][sel].sum()) / float(big["per_seq_masked_count"][sel].sum())
        assert ra[f"{name}/ce"] == float(big["per_seq_unweighted_sum"][sel].sum()) / float(big["per_seq_masked_count"][sel].sum())
        assert ra[f"{name}/sequences"] == int(sel.sum())
        assert ra[f"{name}/mean_weight"] == float(big["weight"][sel].sum()) / int(sel.sum())
    assert ra["train/loss"] == float(big["per_seq_weighted_sum"].sum()) / big["normalizer"]
    contributions = sum(v for k, v in ra.items() if k.endswith("/contribution"))
    assert contributions == pytest.approx(ra["train/loss"], rel=1e-12)


def test_weighting_variance_explained():
    """All sequences with the same CE: the spread of w*CE is entirely the weights'. Same w: none of it is."""
    buckets = Buckets([i / 10 for i in range(11)])
    vec = buckets.zeros("cpu")
    from megadfm.training.telemetry.buckets import per_sequence_rows

    def fill(w, ce):
        v = buckets.zeros("cpu")
        r = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=torch.float64)
        m = torch.full((4,), 4.0, dtype=torch.float64)
        us = torch.tensor(ce, dtype=torch.float64) * m
        rows = per_sequence_rows(r, 1 - r, torch.tensor(w, dtype=torch.float64), us * torch.tensor(w, dtype=torch.float64), us, m)
        buckets.table(v).index_add_(0, buckets.index(r), rows)
        buckets.extras(v)[0] += 256
        return summarize(v, buckets, "train")

    only_weights = fill([20.0, 3.3, 1.7, 1.05], [3.0, 3.0, 3.0, 3.0])
    assert only_weights["train/weighting_var_explained"] == pytest.approx(1.0)
    assert only_weights["train/seq_std_unweighted"] == pytest.approx(0.0, abs=1e-12)
    only_ce = fill([2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 4.0, 8.0])
    assert only_ce["train/weighting_var_explained"] == pytest.approx(0.0)
    assert summarize(vec, buckets, "train")["train/loss"] is None  # empty: no division by zero


def _reduction_worker(rank: int, world_size: int, run_dir: str):
    import torch.distributed as dist

    calls = []
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        calls.append(1)
        return real_all_reduce(*args, **kwargs)

    dist.all_reduce = counting_all_reduce
    from megadfm.training.telemetry.reduce import all_gather_objects, all_reduce_sum

    ranks = dict(rank=rank, world_size=world_size, is_writer=rank == 0, reduce=all_reduce_sum(), gather=all_gather_objects())
    out = {}
    for mode in ("log_step", "step"):
        calls.clear()
        cfg = TelemetryConfig(wandb="disabled", spike_detection=mode, log_spaced_low_buckets=2)
        with Telemetry(cfg, os.path.join(run_dir, mode), log_interval=2, **ranks) as tel:
            records = []
            for step in range(1, 5):
                for micro in range(2):
                    record(tel, micro_batch((rank, step, micro)))
                assert not tel.check_spike(step).is_spike
                rec = tel.end_step(step)
                if rec is not None:
                    records.append(stable(rec))
        out[mode] = {"records": records, "all_reduces": len(calls)}

    # a real instability on rank 1 only: both ranks get the same verdict; the event holds both ranks' sequences.
    # (r >= 1/4 here: the heavy-tailed 1/r weights of tiny r would need a longer warm-up than this short run has)
    cfg = TelemetryConfig(wandb="disabled", spike_window=20, spike_warmup=8, spike_action="skip_step", spike_threshold=6.0)
    decisions = []
    with Telemetry(cfg, os.path.join(run_dir, "spike"), log_interval=5, **ranks) as tel:
        for step in range(1, 16):
            mbs = [micro_batch(("spike", rank, step, m), batch_size=8, spike_row=(step == 13 and rank == 1 and m == 0), min_k=16)
                   for m in range(2)]
            for mb in mbs:
                record(tel, mb, replay={"seed": 1000 * step + rank})
            d = tel.check_spike(step)
            decisions.append((d.action, d.label))
            tel.end_step(step)
            if step == 13:
                recorded = [int(i) for mb in mbs for i in mb["sample_index"]]
        out["spike"] = {"decisions": decisions, "sample_index_step13": recorded, "skipped_total": tel.window.skipped_total}
    return out


def test_two_ranks_reduce_to_exact_global_sums(tmp_path):
    results = run_distributed(_reduction_worker, world_size=2, args=(str(tmp_path / "dist"),), timeout=180)

    # the same micro-batches, all in one process without a process group
    for mode in ("log_step", "step"):
        cfg = TelemetryConfig(wandb="disabled", spike_detection=mode, log_spaced_low_buckets=2)
        expected = []
        with Telemetry(cfg, str(tmp_path / f"single-{mode}"), log_interval=2) as tel:
            for step in range(1, 5):
                for rank in range(2):
                    for micro in range(2):
                        record(tel, micro_batch((rank, step, micro)))
                rec = tel.end_step(step)
                if rec is not None:
                    expected.append(stable(rec))
        for rank in range(2):
            got = results[rank][mode]
            assert got["records"] == expected, f"rank {rank}, spike_detection={mode}"
        # log_step: one all-reduce per logging step (2); step: one per step (4), which the logging reuses
        assert results[0][mode]["all_reduces"] == {"log_step": 2, "step": 4}[mode]
        lines = (tmp_path / "dist" / mode / "telemetry" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [2, 4]  # written by rank 0 only

    spike0, spike1 = results[0]["spike"], results[1]["spike"]
    assert spike0["decisions"] == spike1["decisions"]
    fired = [(step + 1, d) for step, d in enumerate(spike0["decisions"]) if d[0] != "none"]
    assert fired == [(13, ("skip_step", "instability"))]
    assert spike0["skipped_total"] == 1
    events = [json.loads(line) for line in (tmp_path / "dist" / "spike" / "telemetry" / "spikes.jsonl").read_text().splitlines()]
    assert len(events) == 1 and events[0]["step"] == 13 and events[0]["skipped"] is True
    seqs = events[0]["sequences"]
    assert len(seqs) == 2 * 2 * 8
    for rank, result in enumerate(results):
        assert [s["sample_index"] for s in seqs if s["rank"] == rank] == result["spike"]["sample_index_step13"]
    culprit = [s for s in seqs if s["rank"] == 1 and s["micro_batch"] == 0 and s["row"] == 0][0]
    assert culprit["mask_ratio"] == 0.5 and culprit["unweighted_sum"] == 240.0
    assert {r["seed"] for r in events[0]["replay"]} == {13000, 13001}
    assert any(b["mask_ratio"] == [0.5, 0.6] for b in events[0]["buckets"])
