"""Each part of telemetry on its own, without torch.distributed: the accumulator's one reduction (with a
reduce function that plays a second rank), the spike monitor's rules, the metrics window's EMAs."""

from __future__ import annotations

import pytest
import torch

from megadfm.training.telemetry.accumulator import BucketAccumulator
from megadfm.training.telemetry.buckets import Buckets, make_bucket_edges, summarize
from megadfm.training.telemetry.config import TelemetryConfig
from megadfm.training.telemetry.spikes import SpikeMonitor
from megadfm.training.telemetry.window import MetricsWindow
from tests.training.telemetry_helpers import loss_output
from tests.training.test_telemetry_reduction import micro_batch


def test_accumulator_reduces_once_with_the_given_function():
    buckets = Buckets(make_bucket_edges(TelemetryConfig()))
    other_rank = BucketAccumulator(buckets)
    other_rank.add(loss_output(micro_batch("b")))
    theirs = other_rank.reduce()
    acc = BucketAccumulator(buckets, reduce=lambda vec: vec + theirs)  # the sum a 2-rank all-reduce would give
    acc.add(loss_output(micro_batch("a")))
    assert acc.has_pending and acc.num_reductions == 0
    summed = acc.reduce()
    assert acc.num_reductions == 1 and not acc.has_pending
    both = BucketAccumulator(buckets)
    for key in ("a", "b"):
        both.add(loss_output(micro_batch(key)))
    assert torch.equal(summed, both.reduce())


def test_accumulator_rejects_ragged_outputs():
    sums = micro_batch("x")
    sums["weight"] = sums["weight"][:2]
    with pytest.raises(ValueError, match="DFMLossOutput.weight has 2 elements"):
        BucketAccumulator(Buckets([0.0, 0.5, 1.0])).add(loss_output(sums))


def _summary_with(ce_bucket5: float, masked_bucket5: float, buckets: Buckets):
    acc = BucketAccumulator(buckets)
    r = torch.tensor([0.55, 0.75], dtype=torch.float64)
    m = torch.tensor([masked_bucket5, 64.0], dtype=torch.float64)
    ce = torch.tensor([ce_bucket5, 3.0], dtype=torch.float64)
    acc.add(loss_output({"mask_ratio": r, "t": 1 - r, "weight": 1 / r, "per_seq_weighted_sum": ce * m / r,
                         "per_seq_unweighted_sum": ce * m, "per_seq_masked_count": m, "normalizer": 256.0}))
    return summarize(acc.reduce(), buckets, "train")


@pytest.mark.parametrize("masked,fires", [(2.0, False), (64.0, True)])
def test_monitor_ignores_a_bucket_judged_on_too_few_tokens(masked, fires):
    cfg = TelemetryConfig(spike_warmup=5, spike_window=10, spike_min_bucket_tokens=16)
    buckets = Buckets(make_bucket_edges(cfg))
    monitor = SpikeMonitor(cfg, buckets)
    for step in range(1, 9):
        assert not monitor.judge(_summary_with(3.0 + 0.01 * (step % 3), masked, buckets), step).decision.is_spike
    judged = monitor.judge(_summary_with(30.0, masked, buckets), 9)
    v = judged.verdicts["train/bucket_05/ce"]
    assert v.fired is fires
    if not fires:
        assert v.reason == "too few masked tokens to judge"


def test_window_emas_and_counts():
    buckets = Buckets([0.0, 0.5, 1.0])
    window = MetricsWindow(buckets, ema_decay=0.5, clock=lambda: 100.0)
    for value in (4.0, 2.0):
        acc = BucketAccumulator(buckets)
        r = torch.tensor([0.75], dtype=torch.float64)
        acc.add(loss_output({"mask_ratio": r, "t": 1 - r, "weight": torch.ones(1, dtype=torch.float64),
                             "per_seq_weighted_sum": torch.tensor([value]), "per_seq_unweighted_sum": torch.tensor([value]),
                             "per_seq_masked_count": torch.tensor([1.0]), "normalizer": 1.0}))
        window.add_vector(acc.reduce())
        window.end_step(skipped=value == 2.0, grads=None, scalars={"opt/lr": value, "perf/tokens_per_s": value})
        rec = window.record(step=int(value))
    assert rec["train/loss"] == 2.0 and rec["train/loss_ema"] == 0.5 * 4.0 + 0.5 * 2.0
    assert rec["train/skipped_steps"] == 1 and window.skipped_total == 1
    assert rec["opt/lr"] == 2.0 and rec["perf/window_seconds"] == 0.0
    assert window.state_dict()["ema"]["train/loss"] == 3.0
