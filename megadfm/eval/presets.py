"""Pinned sampler configurations: a name fixes every setting that changes a score, so two people who
run ``--sampler euler-32`` get the same numbers (the full config is recorded in every result anyway).
Flags of tools/evaluate.py override single fields, and the result records the final config."""

from __future__ import annotations

from typing import Dict

from megadfm.dfm.sampler_config import SamplerConfig

SAMPLER_PRESETS: Dict[str, Dict] = {
    "euler-16": dict(method="euler", steps=16, temperature=0.0, top_p=1.0, seed=0),
    "euler-32": dict(method="euler", steps=32, temperature=0.0, top_p=1.0, seed=0),
    "euler-64": dict(method="euler", steps=64, temperature=0.0, top_p=1.0, seed=0),
    "confidence-16": dict(method="confidence", steps=16, confidence="probability", temperature=0.0, seed=0),
    "confidence-32": dict(method="confidence", steps=32, confidence="probability", temperature=0.0, seed=0),
    "confidence-32-block8": dict(method="confidence", steps=32, block_length=8, confidence="probability", temperature=0.0,
                                 seed=0),
    # Fast-dLLM-style parallel decoding: blocks of 32 new tokens, every position whose p(token) >= 0.9 goes at once
    # (at least one per step), steps 32 = a per-block CAP (a block of 32 never needs more; its last step takes
    # the rest). Greedy, so a score differs between the three only by the cache: none is the exact sampler, prefix
    # and dual are approximations (megadfm/dfm/sampling/cached_forward.py).
    "threshold-0.9": dict(method="threshold", steps=32, block_length=32, threshold=0.9, threshold_mode="fixed",
                          confidence="probability", temperature=0.0, cache="none", seed=0),
    "threshold-0.9-prefix": dict(method="threshold", steps=32, block_length=32, threshold=0.9, threshold_mode="fixed",
                                 confidence="probability", temperature=0.0, cache="prefix", seed=0),
    "threshold-0.9-dual": dict(method="threshold", steps=32, block_length=32, threshold=0.9, threshold_mode="fixed",
                               confidence="probability", temperature=0.0, cache="dual", seed=0),
    # the same decoding for full DFM and a block-diffusion model (dfm.mode: block, block_size 16), so the two can be
    # compared: blocks of 16, p >= 0.9 at once, exact (no cache; a block model's prefix cache is exact too)
    "threshold-0.9-block16": dict(method="threshold", steps=16, block_length=16, threshold=0.9, threshold_mode="fixed",
                                  confidence="probability", temperature=0.0, cache="none", seed=0),
    "greedy": dict(method="euler", steps=32, temperature=0.0, seed=0),   # AR baselines read temperature/top_p/seed only
    "sample-t0.8": dict(method="euler", steps=32, temperature=0.8, top_p=0.95, seed=0),
}


def sampler_from_preset(name: str, **overrides) -> SamplerConfig:
    if name not in SAMPLER_PRESETS:
        raise ValueError(f"--sampler {name!r}: unknown preset; known: {', '.join(SAMPLER_PRESETS)}")
    return SamplerConfig(**{**SAMPLER_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})
