"""A 3-kill miniature of bench/kill_soak.py: SIGKILLs inside a save and during training, resumes after
each; every surviving checkpoint verifies, none is corrupt or left incomplete, and the per-step
records and final weights equal an uninterrupted run's bitwise."""

from __future__ import annotations

import importlib.util
import os

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
