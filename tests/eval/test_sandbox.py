"""Each kind of misbehaviour is contained and reported with its own status; timeouts are short."""

from __future__ import annotations

import os
import pwd
import time

import pytest

from megadfm.eval.sandbox import SandboxLimits, run_program, run_programs, sentinel_statement

FAST = SandboxLimits(timeout_s=3, memory_mb=512)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="privileges are dropped only when running as root")


def run(body: str, limits: SandboxLimits = FAST):
    return run_program(body + "\n" + sentinel_statement(), limits)


def test_correct_program_passes():
    result = run("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n")
    assert (result.passed, result.status) == (True, "passed"), result.detail
    assert result.seconds < 3


def test_failing_assert_fails_with_traceback():
    result = run("assert 1 + 1 == 3, 'arithmetic'\n")
    assert (result.passed, result.status) == (False, "failed")
    assert "AssertionError: arithmetic" in result.detail


def test_syntax_error_fails():
    result = run("def broken(:\n")
    assert result.status == "failed" and "SyntaxError" in result.detail


def test_missing_sentinel_is_not_a_pass():
    result = run_program("x = 1\n", FAST)
    assert (result.passed, result.status) == (False, "failed")
    assert "sentinel" in result.detail


def test_infinite_loop_times_out():
    start = time.monotonic()
    result = run("while True:\n    pass\n", SandboxLimits(timeout_s=1))
    assert (result.passed, result.status) == (False, "timeout")
    assert time.monotonic() - start < 3


def test_cpu_limit_reads_as_timeout():
    result = run("while True:\n    pass\n", SandboxLimits(timeout_s=5, cpu_s=1))
    assert result.status == "timeout" and "SIGXCPU" in result.detail


def test_huge_allocation_is_memory():
    result = run("block = bytearray(8 * 1024 ** 3)\n", SandboxLimits(timeout_s=3, memory_mb=256))
    assert (result.passed, result.status) == (False, "memory")


def test_os_system_is_forbidden():
    result = run("import os\nos.system('echo hi')\n")
    assert (result.passed, result.status) == (False, "forbidden")
    assert "os.system" in result.detail


def test_forbidden_call_counts_even_when_caught():
    result = run("import subprocess\ntry:\n    subprocess.run(['true'])\nexcept BaseException:\n    pass\n")
    assert result.status == "forbidden"


def test_write_outside_sandbox_is_forbidden(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run(f"with open({str(target)!r}, 'w') as f:\n    f.write('escaped')\n")
    assert (result.passed, result.status) == (False, "forbidden")
    assert not target.exists()


def test_pathlib_and_os_open_writes_outside_are_forbidden(tmp_path):
    for body in (f"import pathlib\npathlib.Path({str(tmp_path / 'a.txt')!r}).write_text('x')\n",
                 f"import os\nos.open({str(tmp_path / 'b.txt')!r}, os.O_WRONLY | os.O_CREAT)\n",
                 f"import os\nos.remove({str(tmp_path)!r})\n"):
        assert run(body).status == "forbidden", body
    assert os.listdir(tmp_path) == []


def test_writes_inside_sandbox_directory_are_allowed_and_removed():
    body = ("import os, tempfile\n"
            "with open('scratch.txt', 'w') as f:\n    f.write('ok')\n"
            "with tempfile.NamedTemporaryFile('w') as f:\n    f.write('ok')\n"
            "os.mkdir('locked', 0)\n"   # mode 0 still leaves the parent able to remove it
            "with open('locked/inner.txt', 'w') as f:\n    f.write('ok')\n")
    result = run(body)
    assert result.status == "passed", result.detail


def test_sandbox_directory_is_removed_afterwards():
    # The parent cannot read the child's stdout through the API, so the child reports its directory by
    # failing with it in the message.
    result = run("import os\nraise RuntimeError('CWD=' + os.getcwd())\n")
    cwd = result.detail.rsplit("CWD=", 1)[1].strip()
    assert os.path.basename(cwd).startswith("megadfm-sandbox-")
    assert not os.path.exists(cwd)


def test_sys_exit_before_checks_is_exited():
    result = run("import sys\nsys.exit(0)\n")
    assert (result.passed, result.status) == (False, "exited")


@pytest.mark.parametrize("call", ["exit(0)", "quit()", "import os\nos._exit(0)", "raise SystemExit(0)"])
def test_every_exit_route_is_exited(call):
    assert run(call + "\n").status == "exited"


def test_socket_connect_is_forbidden():
    result = run("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\ns.connect(('127.0.0.1', 9))\n")
    assert (result.passed, result.status) == (False, "forbidden")
    assert "network" in result.detail


def test_create_connection_is_forbidden():
    assert run("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n").status == "forbidden"


def test_no_new_threads_or_processes():
    result = run("import threading\nthreading.Thread(target=print).start()\n")
    assert result.status == "failed" and "can't start new thread" in result.detail


@as_root
def test_runs_as_nobody_when_root():
    nobody = pwd.getpwnam("nobody").pw_uid
    result = run(f"import os\nassert os.getuid() == os.geteuid() == {nobody}, os.getuid()\n")
    assert result.status == "passed", result.detail


@as_root
def test_os_refuses_writes_that_bypass_the_guard(tmp_path):
    # _io.FileIO is not wrapped by the guard; the dropped privileges stop it.
    target = tmp_path / "bypass.txt"
    result = run(f"import _io\n_io.FileIO({str(target)!r}, 'w')\n")
    assert result.status == "failed" and "PermissionError" in result.detail
    assert not target.exists()


def test_run_programs_keeps_input_order():
    bodies = ["import time\ntime.sleep(0.3)\n", "assert False\n", "pass\n", "import os\nos.kill(1, 9)\n"]
    results = run_programs([b + "\n" + sentinel_statement() for b in bodies], FAST, workers=2)
    assert [r.status for r in results] == ["passed", "failed", "passed", "forbidden"]
    assert run_programs([], FAST, workers=2) == []


@pytest.mark.parametrize("kwargs, field", [({"timeout_s": 0}, "timeout_s"), ({"memory_mb": 8}, "memory_mb"),
                                           ({"cpu_s": 0}, "cpu_s"), ({"file_size_mb": 0}, "file_size_mb")])
def test_bad_limits_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"SandboxLimits.{field}"):
        SandboxLimits(**kwargs)


def test_bad_worker_count():
    with pytest.raises(ValueError, match="workers"):
        run_programs(["pass\n"], FAST, workers=0)
