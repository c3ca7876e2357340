"""The one rule for "which checkpoint" (megadfm/checkpoints/layout.py) on real directories: the newest
complete step wins; 'latest' that lags behind (a crash between publishing a step and rewriting
'latest'), names a missing step, or holds garbage is reported and overruled; incomplete saves are
never chosen."""

from __future__ import annotations

import logging
import os

import pytest

from megadfm.checkpoints.layout import (INCOMPLETE_PREFIX, LATEST_FILE, META_FILE, CheckpointNotFoundError, complete_steps,
                                        locate_checkpoint, resolve_step, tag_for_step)


def make_run(tmp_path, steps, latest=None, incomplete=()):
    root = tmp_path / "run" / "checkpoints"
    for s in steps:
        d = root / tag_for_step(s)
        d.mkdir(parents=True)
        (d / META_FILE).write_text("{}")
    for s in incomplete:
        (root / (INCOMPLETE_PREFIX + tag_for_step(s))).mkdir(parents=True)
    (root / tag_for_step(99)).mkdir(parents=True)  # a step directory without its meta file: not complete
    if latest is not None:
        (root / LATEST_FILE).write_bytes(latest if isinstance(latest, bytes) else latest.encode())
    return root


def test_newest_complete_step_wins_and_latest_agrees(tmp_path, caplog):
    root = make_run(tmp_path, [4, 8], latest="step_00000008", incomplete=[12])
    assert complete_steps(str(root)) == [4, 8]
    with caplog.at_level(logging.WARNING):
        assert resolve_step(str(root)) == 8
    assert "ignoring incomplete checkpoint" in caplog.text and "'latest'" not in caplog.text


@pytest.mark.parametrize("latest,says", [
    ("step_00000004", "is newer and complete"),          # crash after publishing step 8, before rewriting latest
    ("step_00000012", "not a complete checkpoint"),      # latest names a step that is gone
    ("step_00000099", "not a complete checkpoint"),      # ... or one whose save never finished
    (b"\x89\xff\x00garbage", "not a step tag"),          # binary garbage
])
def test_latest_disagreeing_is_logged_and_overruled(tmp_path, caplog, latest, says):
    root = make_run(tmp_path, [4, 8], latest=latest)
    with caplog.at_level(logging.WARNING):
        assert resolve_step(str(root)) == 8
        loc = locate_checkpoint(str(tmp_path / "run"))  # what init_from, export and generate use
    assert says in caplog.text
    assert (loc.step, loc.path) == (8, str(root / tag_for_step(8)))


def test_explicit_step_and_step_directory(tmp_path):
    root = make_run(tmp_path, [4, 8], latest="step_00000008")
    assert locate_checkpoint(str(tmp_path / "run"), step=4).step == 4
    assert locate_checkpoint(str(root / tag_for_step(4))).step == 4
    with pytest.raises(CheckpointNotFoundError, match="no complete checkpoint for step 5"):
        locate_checkpoint(str(tmp_path / "run"), step=5)
    with pytest.raises(CheckpointNotFoundError, match="incomplete checkpoint"):
        locate_checkpoint(str(root / tag_for_step(99)))


def test_no_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="no complete megadfm checkpoint"):
        locate_checkpoint(str(tmp_path / "empty"))
    assert resolve_step(os.path.join(str(tmp_path), "missing")) is None
