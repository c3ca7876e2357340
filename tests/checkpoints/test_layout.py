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


# ---- manifests: the newest complete step that verifies ------------------------------------------

def make_verified_run(tmp_path, steps):
    """Step directories as a save writes them: a data file, the meta file naming the manifest, the manifest."""
    import hashlib
    import json

    from megadfm.checkpoints.layout import MANIFEST_FILE

    root = tmp_path / "run" / "checkpoints"
    for s in steps:
        d = root / tag_for_step(s)
        d.mkdir(parents=True)
        (d / "shard.pt").write_bytes(bytes(range(256)) * 40)
        (d / META_FILE).write_text(json.dumps({"step": s, "manifest": MANIFEST_FILE}))
        files = [{"path": n, "size": (d / n).stat().st_size, "sha256": hashlib.sha256((d / n).read_bytes()).hexdigest()}
                 for n in ("shard.pt", META_FILE)]
        (d / MANIFEST_FILE).write_text(json.dumps({"format": 1, "files": files}))
    return root


def test_verification_names_the_file_and_falls_back(tmp_path, caplog):
    from megadfm.checkpoints.layout import CORRUPT_PREFIX, MANIFEST_FILE, newest_verified_step

    root = make_verified_run(tmp_path, [2, 4, 6, 8])
    with open(root / tag_for_step(8) / "shard.pt", "r+b") as f:  # same size, other bytes
        f.seek(100)
        f.write(b"rot")
    (root / tag_for_step(6) / "shard.pt").write_bytes(b"short")
    (root / tag_for_step(4) / MANIFEST_FILE).write_bytes(b"\xff\xfe not json")
    with caplog.at_level(logging.INFO):
        assert newest_verified_step(str(root), "size") == 8  # size-only cannot see same-size rot
        assert newest_verified_step(str(root)) == 2  # readers: reported, left in place
    text = caplog.text
    assert "step_00000008/shard.pt: sha256" in text and "step_00000006/shard.pt: 5 bytes, the manifest says 10240" in text
    assert f"{MANIFEST_FILE}: missing or unreadable manifest" in text and "MB/s" in text
    assert complete_steps(str(root)) == [2, 4, 6, 8]
    assert newest_verified_step(str(root), set_aside=True) == 2  # a resume: renamed, never deleted
    assert sorted(os.listdir(root)) == [CORRUPT_PREFIX + tag_for_step(s) for s in (4, 6, 8)] + [tag_for_step(2)]
    assert locate_checkpoint(str(tmp_path / "run")).step == 2


def test_nothing_verifies_is_an_error_not_a_fresh_start(tmp_path):
    from megadfm.checkpoints.layout import NoVerifiedCheckpointError, newest_verified_step

    root = make_verified_run(tmp_path, [2])
    (root / tag_for_step(2) / "shard.pt").unlink()
    (root / LATEST_FILE).write_bytes(b"\x00\x9f\x92\x96")
    with pytest.raises(NoVerifiedCheckpointError, match="shard.pt: missing"):
        newest_verified_step(str(root), set_aside=True)
    with pytest.raises(NoVerifiedCheckpointError, match="set aside earlier: .corrupt-step_00000002"):
        newest_verified_step(str(root), set_aside=True)  # a rerun: still refused
    with pytest.raises(CheckpointNotFoundError, match="no usable checkpoint"):
        locate_checkpoint(str(tmp_path / "run"))
