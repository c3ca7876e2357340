"""The response-length distribution of SFT batches: sums that add over micro-batches and ranks, and the
metrics read from them, checked against a hand count."""

from __future__ import annotations

import pytest
import torch

from megadfm.training.telemetry import response_lengths as rl
from megadfm.training.telemetry.buckets import Buckets, summarize
from megadfm.training.telemetry.config import TelemetryConfig


def test_histogram_mean_and_std_match_a_hand_count():
    slot = torch.zeros(rl.SIZE, dtype=torch.float64)
    rl.add(slot, torch.tensor([1, 7, 8, 15, 16]))
    rl.add(slot, torch.tensor([300, 9000]))  # a second micro-batch (or rank) adds to the same sums
    out = rl.summarize(slot, "train")
    values = [1, 7, 8, 15, 16, 300, 9000]
    mean = sum(values) / len(values)
    assert out["train/response_tokens/examples"] == 7
    assert out["train/response_tokens/mean"] == pytest.approx(mean)
    assert out["train/response_tokens/std"] == pytest.approx((sum((v - mean) ** 2 for v in values) / 7) ** 0.5)
    hist = {k.rsplit("/", 1)[1]: v for k, v in out.items() if "/hist/" in k}
    assert list(hist) == rl.bin_labels()
    assert hist["1-7"] == 2 and hist["8-15"] == 2 and hist["16-31"] == 1 and hist["256-511"] == 1 and hist["8192+"] == 1
    assert sum(hist.values()) == 7


def test_pretraining_records_carry_no_response_metrics_and_bad_lengths_are_refused():
    buckets = Buckets.from_config(TelemetryConfig())
    vec = buckets.zeros("cpu")
    assert not [k for k in summarize(vec, buckets, "train") if "response_tokens" in k]
    rl.add(buckets.response_slot(vec), torch.tensor([5]))
    assert summarize(vec, buckets, "train")["train/response_tokens/examples"] == 1
    with pytest.raises(ValueError, match="response_lengths must be >= 1"):
        rl.add(buckets.response_slot(vec), torch.tensor([3, 0]))
