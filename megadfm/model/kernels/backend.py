"""Kernel backend selection: `kernels: auto | torch | fused` (ModelConfig.kernels, docs/DESIGN.md §4).

Every op has a plain-PyTorch reference and an optional fused implementation with the same
signature, each in its own file of this package. This module resolves one implementation per op
for one device type and says what it chose:

- ``torch``: the references, everywhere (what CPU and CI run).
- ``fused``: the fused implementation of every op; any op whose fused path cannot run here (a
  package missing, no CUDA device) raises :class:`KernelUnavailableError` naming the op, the
  missing package and how to get it. Never a silent fallback.
- ``auto``: fused where it can run, the reference elsewhere; one log line per op with the reason.

Each op's fused path is a list of named candidates (``FUSED`` in its file, tried in the order of
``DEFAULT``): stock PyTorch first (``torch.nn.attention.varlen``, ``torch.compile`` -> Triton),
liger-kernel before it where liger has the op and is importable. Others (flash-attn, apex) run only
when named in ``model.kernel_impls`` (e.g. ``{attention: flash_attn}``). Whatever is chosen, the log
line says which candidate and why the ones before it were passed over.
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

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


def select_kernels(backend: str, device_type: str, log: bool = True,
                   impls: Optional[Mapping[str, str]] = None) -> KernelSet:
    """Resolve every op for ``device_type`` ('cpu', 'cuda', ...) under ``backend``.

    Each op module provides ``TORCH`` (a :class:`Impl` of the reference), ``FUSED`` (candidate name
    -> builder taking the device type, returning an :class:`Impl` or raising :class:`KernelUnavailable`),
    ``DEFAULT`` (the candidates tried, in order, when none is named) and ``fused(device_type, name)``.
    ``impls`` names one candidate per op (``model.kernel_impls``); unknown ops or names are errors.
    """
    if backend not in BACKENDS:
        raise ValueError(f"kernels must be one of {', '.join(BACKENDS)}, got {backend!r}")
    ops = _ops()
    impls = dict(impls or {})
    _check_names(impls, dict(ops))
    impls_by_op: Dict[str, Impl] = {}
    reasons: Dict[str, str] = {}
    missing: List[str] = []
    for op, module in ops:
        if backend == "torch":
            impls_by_op[op], reasons[op] = module.TORCH, "kernels: torch requested"
            continue
        try:
            impl = module.fused(device_type, impls.get(op))
            impls_by_op[op] = impl
            reasons[op] = impl.note or "fused path importable and on CUDA"
        except KernelUnavailable as why:
            if backend == "fused":
                missing.append(f"  {op}: {why}")
                continue
            impls_by_op[op], reasons[op] = module.TORCH, f"fused unavailable: {why}"
    if missing:
        raise KernelUnavailableError(
            "model.kernels is 'fused' but these fused kernels cannot run on this machine "
            f"(device '{device_type}'):\n" + "\n".join(missing) +
            "\nRun on a CUDA machine (PyTorch's own kernels need nothing else; pip install -e '.[gpu]' adds liger-kernel), "
            "or set model.kernels to 'auto' or 'torch'.")
    chosen = {op: impl.name for op, impl in impls_by_op.items()}
    kernels = KernelSet(
        backend=backend, device_type=device_type,
        rms_norm=impls_by_op["rmsnorm"].fns["rms_norm"],
        rotary=impls_by_op["rotary"].fns["apply_rotary"],
        attention=impls_by_op["attention"].fns["attention"],
        attention_is_varlen=bool(impls_by_op["attention"].fns.get("varlen", False)),
        adaln_modulate=impls_by_op["adaln"].fns["adaln_modulate"],
        gated_residual=impls_by_op["adaln"].fns["gated_residual"],
        linear_cross_entropy=impls_by_op["linear_cross_entropy"].fns["linear_cross_entropy"],
        weighted_linear_cross_entropy=impls_by_op["linear_cross_entropy"].fns["weighted_linear_cross_entropy"],
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
    note: str = ""  # why this candidate (and not the ones before it); the reason auto and fused log


def first_available(op: str, candidates: Mapping[str, Callable[[str], Impl]], default: Sequence[str],
                    device_type: str, name: Optional[str] = None) -> Impl:
    """The named candidate, or the first of ``default`` that can run; KernelUnavailable lists every reason.

    A named candidate is the only one tried: asking for flash-attn and getting something else would be
    a silent substitution.
    """
    if name is not None and name not in candidates:
        raise ValueError(f"model.kernel_impls.{op}: unknown implementation {name!r}; one of {', '.join(candidates)}")
    order = [name] if name is not None else list(default)
    passed: List[str] = []
    for candidate in order:
        try:
            impl = candidates[candidate](device_type)
        except KernelUnavailable as why:
            passed.append(f"{candidate}: {why}")
            continue
        how = f"named in model.kernel_impls.{op}" if name is not None else f"first available of {', '.join(order)}"
        note = how + ("" if not passed else "; passed over: " + "; ".join(passed))
        return Impl(impl.name, impl.fns, note)
    raise KernelUnavailable(" | ".join(passed))


def _check_names(impls: Mapping[str, str], modules: Mapping[str, object]) -> None:
    for op, name in impls.items():
        if op not in modules:
            raise ValueError(f"model.kernel_impls: unknown op {op!r}; ops are {', '.join(modules)}")
        if name not in modules[op].FUSED:
            raise ValueError(f"model.kernel_impls.{op}: unknown implementation {name!r}; one of "
                             f"{', '.join(modules[op].FUSED)}")


_COMPILED: Dict[Callable, Callable] = {}


def compiled(device_type: str, what: str, fn: Callable) -> Callable:
    """``torch.compile(fn, dynamic=True)`` (Inductor -> Triton), once per function per process.

    Needs CUDA and an importable Triton; checks that ``torch.compile`` exists (feature, not version).
    Compilation itself happens at the first call.
    """
    require(device_type, what, ("triton", "triton", "pip install triton (PyTorch's CUDA wheels ship it)"))
    if not hasattr(torch, "compile"):
        raise KernelUnavailable(f"{what}: this torch has no torch.compile")
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn]
