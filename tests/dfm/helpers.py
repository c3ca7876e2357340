"""Shared helpers of the DFM tests: record the model's inputs during sampling, check t against the path."""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch

from megadfm.dfm.schedulers import Scheduler


class Recorder:
    """Forward hook on a model: the (input_ids, t) of every evaluation, in order."""

    def __init__(self, model: torch.nn.Module):
        self.calls: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self.handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output) -> None:
        self.calls.append((args[0].clone(), kwargs["t"].clone()))

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def generation_mask(starts: List[int], counts: List[int], seq_len: int) -> torch.Tensor:
    cols = torch.arange(seq_len)[None, :]
    start = torch.tensor(starts)[:, None]
    return (cols >= start) & (cols < start + torch.tensor(counts)[:, None])


def assert_time_matches_mask_ratio(calls, gen: torch.Tensor, mask_id: int, scheduler: Scheduler, exact: bool) -> None:
    """At every evaluation the model's t is the time at which training produces the input's mask ratio.

    exact (confidence sampler): per row, r(t_b) equals the masked fraction of the row's new positions.
    Otherwise (Euler, random unmasking, one t for all rows): the pooled masked fraction is within
    5 binomial standard errors (+0.02) of r(t).
    """
    assert calls, "the model was never evaluated"
    for x, t in calls:
        masked = (x == mask_id) & gen
        r = scheduler.mask_ratio(t.double())
        if exact:
            frac = masked.sum(1).double() / gen.sum(1).double()
            torch.testing.assert_close(r, frac, atol=1e-5, rtol=0)
        else:
            assert torch.equal(t, t[:1].expand_as(t))
            n = int(gen.sum())
            frac = float(masked.sum()) / n
            r0 = float(r[0])
            assert abs(frac - r0) <= 5 * (r0 * (1 - r0) / n) ** 0.5 + 0.02, (frac, r0, float(t[0]))


def tiny_sampler_model(vocab: int, mask: int):
    """The small random Qwen3DFM the sampler tests decode with (eval mode)."""
    from megadfm.model import ModelConfig, Qwen3DFM

    m = Qwen3DFM(ModelConfig(vocab_size=vocab, mask_token_id=mask, hidden_size=32, intermediate_size=64,
                             num_attention_heads=4, num_key_value_heads=2, kernels="torch"), seed=0)
    return m.eval()


def memorize(model: torch.nn.Module, batch, dfm, steps: int, lr: float, seed: int, pad_token_id: int,
             on_step: Optional[Callable[[int], None]] = None) -> torch.nn.Module:
    """Train ``model`` on the one ``batch`` with dfm_loss until it has memorised it (the overfit tests):
    plain AdamW, 20 warm-up steps then cosine decay, t drawn per row from ``seed``, one thread (a model this
    small gains nothing from a second one and loses a lot on a busy machine). ``on_step(step)`` runs before
    each step (a snapshot part-way). Returns the model in eval mode."""
    from megadfm.dfm.loss import dfm_loss
    from megadfm.dfm.schedulers import make_scheduler
    from megadfm.dfm.time_sampling import sample_times

    scheduler = make_scheduler(dfm)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in range(steps):
            if on_step is not None:
                on_step(step)
            t = sample_times(batch["input_ids"].shape[0], dfm, scheduler, generator=gen)
            out = dfm_loss(model, batch, t, dfm, scheduler, gen, pad_token_id=pad_token_id)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
