"""The GPU bundle: one git-ignored folder holding everything a bare GPU machine's Python lacks for
bench/gpu_check.sh, and the rules that check it. bench/gpu_wheels.sh builds it on a CPU machine with
network; bench/gpu_check.sh (--dry-run too) checks it before using it.

The GPU machine is assumed to have Python 3.12, PyTorch, Triton and transformers (with its own
dependencies: numpy, PyYAML, tqdm, tokenizers, safetensors, huggingface-hub, packaging), and no
network. The bundle adds::

    DIR/MANIFEST.json            what is here: every file's size and sha256, the target interpreter,
                                 the wheel of each distribution, the corpus prefix, the tokenizer folder
    DIR/wheels/*.whl             DeepSpeed (built from its sdist, DS_BUILD_OPS=0: no compiled op),
                                 liger-kernel, their dependencies missing there (compiled ones as
                                 cp312 manylinux x86_64 wheels), pytest for the GPU tests
    DIR/data/stdlib_*            a preprocessed corpus of CPython standard-library code (.bin/.idx)
    DIR/tokenizer/               the Qwen3 tokenizer folder (artifacts/tokenizer/qwen3)

    python bench/gpu_bundle.py requirements      # name==version lines gpu_wheels.sh downloads
    python bench/gpu_bundle.py manifest DIR      # write DIR/MANIFEST.json (gpu_wheels.sh's last step)
    python bench/gpu_bundle.py check DIR         # the dry run's folder check; exit 1 naming each problem

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

PYTHON_VERSION = "3.12"
PLATFORM = "manylinux2014_x86_64"
MAX_BYTES = 60 * 10**6
MANIFEST = "MANIFEST.json"
CORPUS_PREFIX = "data/stdlib_text_document"
TOKENIZER = "tokenizer"

# Distribution -> kind. "sdist": built here into a pure wheel; "pure": a py3-none-any wheel; "compiled":
# a wheel with C extensions, which must match the GPU machine's interpreter (cp312) and platform.
DISTRIBUTIONS = {
    "deepspeed": "sdist",
    "liger-kernel": "pure",
    # DeepSpeed's dependencies that a torch + transformers machine does not have
    "hjson": "pure", "py-cpuinfo": "pure", "einops": "pure", "ninja": "binary",
    "msgpack": "compiled", "psutil": "compiled",
    "pydantic": "pure", "pydantic-core": "compiled", "annotated-types": "pure", "typing-inspection": "pure",
    "typing-extensions": "pure",  # pydantic needs a newer one than some torch installs carry
    # the GPU tests
    "pytest": "pure", "pluggy": "pure", "iniconfig": "pure", "pygments": "pure", "pytest-timeout": "pure",
}


def normalize(name: str) -> str:
    """PEP 503 name as it appears in wheel filenames (lower case, runs of -_. as _)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def parse_wheel(filename: str) -> Optional[Tuple[str, str, str, str, str]]:
    """(name, version, python tag, abi tag, platform tag) of a wheel filename, or None if it is not one."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[:-4].split("-")
    if len(parts) == 6:  # with a build tag
        parts = parts[:2] + parts[3:]
    if len(parts) != 5:
        return None
    name, version, py, abi, plat = parts
    return normalize(name), version, py, abi, plat


def wheel_problem(dist: str, kind: str, filename: str, python_version: str = PYTHON_VERSION) -> Optional[str]:
    """Why this wheel cannot serve ``dist`` on the GPU machine, or None."""
    parsed = parse_wheel(filename)
    if parsed is None:
        return f"{filename}: not a wheel filename"
    _, _, py, abi, plat = parsed
    cp = "cp" + python_version.replace(".", "")
    if kind in ("pure", "sdist"):
        if plat != "any" or not any(t in ("py3", "py2.py3") or t.startswith("py3") for t in py.split(".")):
            return f"{filename}: expected a pure py3-none-any wheel for {dist}"
    elif kind == "binary":  # platform-specific but not tied to the interpreter (ninja's executable)
        if not any("x86_64" in p and "linux" in p for p in plat.split(".")):
            return f"{filename}: {dist} needs a linux x86_64 wheel"
    else:
        if cp not in py.split(".") and "abi3" not in abi:
            return f"{filename}: {dist} is compiled and needs a {cp} (or abi3) wheel for Python {python_version}"
        if not any("x86_64" in p and "linux" in p for p in plat.split(".")):
            return f"{filename}: {dist} is compiled and needs a manylinux x86_64 wheel"
    return None


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(root: str, corpus_tokens: Optional[int] = None, python_version: str = PYTHON_VERSION) -> Dict:
    """Describe every file under ``root`` (sizes, sha256) and which wheel serves which distribution."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if rel == MANIFEST:
                continue
            files[rel] = {"bytes": os.path.getsize(path), "sha256": sha256(path)}
    wheels = {}
    for rel in files:
        parsed = parse_wheel(os.path.basename(rel)) if rel.startswith("wheels/") else None
        if parsed:
            wheels[parsed[0]] = rel
    manifest = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "python_version": python_version, "platform": PLATFORM, "corpus_prefix": CORPUS_PREFIX,
                "corpus_tokens": corpus_tokens, "tokenizer": TOKENIZER, "wheels": wheels, "files": files,
                "total_bytes": sum(f["bytes"] for f in files.values())}
    tmp = os.path.join(root, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(root, MANIFEST))
    return manifest


