"""Per-group global gradient norms from a real DeepSpeed engine (2 gloo ranks) equal the norms of an
unsharded torch copy trained on the same global batch, under ZeRO-3 and the other stages."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from megadfm.training.grad_norms import GROUPS, clip_coefficient, compute_grad_norms
from tests.training.dist_helpers import run_distributed

CLIP = 0.05  # small enough that clipping is active, so post-clip norms are really tested


class TinyTimeLM(nn.Module):
    """Names follow the megadfm model (embed_tokens, layers.*, time_embedding.*, lm_head) so group_of is realistic."""

    def __init__(self, vocab: int = 37, hidden: int = 24):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.time_embedding = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.layers = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(2)])
        self.norm = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, ids: torch.Tensor, t: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(ids) + self.time_embedding(t[:, None])[:, None, :]
        for layer in self.layers:
            h = h + torch.tanh(layer(h))
        logits = self.lm_head(self.norm(h))
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def group_of(name: str) -> str:
    if name.startswith("embed_tokens"):
        return "embeddings"
    if name.startswith("lm_head"):
        return "head"
    if name.startswith("time_embedding"):
        return "time_conditioning"
    return "backbone"


def _inputs(rank: int, micro: int):
    g = torch.Generator().manual_seed(1000 + 10 * rank + micro)
    ids = torch.randint(0, 37, (2, 8), generator=g)
    t = torch.rand(2, generator=g)
    targets = torch.randint(0, 37, (2, 8), generator=g)
    return ids, t, targets


def _reference_norms(model: nn.Module, world_size: int, gas: int):
    """Unsharded copy: the loss DeepSpeed optimises is the mean over ranks and micro-batches."""
    model.zero_grad()
    loss = sum(model(*_inputs(r, m)) for r in range(world_size) for m in range(gas)) / (world_size * gas)
    loss.backward()
    sq = {g: 0.0 for g in GROUPS}
    for name, p in model.named_parameters():
        sq[group_of(name)] += float(p.grad.double().pow(2).sum())
    pre = {g: v ** 0.5 for g, v in sq.items()}
    total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP))
    post = {g: 0.0 for g in GROUPS}
    for name, p in model.named_parameters():
        post[group_of(name)] += float(p.grad.double().pow(2).sum())
    return total, pre, {g: v ** 0.5 for g, v in post.items()}


def _zero_worker(rank: int, world_size: int, stages, gas: int):
    import deepspeed

    out = {}
    for stage in stages:
        torch.manual_seed(0)
        model = TinyTimeLM()
        ref = copy.deepcopy(model)
        config = {
            "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": gas, "gradient_clipping": CLIP,
            "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9, "wall_clock_breakdown": False,
            "zero_optimization": {"stage": stage, "reduce_bucket_size": 5e6, "allgather_bucket_size": 5e6,
                                  "stage3_param_persistence_threshold": 0},
        }
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
        for m in range(gas):
            loss = engine(*_inputs(rank, m))
            engine.backward(loss)
            if m < gas - 1:
                engine.step()  # DeepSpeed's contract: step() after every micro-batch; a no-op off the boundary
        assert engine.is_gradient_accumulation_boundary()
        norms = compute_grad_norms(engine, group_of, clip=CLIP)
        engine.step()
        out[stage] = {"ours": norms, "reference": _reference_norms(ref, world_size, gas),
                      "deepspeed_total": float(engine.get_global_grad_norm())}
        engine.destroy()
    return out


def _check(result: dict) -> None:
    norms = result["ours"]
    ref_total, ref_pre, ref_post = result["reference"]
    assert norms.total == pytest.approx(ref_total, rel=1e-5)
    assert norms.total == pytest.approx(result["deepspeed_total"], rel=1e-5)
    for g in GROUPS:
        assert ref_pre[g] > 0
        assert norms.groups[g] == pytest.approx(ref_pre[g], rel=1e-5), g
        assert norms.groups_post_clip[g] == pytest.approx(ref_post[g], rel=1e-4), g
    assert norms.clipped and norms.clip_coef == pytest.approx(CLIP / ref_total, rel=1e-4)
    assert norms.total_post_clip == pytest.approx(CLIP, rel=1e-4)


def test_grad_norms_match_unsharded_copy_under_zero_stages():
    # ZeRO-3 (partitioned params + grads) and ZeRO-2 (partitioned grads), 2 micro-batches per step; the
    # replicated-gradient path (ZeRO-0 / DDP) is the plain-module test below
    # TORCHDYNAMO_DISABLE: every ZeRO initialize imports DeepSpeed's Muon optimizer, whose torch.compile decorators
    # import inductor (~6 s per process, minutes on a loaded 2-core machine); nothing here compiles anything
    results = run_distributed(_zero_worker, world_size=2, args=((3, 2), 2), timeout=300, env={"TORCHDYNAMO_DISABLE": "1"})
    for rank_result in results:
        for stage, result in rank_result.items():
            _check(result)
    # every rank reports the same global numbers
    for stage in (3, 2):
        assert results[0][stage]["ours"].total == results[1][stage]["ours"].total


def test_grad_norms_plain_module_and_clip_coefficient():
    torch.manual_seed(0)
    model = TinyTimeLM()
    model(*_inputs(0, 0)).backward()
    norms = compute_grad_norms(model, group_of, clip=0.0)
    expected = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    assert norms.total == pytest.approx(float(expected), rel=1e-6)
    assert norms.clip_coef == 1.0 and not norms.clipped
    assert clip_coefficient(10.0, 1.0) == pytest.approx(1.0 / (10.0 + 1e-6))
    assert clip_coefficient(0.5, 1.0) == 1.0
    with pytest.raises(ValueError, match="group_of"):
        compute_grad_norms(model, lambda name: "nonsense")
