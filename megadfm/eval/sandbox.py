"""Run one untrusted candidate program (model-written code) in a contained child process.

Each program runs in its own ``python -I -B`` child, in a fresh temporary working directory that is
removed afterwards, in a new session (so a wall timeout kills its whole process group). The child
sets its own resource limits before the candidate runs: address space (memory), CPU seconds, file
size (which also caps its stdout and stderr, written to anonymous files) and no new processes or
threads (RLIMIT_NPROC 0). It then installs a guard that makes network sockets, process creation,
signalling, destructive filesystem calls and writes outside the temporary directory raise, and that
turns ``exit``/``quit``/``sys.exit``/``os._exit`` into an early exit.

A program passes when the child exits 0 AND its stdout holds the line :data:`SENTINEL`, which the
program prints only after its checks return (see :func:`sentinel_statement`). A guard violation or
early exit is remembered even if the candidate catches the exception, and decides the status.

When the parent runs as root, the child also drops to the ``nobody`` user and group (the temporary
directory is chowned to it) and sets no-new-privileges, so writes outside that directory are refused
by the operating system too. It keeps one capability, CAP_DAC_READ_SEARCH (read and search any
path, never write), because the interpreter and its standard library may live under a directory
only root can enter, e.g. a per-user Python install in root's home. When not root the guard is the
only protection for the filesystem: it stops mistakes, not a determined adversary, so run untrusted
code as root (or in a container) if that matters.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence

# The line a program prints after its checks return. Unlikely to come out of a model by accident.
SENTINEL = "__megadfm_sandbox_checks_returned__"

STATUSES = ("passed", "failed", "timeout", "memory", "forbidden", "exited", "error")

# Exit codes the child runner uses to report the candidate's outcome. Any other code (e.g. 1 from an
# exception in the runner itself) is reported as "error", never mistaken for a candidate failure.
_EXIT_CODES = {"failed": 92, "forbidden": 93, "exited": 94, "memory": 95}
_STATUS_OF_CODE = {code: status for status, code in _EXIT_CODES.items()}

_DETAIL_LINES = 20
_DETAIL_CHARS = 2000
_UNPRIVILEGED_USER = "nobody"


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed program."""

    timeout_s: float = 10.0
    """Wall-clock seconds from process start until the whole process group is killed ("timeout")."""

    memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) in MiB; an allocation beyond it raises MemoryError ("memory")."""

    cpu_s: Optional[int] = None
    """CPU-seconds limit (RLIMIT_CPU; SIGXCPU reads as "timeout"). None: timeout_s rounded up, plus 1."""

    file_size_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE) in MiB; this also caps its stdout and stderr."""

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"SandboxLimits.timeout_s must be > 0 seconds, got {self.timeout_s!r}")
        if not (isinstance(self.memory_mb, int) and self.memory_mb >= 64):
            # Below ~64 MiB the interpreter itself cannot start, which would read as a candidate failure.
            raise ValueError(f"SandboxLimits.memory_mb must be an int >= 64 (MiB), got {self.memory_mb!r}")
        if self.cpu_s is not None and not (isinstance(self.cpu_s, int) and self.cpu_s >= 1):
            raise ValueError(f"SandboxLimits.cpu_s must be None or an int >= 1 (seconds), got {self.cpu_s!r}")
        if not (isinstance(self.file_size_mb, int) and self.file_size_mb >= 1):
            raise ValueError(f"SandboxLimits.file_size_mb must be an int >= 1 (MiB), got {self.file_size_mb!r}")

    @property
    def effective_cpu_s(self) -> int:
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """What happened to one program."""

    passed: bool
    """Exit code 0 and the sentinel line seen on stdout."""

    status: str
    """One of "passed", "failed", "timeout", "memory", "forbidden", "exited", "error"."""

    detail: str
    """The last lines of stderr (the traceback or guard message), plus why it was killed, if it was."""

    seconds: float
    """Wall-clock seconds the child ran."""


def sentinel_statement() -> str:
    """The statement a program ends with: prints :data:`SENTINEL` once everything before it returned."""
    return f"print({SENTINEL!r}, flush=True)\n"


