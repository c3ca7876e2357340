"""Validation per mask-ratio bucket: every bucket evaluated at its fixed mid mask ratio, all buckets
reduced in one all-reduce, and ``val/loss`` / ``val/ce`` estimated as a midpoint quadrature over t.

``val/bucket_XX/loss`` and ``/ce`` mean what they mean in training. ``val/loss`` and ``val/ce`` weight
each bucket by its width in t (training draws t uniformly), so they estimate the same averages as
``train/loss`` and ``train/ce``. A bucket whose mid ratio masks no token of the validation batches
has a null CE and is left out of the quadrature.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Sequence

import torch

from megadfm.dfm.loss import DFMLossOutput
from megadfm.training.telemetry.buckets import COL, Buckets, per_sequence_rows, summarize
from megadfm.training.telemetry.reduce import ReduceFn, local_sum
from megadfm.training.telemetry.sinks import json_safe


def validation_points(buckets: Buckets) -> List[Dict[str, Any]]:
    """One evaluation point per bucket: its mid mask ratio and the t the scheduler maps it to."""
    return [{"bucket": i, "name": buckets.name(i), "label": buckets.label(i), "mask_ratio": buckets.midpoint(i),
             "t": buckets.t_of_mask_ratio(buckets.midpoint(i))} for i in range(len(buckets))]


def validation_record(step: int, buckets: Buckets, loss_at_t: Callable[[float], Sequence[DFMLossOutput]],
                      reduce: ReduceFn = local_sum) -> Dict[str, Any]:
    """Run ``loss_at_t(t)`` (this rank's validation batches at that t) for every bucket's point and build
    the ``kind: val`` record. ``loss_at_t`` must make the same collective calls on every rank (under
    ZeRO-3 a forward is one)."""
    points = validation_points(buckets)
    n, size = len(buckets), buckets.vector_size
    vec = torch.zeros(size + n, dtype=torch.float64)  # the bucket statistics, then one normalizer sum per bucket
    main = vec[:size]
    for p in points:
        for out in loss_at_t(p["t"]):
            rows = per_sequence_rows(out.mask_ratio, out.t, out.weight, out.per_seq_weighted_sum,
                                     out.per_seq_unweighted_sum, out.per_seq_masked_count)
            buckets.table(main)[p["bucket"]] += rows.to(vec.device).sum(0)
            normalizer = torch.as_tensor(out.normalizer, dtype=torch.float64).sum().cpu()
            buckets.extras(main)[0] += normalizer
            buckets.extras(main)[1] += 1
            vec[size + p["bucket"]] += normalizer
    vec = reduce(vec).cpu()
    main, per_bucket_normalizer = vec[:size], vec[size:].tolist()
    rec: Dict[str, Any] = {"kind": "val", "step": step, "time": time.time()}
    summary = summarize(main, buckets, "val")
    rec.update({k: v for k, v in summary.items() if not k.endswith(("/mean_t", "/mean_mask_ratio"))})
    table = buckets.table(main).tolist()
    num_w = num_u = den_n = den_m = 0.0
    for p in points:
        i, row = p["bucket"], table[p["bucket"]]
        rec[f"val/{p['name']}/mask_ratio"] = p["mask_ratio"]
        rec[f"val/{p['name']}/t"] = p["t"]
        seqs = row[COL["sequences"]]
        if seqs <= 0 or row[COL["masked_tokens"]] <= 0:
            continue
        lo, hi = buckets.t_range(i)
        width = hi - lo
        num_w += width * row[COL["weighted_sum"]] / seqs
        num_u += width * row[COL["unweighted_sum"]] / seqs
        den_n += width * per_bucket_normalizer[i] / seqs
        den_m += width * row[COL["masked_tokens"]] / seqs
    rec["val/loss"] = num_w / den_n if den_n > 0 else None
    rec["val/ce"] = num_u / den_m if den_m > 0 else None
    return json_safe(rec)
