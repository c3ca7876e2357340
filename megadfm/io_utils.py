"""Files on disk: atomic writes (a reader never sees half of one), durable trees, content hashes.

Atomic write: temporary name in the same folder, fsync, rename, fsync the folder. The temporary
file or folder gets the permissions a plain ``open`` / ``mkdir`` would give it (mkstemp and mkdtemp
create them private, 0600 / 0700, which would leave a shared tokenizer folder or dataset unreadable
by other users after the rename).
"""

from __future__ import annotations

import hashlib
import os
import tempfile


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def give_default_permissions(path: str) -> None:
    """chmod a temporary file (0666) or folder (0777) to what the umask allows, as open/mkdir would."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~current_umask())


def write_bytes_atomic(path: str, data: bytes) -> None:
    """``path`` holds either its old content or all of ``data``, even if the process dies mid-write."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        give_default_permissions(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_path(directory)  # the rename itself is durable too


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def fsync_path(path: str) -> None:
    """fsync one file or directory (a directory's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """fsync every file, then every directory bottom-up, so the data is on disk before it is published."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


def dir_size(path: str) -> int:
    """Bytes of every file below ``path``."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            total += os.path.getsize(os.path.join(dirpath, name))
    return total


def sha256_file(path: str, chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file's bytes, read in chunks (model shards are GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