# The child's entry point, run with ``python -I -B -c``. Its argument is a JSON config; the candidate
# source arrives on stdin. Kept as plain source (not imported from the package) because the child
# runs in isolated mode and must not depend on how, or whether, megadfm is installed.
_RUNNER = r'''
import builtins, io, json, linecache, os, resource, sys, traceback

CFG = json.loads(sys.argv[1])
CODES = CFG["exit_codes"]
ROOT = os.path.realpath(CFG["work_dir"])
_write, _exit, _realpath = os.write, os._exit, os.path.realpath
VIOLATIONS = []  # ("forbidden" | "exited", what): decides the status even if the candidate catches it


class SandboxViolation(BaseException):
    """BaseException, so ``except Exception`` in the candidate does not swallow it."""


class EarlyExit(BaseException):
    pass


def report(kind, what):
    VIOLATIONS.append((kind, what))
    _write(2, f"sandbox: {kind}: {what}\n".encode())


def forbid(what):
    report("forbidden", what)
    raise SandboxViolation(f"{what} is not allowed in the sandbox")


def early_exit(what):
    report("exited", f"{what} called before the checks finished")
    raise EarlyExit(what)


def set_limits():
    def limit(which, value):
        resource.setrlimit(which, (value, value))  # hard == soft: the candidate cannot raise it back
    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_AS, CFG["memory_bytes"])
    limit(resource.RLIMIT_FSIZE, CFG["file_size_bytes"])
    # Soft limit sends SIGXCPU; the hard one, a second later, SIGKILLs a candidate that ignores it.
    resource.setrlimit(resource.RLIMIT_CPU, (CFG["cpu_s"], CFG["cpu_s"] + 1))


def drop_privileges(uid, gid):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    def check(name, result):
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sandbox: {name} failed: {os.strerror(err)}")

    ulong = ctypes.c_ulong
    PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS, CAP_DAC_READ_SEARCH = 8, 38, 2
    check("prctl(PR_SET_KEEPCAPS)", libc.prctl(PR_SET_KEEPCAPS, ulong(1), ulong(0), ulong(0), ulong(0)))
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    keep = 1 << CAP_DAC_READ_SEARCH  # read/search anywhere (the interpreter may sit in root's home); no writes
    data = (Data * 2)(Data(keep, keep, 0), Data(0, 0, 0))
    check("capset", libc.capset(ctypes.byref(Header(0x20080522, 0)), data))  # _LINUX_CAPABILITY_VERSION_3
    check("prctl(PR_SET_NO_NEW_PRIVS)", libc.prctl(PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)))


def inside(path):
    if isinstance(path, int):
        return True  # an already-open descriptor: opening it was checked
    real = _realpath(os.fsdecode(os.fspath(path)))
    return real == ROOT or real.startswith(ROOT + os.sep)


def ensure_inside(path, what):
    if not inside(path):
        forbid(f"{what} outside the sandbox directory ({os.fsdecode(os.fspath(path))!r})")


def install_guard():
    import _posixsubprocess, _socket, shutil, socket, subprocess

    def refusing(what):
        def refuse(*args, **kwargs):
            forbid(what)
        return refuse

    def refusing_class(cls, what):
        # A subclass, not a function, so modules that subclass it at import time (ssl) still import.
        return type(cls.__name__, (cls,), {"__init__": lambda self, *a, **k: forbid(what)})

    for name in ("socketpair", "fromfd", "create_connection", "create_server", "getaddrinfo",
                 "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        for module in (socket, _socket):
            if hasattr(module, name):
                setattr(module, name, refusing(f"network ({module.__name__}.{name})"))
    _socket.socket = refusing_class(_socket.socket, "network (_socket.socket)")
    socket.socket = refusing_class(socket.socket, "network (socket.socket)")

    for name in ("system", "popen", "kill", "killpg", "fork", "forkpty", "execv", "execve", "execl", "execle",
                 "execlp", "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv",
                 "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "chdir", "fchdir", "chroot",
                 "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "link", "symlink", "mkfifo", "mknod",
                 "setuid", "seteuid", "setgid", "setegid", "setreuid", "setregid", "setresuid", "setresgid"):
        if hasattr(os, name):
            setattr(os, name, refusing(f"os.{name}"))
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, refusing(f"shutil.{name}"))
    subprocess.Popen = refusing_class(subprocess.Popen, "subprocess.Popen")
    _posixsubprocess.fork_exec = refusing("_posixsubprocess.fork_exec")

    def path_checked(real, what, path_args):
        def checked(*args, **kwargs):
            for key in ("dir_fd", "src_dir_fd", "dst_dir_fd"):
                if kwargs.get(key) is not None:
                    forbid(f"{what} with {key}")
            for value in list(args[:path_args]) + [kwargs[k] for k in ("path", "src", "dst") if k in kwargs]:
                ensure_inside(value, what)
            return real(*args, **kwargs)
        return checked

    for name, path_args in (("remove", 1), ("unlink", 1), ("rmdir", 1), ("truncate", 1), ("rename", 2),
                            ("replace", 2)):
        setattr(os, name, path_checked(getattr(os, name), f"os.{name}", path_args))
    real_mkdir = path_checked(os.mkdir, "os.mkdir", 1)
    # Owner rwx always, so the parent can remove whatever the candidate created.
    os.mkdir = lambda path, mode=0o777, **kw: real_mkdir(path, mode | 0o700, **kw)

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_os_open, real_open = os.open, io.open

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags:
            if dir_fd is not None:
                forbid("os.open for writing with dir_fd")
            ensure_inside(path, "os.open for writing")
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(mode, str) and any(ch in mode for ch in "wax+"):
            ensure_inside(file, f"open(mode={mode!r})")
        return real_open(file, mode, *args, **kwargs)

    os.open = guarded_os_open
    io.open = builtins.open = guarded_open

    builtins.exit = lambda *a: early_exit("exit()")
    builtins.quit = lambda *a: early_exit("quit()")
    sys.exit = lambda *a: early_exit("sys.exit()")
    os._exit = lambda *a: early_exit("os._exit()")
    os.abort = lambda *a: early_exit("os.abort()")


def main():
    source = sys.stdin.buffer.read().decode("utf-8")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the candidate reads an empty stdin, not its own source
    os.close(devnull)
    set_limits()
    if CFG["uid"] is not None:
        drop_privileges(CFG["uid"], CFG["gid"])
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # after the drop: no processes or threads from here on
    linecache.cache["<candidate>"] = (len(source), None, source.splitlines(True), "<candidate>")  # tracebacks show lines
    install_guard()

    outcome = 0
    try:
        exec(compile(source, "<candidate>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
    except SandboxViolation:
        outcome = CODES["forbidden"]
    except (EarlyExit, SystemExit):
        outcome = CODES["exited"]
    except MemoryError:
        _write(2, b"MemoryError: the program exceeded its memory limit\n")  # no traceback: it may allocate
        outcome = CODES["memory"]
    except BaseException as exc:
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)  # from the candidate's frames on
        outcome = CODES["failed"]
    kinds = {kind for kind, _ in VIOLATIONS}
    if "forbidden" in kinds:
        outcome = CODES["forbidden"]
    elif "exited" in kinds:
        outcome = CODES["exited"]
    for stream in {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}.values():
        stream.flush()
    _exit(outcome)


main()
'''


