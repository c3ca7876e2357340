"""Backend selection: auto says what it chose and why; fused never falls back silently."""

from __future__ import annotations

import logging

import pytest
import torch

from megadfm.model.kernels import KernelUnavailable, KernelUnavailableError, select_kernels
from megadfm.model.kernels.backend import Impl, first_available
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
    assert "CUDA only" in text and "torch_varlen" in text and "liger-kernel" in text and "triton" in text


@cpu_only
def test_fused_requested_on_cpu_raises_naming_packages():
    with pytest.raises(KernelUnavailableError) as err:
        tiny_model(kernels="fused")
    message = str(err.value)
    for needle in ["PyTorch varlen attention", "liger-kernel", "triton", "attention:", "linear_cross_entropy:", "'.[gpu]'"]:
        assert needle in message


def test_torch_backend_is_the_reference_everywhere():
    kernels = select_kernels("torch", "cuda", log=False)
    assert all(name.startswith("torch") for name in kernels.chosen.values())
    assert kernels.reasons["attention"] == "kernels: torch requested"


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match="auto, torch, fused"):
        select_kernels("fast", "cpu")


@cpu_only
def test_a_named_alternative_is_the_only_candidate_tried():
    """Naming flash_attn never silently gives torch_varlen: fused fails naming flash-attn, auto logs why it fell back."""
    with pytest.raises(KernelUnavailableError) as err:
        select_kernels("fused", "cpu", log=False, impls={"attention": "flash_attn", "rmsnorm": "apex"})
    message = str(err.value)
    assert "flash-attn" in message and "apex" in message and "torch_varlen" not in message
    kernels = select_kernels("auto", "cpu", log=False, impls={"attention": "flash_attn"})
    assert kernels.chosen["attention"].startswith("torch") and "flash_attn: " in kernels.reasons["attention"]


def test_unknown_op_or_implementation_name_is_an_error_naming_the_valid_ones():
    with pytest.raises(ValueError, match="unknown op 'attn'.*attention"):
        select_kernels("auto", "cpu", log=False, impls={"attn": "flash_attn"})
    with pytest.raises(ValueError, match="kernel_impls.attention: unknown implementation 'sdpa'; one of torch_varlen, flash_attn"):
        select_kernels("fused", "cpu", log=False, impls={"attention": "sdpa"})


def test_first_available_says_which_candidates_it_passed_over_and_why():
    def missing(device_type):
        raise KernelUnavailable("package X is not importable")

    def present(device_type):
        return Impl("the second", {"f": len})

    candidates = {"first": missing, "second": present}
    impl = first_available("op", candidates, ("first", "second"), "cuda")
    assert impl.name == "the second"
    assert impl.note == "first available of first, second; passed over: first: package X is not importable"
    assert first_available("op", candidates, ("first", "second"), "cuda", "second").note == "named in model.kernel_impls.op"
    with pytest.raises(KernelUnavailable, match="^first: package X is not importable$"):
        first_available("op", candidates, ("first", "second"), "cuda", "first")
