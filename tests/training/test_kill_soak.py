"""A 3-kill miniature of bench/kill_soak.py: SIGKILLs inside a save and during training, resumes after
each; every launch after the first resumes from a checkpoint (it does not start over), every surviving
checkpoint verifies, none is corrupt or left incomplete, and the per-step records and final weights
equal an uninterrupted run's bitwise. (It is also the suite's test of a kill during training followed
by a resume.)"""

from __future__ import annotations

import importlib.util
import os
import re

from tests.conftest import REPO


def test_three_kills_lose_nothing(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("kill_soak", os.path.join(REPO, "bench", "kill_soak.py"))
    kill_soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kill_soak)
    status = kill_soak.soak(str(tmp_path), kills=3, steps=14, slow_ms=600, seed=1, startup_timeout=400)
    out = capsys.readouterr().out
    assert "kills survived: 3" in out and "corrupt checkpoints: 0" in out, out
    assert "incomplete saves left: 0" in out and "bitwise equal: yes" in out, out
    assert "SIGKILL inside a save" in out, out
    assert status == 0, out
    for name in ("kill01.log", "kill02.log", "final.log"):  # each launch after the first, killed or not
        with open(tmp_path / name, encoding="utf-8", errors="replace") as f:
            log = f.read()
        resumed = re.search(r"resumed from \S+: step (\d+)", log)
        assert resumed and int(resumed.group(1)) >= 2, (name, log[-2000:])  # from a saved step, not from step 0
