"""Stratified time sampling: exactly one sample per stratum, also across simulated ranks."""

import pytest
import torch

from megadfm.dfm.config import DFMConfig
from megadfm.dfm.schedulers import make_scheduler
from megadfm.dfm.time_sampling import max_time, sample_times, step_seed, stratified_uniforms


def _strata(t: torch.Tensor, t_max: float, g: int) -> list:
    return sorted(torch.floor(t.double() / t_max * g).long().tolist())


@pytest.mark.parametrize("g", [1, 7, 64, 1000])
def test_stratified_uniforms_one_per_stratum(g):
    for seed in range(5):
        u = stratified_uniforms(g, seed)
        assert sorted(torch.floor(u * g).long().tolist()) == list(range(g))
        assert float(u.min()) >= 0.0 and float(u.max()) < 1.0


@pytest.mark.parametrize("scheduler", ["linear", "polynomial", "cosine"])
def test_sample_times_stratified_single_process(scheduler):
    cfg = DFMConfig(scheduler=scheduler, scheduler_exponent=2.0, mask_ratio_eps=1e-2)
    s = make_scheduler(cfg)
    gen = torch.Generator().manual_seed(0)
    t = sample_times(32, cfg, s, generator=gen)
    t_max = max_time(cfg, s)
    assert _strata(t, t_max, 32) == list(range(32))
    r = s.mask_ratio(t.double())
    assert float(r.min()) >= cfg.mask_ratio_eps - 1e-6 and float(r.max()) <= 1.0


def test_stratified_across_two_simulated_ranks():
    cfg = DFMConfig()
    s = make_scheduler(cfg)
    seed = step_seed(1234, step=17)
    g, per_rank = 16, 8
    parts = [sample_times(per_rank, cfg, s, global_batch_size=g, rank_offset=rank * per_rank, seed=seed)
             for rank in range(2)]
    assert _strata(torch.cat(parts), max_time(cfg, s), g) == list(range(g))
    # every rank on its own is a random subset, not the lower or upper half
    assert _strata(parts[0], max_time(cfg, s), g) != list(range(per_rank))
    # the next step draws different times
    other = sample_times(per_rank, cfg, s, global_batch_size=g, rank_offset=0, seed=step_seed(1234, step=18))
    assert not torch.equal(other, parts[0])


def test_multi_rank_needs_the_shared_seed():
    cfg = DFMConfig()
    with pytest.raises(ValueError, match="seed"):
        sample_times(4, cfg, make_scheduler(cfg), global_batch_size=8, rank_offset=0)


def test_uniform_time_sampling_range_and_mean():
    cfg = DFMConfig(time_sampling="uniform", mask_ratio_eps=0.1)
    s = make_scheduler(cfg)
    t = sample_times(20000, cfg, s, generator=torch.Generator().manual_seed(0))
    r = s.mask_ratio(t.double())
    assert float(r.min()) >= 0.1 - 1e-6 and float(r.max()) <= 1.0
    # linear: r ~ U[eps, 1] like CoDA's sigma
    assert float(r.mean()) == pytest.approx(0.55, abs=0.01)
