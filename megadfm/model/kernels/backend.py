"""Kernel backend selection: `kernels: auto | torch | fused` (ModelConfig.kernels, docs/DESIGN.md §4).

Every op has a plain-PyTorch reference and an optional fused implementation with the same
signature, each in its own file of this package. This module resolves one implementation per op
for one device type and says what it chose:

- ``torch``: the references, everywhere (what CPU and CI run).
- ``fused``: the fused implementation of every op; any op whose fused path cannot run here (a
  package missing, no CUDA device) raises :class:`KernelUnavailableError` naming the op, the
  missing package and how to get it. Never a silent fallback.
- ``auto``: fused where it can run, the reference elsewhere; one log line per op with the reason.
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Tuple

import torch

logger = logging.getLogger("megadfm.model.kernels")

BACKENDS = ("auto", "torch", "fused")


class KernelUnavailable(Exception):
    """Raised by an op's ``fused(device_type)`` when its fused path cannot run; ``str()`` says why."""


class KernelUnavailableError(RuntimeError):
    """`kernels: fused` was requested but at least one fused op cannot run on this machine."""


@functools.lru_cache(maxsize=None)
def _try_import(module: str) -> Tuple[object, str]:
    """(module or None, why not). Cached: an import failure is probed once per process."""
    try:
        return importlib.import_module(module), ""
    except Exception as e:  # noqa: BLE001 - ImportError, or OSError/RuntimeError from a broken CUDA build;
        # never swallowed: the message becomes the reason that auto logs and fused raises.
        return None, f"{type(e).__name__}: {e}"


def require(device_type: str, what: str, *modules: Tuple[str, str, str]) -> List[object]:
    """Import each (module, pip package, install hint) and check the device is CUDA.

    Returns the modules, or raises KernelUnavailable listing every problem (each missing package by
    name, and the device), so one message says everything that stands between here and the fused path.
    """
    problems, found = [], []
    for module, package, hint in modules:
        mod, error = _try_import(module)
        if mod is None and not any(p.startswith(package + " ") for p in problems):
            problems.append(f"{package} is not importable ({error}); {hint}")
        found.append(mod)
    if device_type != "cuda":
        problems.append(f"{what} runs on CUDA only and this device is '{device_type}'")
    elif not torch.cuda.is_available():
        problems.append(f"{what} needs CUDA and torch.cuda.is_available() is False")
    if problems:
        raise KernelUnavailable("; ".join(problems))
    return found


@dataclass(frozen=True)
class KernelSet:
    """The implementation chosen for each op on one device type (all with the reference signatures)."""

    backend: str
    device_type: str
    rms_norm: Callable
    rotary: Callable
    attention: Callable
    attention_is_varlen: bool
    adaln_modulate: Callable
    gated_residual: Callable
    linear_cross_entropy: Callable
    weighted_linear_cross_entropy: Callable
    chosen: Mapping[str, str] = field(default_factory=dict)
    reasons: Mapping[str, str] = field(default_factory=dict)

def _ops() -> List[Tuple[str, object]]:
    from megadfm.model.kernels import adaln, attention, linear_cross_entropy, rmsnorm, rotary

    return [("rmsnorm", rmsnorm), ("rotary", rotary), ("attention", attention), ("adaln", adaln),
            ("linear_cross_entropy", linear_cross_entropy)]


def select_kernels(backend: str, device_type: str, log: bool = True) -> KernelSet:
    """Resolve every op for ``device_type`` ('cpu', 'cuda', ...) under ``backend``.

    Each op module provides ``TORCH`` (a :class:`Impl` of the reference) and ``fused(device_type)``
    returning the fused :class:`Impl` or raising :class:`KernelUnavailable` with the reason.
    """
    if backend not in BACKENDS:
        raise ValueError(f"kernels must be one of {', '.join(BACKENDS)}, got {backend!r}")
    impls: Dict[str, Impl] = {}
    reasons: Dict[str, str] = {}
    missing: List[str] = []
    for op, module in _ops():
        if backend == "torch":
            impls[op], reasons[op] = module.TORCH, "kernels: torch requested"
            continue
        try:
            impls[op] = module.fused(device_type)
            reasons[op] = "fused path importable and on CUDA"
        except KernelUnavailable as why:
            if backend == "fused":
                missing.append(f"  {op}: {why}")
                continue
            impls[op], reasons[op] = module.TORCH, f"fused unavailable: {why}"
    if missing:
        raise KernelUnavailableError(
            "model.kernels is 'fused' but these fused kernels cannot run on this machine "
            f"(device '{device_type}'):\n" + "\n".join(missing) +
            "\nInstall the GPU extras (pip install -e '.[gpu]') on a CUDA machine, or set model.kernels to 'auto' or 'torch'.")
    chosen = {op: impl.name for op, impl in impls.items()}
    kernels = KernelSet(
        backend=backend, device_type=device_type,
        rms_norm=impls["rmsnorm"].fns["rms_norm"],
        rotary=impls["rotary"].fns["apply_rotary"],
        attention=impls["attention"].fns["attention"],
        attention_is_varlen=bool(impls["attention"].fns.get("varlen", False)),
        adaln_modulate=impls["adaln"].fns["adaln_modulate"],
        gated_residual=impls["adaln"].fns["gated_residual"],
        linear_cross_entropy=impls["linear_cross_entropy"].fns["linear_cross_entropy"],
        weighted_linear_cross_entropy=impls["linear_cross_entropy"].fns["weighted_linear_cross_entropy"],
        chosen=chosen, reasons=reasons)
    if log:
        logger.info("kernels: backend=%s device=%s", backend, device_type)
        for op in chosen:
            logger.info("kernels: %s -> %s (%s)", op, chosen[op], reasons[op])
    return kernels


@dataclass(frozen=True)
class Impl:
    """One implementation of an op: a name for the log and its functions (reference signatures)."""

    name: str
    fns: Mapping[str, object]