def check_folder(root: str, verify_sha256: bool = False) -> Tuple[List[str], Optional[Dict]]:
    """(problems, manifest): every reason this folder cannot serve gpu_check.sh; none when it can."""
    rebuild = f"rebuild it on a machine with network: bash bench/gpu_wheels.sh --out {root}"
    if not os.path.isdir(root):
        return [f"{root}: no such folder; {rebuild}"], None
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        return [f"{path} is missing (gpu_wheels.sh writes it last: an interrupted build has none); {rebuild}"], None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        files, wheels = manifest["files"], manifest["wheels"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{path} is unreadable ({type(e).__name__}: {e}); {rebuild}"], None
    problems = []
    for rel, facts in sorted(files.items()):
        full = os.path.join(root, rel)
        if not os.path.isfile(full):
            problems.append(f"{rel}: listed in {MANIFEST} but missing")
        elif os.path.getsize(full) != facts["bytes"]:
            problems.append(f"{rel}: {os.path.getsize(full)} bytes, {MANIFEST} says {facts['bytes']}")
        elif verify_sha256 and sha256(full) != facts["sha256"]:
            problems.append(f"{rel}: sha256 differs from {MANIFEST}")
    for dist, kind in DISTRIBUTIONS.items():
        rel = wheels.get(normalize(dist))
        if rel is None:
            problems.append(f"no wheel for {dist} (needed: {kind})")
            continue
        why = wheel_problem(dist, kind, os.path.basename(rel), str(manifest.get("python_version", PYTHON_VERSION)))
        if why:
            problems.append(why)
    prefix = manifest.get("corpus_prefix", CORPUS_PREFIX)
    for ext in (".bin", ".idx"):
        if prefix + ext not in files:
            problems.append(f"corpus {prefix}{ext} is missing")
    if f"{manifest.get('tokenizer', TOKENIZER)}/tokenizer.json" not in files:
        problems.append(f"tokenizer {manifest.get('tokenizer', TOKENIZER)}/tokenizer.json is missing")
    total = sum(f["bytes"] for f in files.values())
    if total > MAX_BYTES:
        problems.append(f"the bundle is {total / 1e6:.1f} MB, over its {MAX_BYTES / 1e6:.0f} MB limit")
    return problems, manifest


def interpreter_problem(manifest: Dict) -> Optional[str]:
    """Why this Python cannot use the bundle's compiled wheels, or None."""
    here = "%d.%d" % sys.version_info[:2]
    wanted = str(manifest.get("python_version", PYTHON_VERSION))
    if here != wanted:
        return (f"the bundle's compiled wheels are for Python {wanted} and this is Python {here} ({sys.executable}); "
                f"rebuild it with: bash bench/gpu_wheels.sh --python-version {here}")
    return None


def requirement_lines() -> List[str]:
    """``kind name==version`` for each distribution, at the version installed here (what this checkout is
    tested with); ``kind name`` (latest) where it is not installed."""
    from importlib import metadata

    lines = []
    for dist, kind in DISTRIBUTIONS.items():
        try:
            lines.append(f"{kind} {dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{kind} {dist}")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("requirements", help="print 'kind name==version' per distribution (gpu_wheels.sh reads them)")
    m = sub.add_parser("manifest", help="write DIR/MANIFEST.json")
    m.add_argument("dir")
    m.add_argument("--corpus-tokens", type=int, default=None, help="tokens in the corpus (recorded in the manifest)")
    m.add_argument("--python-version", default=PYTHON_VERSION, help=f"the GPU machine's Python (default {PYTHON_VERSION})")
    c = sub.add_parser("check", help="check DIR; exit 1 naming every problem")
    c.add_argument("dir")
    c.add_argument("--sha256", action="store_true", help="also verify every file's sha256 (slower)")
    args = p.parse_args(argv)
    if args.command == "requirements":
        print("\n".join(requirement_lines()))
        return 0
    if args.command == "manifest":
        manifest = write_manifest(args.dir, args.corpus_tokens, args.python_version)
        print(f"{os.path.join(args.dir, MANIFEST)}: {len(manifest['files'])} files, {manifest['total_bytes'] / 1e6:.1f} MB")
        return 0
    problems, manifest = check_folder(args.dir, args.sha256)
    for line in problems:
        print(f"bundle problem: {line}", file=sys.stderr)
    if not problems:
        print(f"{args.dir}: {len(manifest['files'])} files, {manifest['total_bytes'] / 1e6:.1f} MB, every distribution present")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
