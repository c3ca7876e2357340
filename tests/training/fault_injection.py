"""pretrain_dfm.py with fault-injection callbacks, for engine tests (production code reads no such hook).

    deepspeed --num_accelerators 2 tests/training/fault_injection.py --fault nan_loss_at_step=3 --config c.yaml

Faults that cannot be provoked reliably for real: a non-finite loss on demand, a save that fails
after every file was written (as a full disk or an I/O error would), a disk that fills up in the
middle of a save, and a save slowed down so that a kill soak can hit it.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from megadfm.training.callbacks import Callback  # noqa: E402


class NaNLossAtStep(Callback):
    """Multiply the loss of every micro-batch of one step by NaN (gradients become NaN too)."""

    def __init__(self, step: str):
        self.step = int(step)

    def post_forward(self, trainer, micro) -> None:
        if micro.step == self.step:
            micro.out.loss = micro.out.loss * float("nan")


class FailSaveAtStep(Callback):
    """Raise while saving one step, after its files are written and before it is published."""

    def __init__(self, step: str):
        self.step = int(step)

    def pre_checkpoint_publish(self, trainer, step: int, directory: str) -> None:
        if step == self.step:
            raise OSError(f"injected fault: simulated write failure while saving {directory}")


class FillDiskAtStep(Callback):
    """While saving one step, write filler into the unpublished directory until the disk is full: a
    real ENOSPC on a small filesystem (< 1 GiB, e.g. a test's tmpfs); elsewhere 1 MiB is written and
    ENOSPC raised, so that a big disk is never filled."""

    SMALL = 1 << 30

    def __init__(self, step: str):
        self.step = int(step)

    def pre_checkpoint_publish(self, trainer, step: int, directory: str) -> None:
        if step != self.step:
            return
        real = shutil.disk_usage(directory).total < self.SMALL
        with open(os.path.join(directory, f"filler_rank{trainer.rank}.bin"), "wb") as f:
            for _ in range(1 << 14 if real else 1):
                f.write(b"\0" * (1 << 20))
                f.flush()
                os.fsync(f.fileno())
        raise OSError(errno.ENOSPC, f"injected fault: {'filesystem still not full' if real else 'simulated full disk'}", directory)


class SlowSaveMs(Callback):
    """Sleep inside every save, between DeepSpeed's files and publishing, announcing it on stdout (a kill
    soak widens the save window with it and times kills from the announcement)."""

    def __init__(self, ms: str):
        self.seconds = int(ms) / 1000

    def pre_checkpoint_publish(self, trainer, step: int, directory: str) -> None:
        if trainer.rank == 0:
            print(f"fault: slow save of step {step} started", flush=True)
        time.sleep(self.seconds)


FAULTS = {"nan_loss_at_step": NaNLossAtStep, "fail_save_at_step": FailSaveAtStep, "fill_disk_at_step": FillDiskAtStep,
          "slow_save_ms": SlowSaveMs}


def split_faults(argv):
    callbacks, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--fault":
            name, _, value = argv[i + 1].partition("=")
            if name not in FAULTS:
                raise SystemExit(f"fault_injection.py: unknown --fault {name!r}; known: {', '.join(FAULTS)}")
            callbacks.append(FAULTS[name](value))
            i += 2
        else:
            rest.append(argv[i])
            i += 1
    return callbacks, rest


if __name__ == "__main__":
    import pretrain_dfm

    faults, args = split_faults(sys.argv[1:])
    from megadfm.training.run import exit_process

    exit_process(pretrain_dfm.main(args, callbacks=faults))
