"""Kernels, one file per op, each a plain-PyTorch reference plus an optional fused path with the
same signature; :func:`select_kernels` picks one per op for `kernels: auto | torch | fused`."""

from megadfm.model.kernels.backend import (BACKENDS, KernelSet, KernelUnavailable, KernelUnavailableError,
                                           select_kernels)

__all__ = ["BACKENDS", "KernelSet", "KernelUnavailable", "KernelUnavailableError", "select_kernels"]
