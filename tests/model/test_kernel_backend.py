"""Backend selection: auto says what it chose and why; fused never falls back silently."""

from __future__ import annotations

import logging

import pytest
import torch

from megadfm.model.kernels import KernelUnavailableError, select_kernels
from tests.model.tiny import tiny_model

OPS = ["rmsnorm", "rotary", "attention", "adaln", "linear_cross_entropy"]
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only choice; this machine has CUDA")


@cpu_only
def test_auto_picks_torch_on_cpu_and_logs_why(caplog):
    with caplog.at_level(logging.INFO, logger="megadfm.model.kernels"):
        model = tiny_model(kernels="auto")
    kernels = model.kernels_for(torch.device("cpu"))
    assert set(kernels.chosen) == set(OPS)
    assert all(name.startswith("torch") for name in kernels.chosen.values())
    text = caplog.text
    for op in OPS:
        assert f"kernels: {op} -> torch" in text
    assert "CUDA only" in text and "flash-attn" in text and "liger-kernel" in text


@cpu_only
def test_fused_requested_on_cpu_raises_naming_packages():
    with pytest.raises(KernelUnavailableError) as err:
        tiny_model(kernels="fused")
    message = str(err.value)
    for needle in ["flash-attn", "liger-kernel", "apex", "triton", "attention:", "linear_cross_entropy:", "'.[gpu]'"]:
        assert needle in message


def test_torch_backend_is_the_reference_everywhere():
    kernels = select_kernels("torch", "cuda", log=False)
    assert all(name.startswith("torch") for name in kernels.chosen.values())
    assert kernels.reasons["attention"] == "kernels: torch requested"


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match="auto, torch, fused"):
        select_kernels("fast", "cpu")