def _unprivileged_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(_UNPRIVILEGED_USER)
    except KeyError:
        raise RuntimeError(f"sandbox: running as root needs the user '{_UNPRIVILEGED_USER}' to drop privileges "
                           "to; it is missing from the password database") from None
    return entry.pw_uid, entry.pw_gid


def _tail(data: bytes) -> str:
    lines = data.decode("utf-8", errors="replace").rstrip("\n").splitlines()
    return "\n".join(lines[-_DETAIL_LINES:])[-_DETAIL_CHARS:]


def _classify(returncode: int, timed_out: bool, stdout: bytes, stderr: bytes, limits: SandboxLimits):
    tail = _tail(stderr)
    if timed_out:
        return "timeout", f"wall time limit of {limits.timeout_s:g}s exceeded\n{tail}".rstrip()
    if returncode < 0:
        sig = signal.Signals(-returncode)
        if sig == signal.SIGXCPU:
            return "timeout", f"CPU limit of {limits.effective_cpu_s}s exceeded (SIGXCPU)\n{tail}".rstrip()
        return "error", f"killed by {sig.name}\n{tail}".rstrip()
    if returncode == 0:
        if SENTINEL in stdout.decode("utf-8", errors="replace").splitlines():
            return "passed", tail
        return "failed", f"exited 0 without printing the sentinel line\n{tail}".rstrip()
    if returncode in _STATUS_OF_CODE:
        return _STATUS_OF_CODE[returncode], tail
    return "error", f"sandbox runner exited with status {returncode}\n{tail}".rstrip()


def run_program(source: str, limits: SandboxLimits = SandboxLimits()) -> ExecResult:
    """Run ``source`` in a contained child process; see the module docstring for what is contained."""
    if not isinstance(source, str):
        raise TypeError(f"run_program: source must be str, got {type(source).__name__}")
    as_root = os.geteuid() == 0
    uid, gid = _unprivileged_ids() if as_root else (None, None)
    work_dir = tempfile.mkdtemp(prefix="megadfm-sandbox-")
    try:
        if as_root:
            os.chown(work_dir, uid, gid)
        config = json.dumps({
            "work_dir": work_dir, "memory_bytes": limits.memory_mb << 20, "cpu_s": limits.effective_cpu_s,
            "file_size_bytes": limits.file_size_mb << 20, "uid": uid, "gid": gid, "exit_codes": _EXIT_CODES,
        })
        # Only what a program needs; HOME and TMPDIR point into the sandbox directory.
        env = {"PATH": os.defpath, "HOME": work_dir, "TMPDIR": work_dir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "OMP_NUM_THREADS": "1"}
        # Anonymous files, not pipes: no reader thread needed, and RLIMIT_FSIZE bounds what lands in them.
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            stdin.write(source.encode("utf-8"))
            stdin.seek(0)
            start = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-I", "-B", "-X", "utf8", "-c", _RUNNER, config],
                                    stdin=stdin, stdout=out, stderr=err, cwd=work_dir, env=env,
                                    start_new_session=True, close_fds=True)
            try:
                returncode = proc.wait(timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the unreaped leader keeps the group id valid here
                returncode = proc.wait()
                timed_out = True
            seconds = time.monotonic() - start
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
    finally:
        shutil.rmtree(work_dir)
    status, detail = _classify(returncode, timed_out, stdout, stderr, limits)
    return ExecResult(passed=status == "passed", status=status, detail=detail, seconds=seconds)


def run_programs(sources: Sequence[str], limits: SandboxLimits = SandboxLimits(), workers: int = 2) -> List[ExecResult]:
    """Run every source with :func:`run_program`, ``workers`` at a time; results in input order.

    Threads suffice: each one only waits on its child process.
    """
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"run_programs: workers must be an int >= 1, got {workers!r}")
    sources = list(sources)
    if not sources:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(sources)), thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda source: run_program(source, limits), sources))
