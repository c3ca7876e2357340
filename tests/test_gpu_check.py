"""bench/gpu_check.sh on CPU: the dry run against a small bundle folder built here, its failures when
something is missing, the stage budgets and timeouts, and the parsing of what the stages leave.

The bundle here has the real layout (wheel filenames with real tags, corpus .bin/.idx, tokenizer,
MANIFEST.json written by bench/gpu_bundle.py) with tiny stand-in files: the dry run checks names,
tags, sizes and presence, never the contents. The real bundle is built by bench/gpu_wheels.sh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

sys.path.insert(0, os.path.join(REPO, "bench"))
import gpu_bundle  # noqa: E402
import gpu_check  # noqa: E402
import gpu_check_train  # noqa: E402

WHEELS = {
    "deepspeed": "deepspeed-0.19.8-py3-none-any.whl",
    "liger-kernel": "liger_kernel-0.8.5-py3-none-any.whl",
    "hjson": "hjson-3.1.0-py3-none-any.whl",
    "py-cpuinfo": "py_cpuinfo-9.0.0-py3-none-any.whl",
    "einops": "einops-0.8.2-py3-none-any.whl",
    "ninja": "ninja-1.13.2-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    "msgpack": "msgpack-1.2.4-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    "psutil": "psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.manylinux_2_12_x86_64.whl",
    "pydantic": "pydantic-2.14.4-py3-none-any.whl",
    "pydantic-core": "pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    "annotated-types": "annotated_types-0.8.0-py3-none-any.whl",
    "typing-inspection": "typing_inspection-0.4.5-py3-none-any.whl",
    "typing-extensions": "typing_extensions-4.16.0-py3-none-any.whl",
    "pytest": "pytest-9.2.0-py3-none-any.whl",
    "pluggy": "pluggy-1.7.0-py3-none-any.whl",
    "iniconfig": "iniconfig-2.3.1-py3-none-any.whl",
    "pygments": "pygments-2.21.0-py3-none-any.whl",
    "pytest-timeout": "pytest_timeout-2.4.0-py3-none-any.whl",
}


def make_bundle(root, wheels=WHEELS, skip=(), manifest=True):
    for sub in ("wheels", "data", "tokenizer"):
        os.makedirs(root / sub, exist_ok=True)
    for dist, name in wheels.items():
        (root / "wheels" / name).write_bytes(b"PK stand-in for " + dist.encode())
    for rel in ("data/stdlib_text_document.bin", "data/stdlib_text_document.idx", "tokenizer/tokenizer.json"):
        (root / rel).write_bytes(b"x" * 64)
    if manifest:
        gpu_bundle.write_manifest(str(root), corpus_tokens=16)
    for rel in skip:
        os.remove(root / rel)
    return root


def dry_run(bundle, tmp_path):
    return subprocess.run(["bash", os.path.join(REPO, "bench", "gpu_check.sh"), "--dry-run", "--bundle", str(bundle),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHON=sys.executable))


def test_dry_run_passes_on_a_complete_bundle_and_prints_the_plan(tmp_path):
    proc = dry_run(make_bundle(tmp_path / "bundle"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    for stage in ("install", "env", "gpu_tests", "gpu_model", "train"):
        assert f"  {stage} " in proc.stdout
    assert "total budget 470 s" in proc.stdout and "bundle ok: 21 files" in proc.stdout
    assert "18 wheels for Python 3.12" in proc.stdout and "dry run: nothing installed or run" in proc.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_dry_run_fails_naming_each_missing_piece(tmp_path):
    bundle = make_bundle(tmp_path / "bundle", skip=("data/stdlib_text_document.idx",))
    wheels = dict(WHEELS)
    del wheels["pydantic-core"]
    bundle2 = make_bundle(tmp_path / "bundle2", wheels=wheels)
    proc = dry_run(bundle, tmp_path)
    assert proc.returncode == 2
    assert "data/stdlib_text_document.idx: listed in MANIFEST.json but missing" in proc.stderr
    proc = dry_run(bundle2, tmp_path)
    assert proc.returncode == 2 and "no wheel for pydantic-core (needed: compiled)" in proc.stderr
    assert "bash bench/gpu_wheels.sh" in proc.stderr


def test_dry_run_refuses_a_folder_without_manifest_or_one_that_does_not_exist(tmp_path):
    proc = dry_run(make_bundle(tmp_path / "bundle", manifest=False), tmp_path)
    assert proc.returncode == 2 and "MANIFEST.json is missing" in proc.stderr and "interrupted build" in proc.stderr
    proc = dry_run(tmp_path / "nowhere", tmp_path)
    assert proc.returncode == 2 and "no such folder" in proc.stderr


def test_wrong_interpreter_tags_truncated_files_and_size_are_problems(tmp_path, monkeypatch):
    wheels = dict(WHEELS, **{"pydantic-core": "pydantic_core-2.50.5-cp311-cp311-manylinux2014_x86_64.whl",
                             "liger-kernel": "liger_kernel-0.8.5-cp312-cp312-win_amd64.whl"})
    root = make_bundle(tmp_path / "bundle", wheels=wheels)
    (root / "tokenizer" / "tokenizer.json").write_bytes(b"short")
    problems, _ = gpu_bundle.check_folder(str(root))
    text = "\n".join(problems)
    assert "pydantic-core is compiled and needs a cp312 (or abi3) wheel for Python 3.12" in text
    assert "expected a pure py3-none-any wheel for liger-kernel" in text
    assert "tokenizer/tokenizer.json: 5 bytes, MANIFEST.json says 64" in text
    assert len(problems) == 3
    good = make_bundle(tmp_path / "good")
    manifest = json.loads((good / "MANIFEST.json").read_text())
    assert manifest["wheels"]["pydantic_core"].startswith("wheels/pydantic_core-2.50.5-cp312")
    assert gpu_bundle.check_folder(str(good))[0] == []
    monkeypatch.setattr(gpu_bundle, "MAX_BYTES", 500)
    (problem,) = gpu_bundle.check_folder(str(good))[0]
    assert problem.startswith("the bundle is 0.0 MB, over its 0 MB limit")


def test_interpreter_mismatch_is_reported():
    here = "%d.%d" % sys.version_info[:2]
    assert gpu_bundle.interpreter_problem({"python_version": here}) is None
    assert "rebuild it with: bash bench/gpu_wheels.sh --python-version" in gpu_bundle.interpreter_problem({"python_version": "2.7"})


def test_a_stage_is_skipped_with_the_reason_when_the_total_budget_is_gone(tmp_path):
    check = gpu_check.Check(str(tmp_path), total_s=3, budgets={})
    ran = []
    check.stage(gpu_check.Stage("quick", 100, 1, "runs"), lambda t: ran.append(t) or {"status": "ok"})
    assert ran and ran[0] <= 3  # its timeout is what is left of the total, not its own 100 s
    rec = check.stage(gpu_check.Stage("big", 100, 60, "needs a minute"), lambda t: pytest.fail("must not run"))
    assert rec["status"] == "skipped" and "this stage needs at least 60 s" in rec["reason"]
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["stages"]["big"]["status"] == "skipped" and saved["stages"]["quick"]["status"] == "ok"
    assert "== big:" in (tmp_path / "gpu_check.log").read_text()


def test_a_command_past_its_timeout_is_stopped_with_its_children(tmp_path):
    check = gpu_check.Check(str(tmp_path), total_s=60, budgets={})
    start = time.monotonic()
    run = check.run(["bash", "-c", "echo started; sleep 30 & wait"], timeout=1.5, env=dict(os.environ))
    assert run["timed_out"] and time.monotonic() - start < 15
    assert run["output"] == ["started"] and gpu_check.status_of(run) == "timed_out"


def test_junit_summary_counts_and_keeps_reasons(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="tests.gpu.test_fused_kernels" name="test_a"/>'
                   '<testcase classname="tests.gpu.test_fused_kernels" name="test_b"><failure message="assert 1 == 2"/></testcase>'
                   '<testcase classname="tests.gpu.test_fused_kernels" name="test_c"><skipped message="flash-attn missing"/>'
                   '</testcase></testsuite></testsuites>')
    out = gpu_check.junit_summary(str(xml))
    assert out == {"passed": 1, "failed": [{"test": "test_fused_kernels::test_b", "message": "assert 1 == 2"}],
                   "skipped": [{"test": "test_fused_kernels::test_c", "reason": "flash-attn missing"}]}


def test_train_stage_config_is_a_valid_run_config(tmp_path):
    from megadfm.config import load_config

    for smoke in (False, True):
        tree = gpu_check_train.run_config(str(tmp_path / "run"), str(tmp_path / "data" / "c"), str(tmp_path / "tok"),
                                          os.path.join(REPO, "ds_configs", "zero3_bf16.json"), smoke)
        gpu_check_train.write_yaml(tree, str(tmp_path / "c.yaml"))
        cfg = load_config(str(tmp_path / "c.yaml"))
        assert cfg.training.exit_after_steps == gpu_check_train.STEPS and cfg.checkpoint.save_interval == 0
    cfg = load_config(str(tmp_path / "c.yaml"), ["training.exit_after_steps=22"])  # what the resumed invocation sets
    assert cfg.training.exit_after_steps == cfg.training.train_steps == 22
    big = gpu_check_train.run_config("r", "p", "t", "d")
    assert big["model"]["hidden_size"] == 2048 and big["model"]["kernels"] == "fused" and big["data"]["seq_len"] == 8192
    assert big["training"]["zero_stage"] == 3 and big["training"]["precision"] == "bf16"
    assert big["model"]["activation_checkpointing"] is True


def test_telemetry_summary_skips_warm_up_steps():
    records = [{"step": s, "loss": 10.0 - s / 10, "tokens_per_s": 100.0 if s <= 3 else 1000.0 + s, "mfu": 0.4,
                "mem_max_gb": 30.0 + s / 100} for s in range(1, 23)]
    first = gpu_check_train.summarize(records, 1, 20)
    assert first["timed_steps"] == list(range(4, 21)) and first["tokens_per_s_median"] == 1012.0
    assert first["mem_max_gb"] == pytest.approx(30.2) and first["all_finite"]
    after = gpu_check_train.summarize(records, 21, 22)
    assert after["steps"] == [21, 22]


def test_both_shell_entry_points_have_help():
    for script, needles in (("gpu_check.sh", ("--dry-run", "--budget", "--out")), ("gpu_wheels.sh", ("--out", "DS_BUILD_OPS=0"))):
        proc = subprocess.run(["bash", os.path.join(REPO, "bench", script), "--help"], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHON=sys.executable))
        assert proc.returncode == 0, proc.stderr
        for needle in needles:
            assert needle in proc.stdout, (script, needle)


def test_kernel_lines_are_read_from_the_trainer_log():
    out = ["[12:00 rank0 megadfm.model.kernels] kernels: backend=fused device=cuda",
           "[12:00 rank0 megadfm.model.kernels] kernels: attention -> torch varlen_attn (x) (first available of torch_varlen)",
           "[12:01 rank0 megadfm.model.kernels] kernels: attention -> later line ignored"]
    assert gpu_check_train.kernel_lines(out) == {"attention": "torch varlen_attn (x) (first available of torch_varlen)"}
