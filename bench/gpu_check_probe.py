"""Stage a of bench/gpu_check.sh: what this machine is, as one JSON line on stdout.

Python, torch (and its CUDA), Triton, transformers, DeepSpeed and liger-kernel versions; the GPU,
its compute capability and the MFU peak-table entry used for it; torch's varlen_attn signature; and
what ``kernels: auto`` and ``kernels: fused`` resolve to, with the reasons, at the shape the bench uses.

    python bench/gpu_check_probe.py        # run by gpu_check.sh with the bundle on PYTHONPATH
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
PROBE_PREFIX = "GPU_CHECK_PROBE "


def version(module: str):
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - the reason is the fact reported
        return f"not importable: {type(e).__name__}: {e}"
    return getattr(mod, "__version__", "importable (no __version__)")


def probe() -> dict:
    import torch

    facts = {"python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
             "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    for module in ("triton", "transformers", "deepspeed", "liger_kernel", "flash_attn", "apex", "pytest"):
        facts[module] = version(module)
    try:
        from torch.nn.attention import varlen
        facts["varlen_attn_signature"] = str(inspect.signature(varlen.varlen_attn))
    except Exception as e:  # noqa: BLE001
        facts["varlen_attn_signature"] = f"unavailable: {type(e).__name__}: {e}"
    if torch.cuda.is_available():
        from megadfm.training.mfu import device_peak

        entry = device_peak()
        facts.update(device_name=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()),
                     memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                     peak_entry=None if entry is None else entry._asdict())
    from megadfm.model.kernels import KernelUnavailableError, select_kernels

    device = "cuda" if torch.cuda.is_available() else "cpu"
    auto = select_kernels("auto", device, log=False)
    facts["kernels_auto"] = {op: {"chosen": auto.chosen[op], "reason": auto.reasons[op]} for op in auto.chosen}
    try:
        fused = select_kernels("fused", device, log=False)
        facts["kernels_fused"] = dict(fused.chosen)
    except KernelUnavailableError as e:
        facts["kernels_fused"] = f"error: {e}"
    return facts


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    facts = probe()
    for key, value in facts.items():
        if key.startswith("kernels_auto"):
            for op, how in value.items():
                print(f"kernels auto: {op} -> {how['chosen']} ({how['reason']})")
        else:
            print(f"{key}: {value}")
    print(PROBE_PREFIX + json.dumps(facts, default=str), flush=True)


if __name__ == "__main__":
    main()
