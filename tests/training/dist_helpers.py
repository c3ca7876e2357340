"""Run a function in N real processes joined by a gloo process group (CPU multi-rank tests).

    from tests.training.dist_helpers import run_distributed

    def _worker(rank, world_size, scale):          # module level, so spawn can pickle it
        t = torch.tensor([float(rank + 1) * scale])
        torch.distributed.all_reduce(t)
        return t.item()

    def test_sum():
        assert run_distributed(_worker, world_size=2, args=(2.0,)) == [6.0, 6.0]

Each rank is a fresh ``spawn`` process with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/
``MASTER_PORT`` exported (so ``deepspeed.initialize`` finds the group and never looks for MPI),
``OMP_NUM_THREADS=1`` and ``DS_ACCELERATOR=cpu``. The group is initialised before ``fn`` runs and
destroyed after. Return values come back in rank order; an exception in any rank is re-raised in
the parent with that rank's traceback. A rank still running at ``timeout`` is killed (by pid).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

from megadfm.training.distributed import free_port, skip_shm_allreduce_op

WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}


def _entry(rank: int, world_size: int, port: int, fn: Callable, args: Sequence[Any], env: Dict[str, str], result_path: str) -> None:
    os.environ.update(WORKER_ENV)
    os.environ.update(env)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    outcome: Dict[str, Any]
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        skip_shm_allreduce_op()  # as every megadfm run does: nothing compiled, nothing left in /dev/shm
        dist.init_process_group("gloo", rank=rank, world_size=world_size, init_method=f"tcp://127.0.0.1:{port}")
        try:
            outcome = {"ok": True, "value": fn(rank, world_size, *args)}
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    except BaseException:  # reported to the parent with the traceback; the parent raises
        outcome = {"ok": False, "error": traceback.format_exc()}
    with open(result_path + ".tmp", "wb") as f:
        pickle.dump(outcome, f)
    os.replace(result_path + ".tmp", result_path)


def run_distributed(fn: Callable, world_size: int = 2, args: Sequence[Any] = (), timeout: float = 180.0,
                    env: Optional[Dict[str, str]] = None) -> List[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes; return the per-rank results."""
    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="megadfm-dist-") as tmp:
        paths = [os.path.join(tmp, f"rank{r}.pkl") for r in range(world_size)]
        procs = [ctx.Process(target=_entry, args=(r, world_size, port, fn, tuple(args), dict(env or {}), paths[r]), daemon=False)
                 for r in range(world_size)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for r in hung:
            procs[r].kill()
            procs[r].join(10)
        results, errors = [], []
        for r, path in enumerate(paths):
            if not os.path.exists(path):
                why = "timed out" if r in hung else f"exited with code {procs[r].exitcode} without a result"
                errors.append(f"rank {r} {why}")
                results.append(None)
                continue
            with open(path, "rb") as f:
                outcome = pickle.load(f)
            if outcome["ok"]:
                results.append(outcome["value"])
            else:
                errors.append(f"rank {r} raised:\n{outcome['error']}")
                results.append(None)
        if errors:
            raise RuntimeError(f"distributed run of {getattr(fn, '__name__', fn)} (world_size={world_size}, timeout={timeout}s) failed:\n"
                               + "\n".join(errors))
        return results
