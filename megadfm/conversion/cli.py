"""What the two conversion tools share: the output flags, logging set-up, and turning known input
errors into one line."""

from __future__ import annotations

import argparse
import glob
import logging
import os
import pickle
import sys
import zipfile
from typing import Any, Callable, List, Optional, Sequence, Tuple

from megadfm.checkpoints.safetensors_io import SafetensorsError
from megadfm.checkpoints.source import SourceError
from megadfm.config_base import ConfigError
from megadfm.conversion.hf_folder import HFFolderError
from megadfm.conversion.metadata import NotEnoughSpaceError, OutputExistsError
from megadfm.conversion.name_map import ConversionError
from megadfm.data.tokenizer import TokenizerError

# what torch.load raises on a damaged file, none naming it (cut at the end: RuntimeError from its zip reader;
# cut in the middle: OSError EINVAL)
TORCH_LOAD_ERRORS = (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)

INPUT_ERRORS = (ConversionError, HFFolderError, SourceError, SafetensorsError, OutputExistsError, NotEnoughSpaceError,
                TokenizerError, ConfigError, FileNotFoundError)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def check_size_flag(parser, flag: str, value: str) -> None:
    """Reject an unparseable size (e.g. --max-shard-size 5XB) at argument parsing, before any work."""
    from megadfm.checkpoints.safetensors_io import parse_size

    try:
        parse_size(value)
    except ValueError as e:
        parser.error(f"{flag}: {e}")


def parse_output_args(p: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Add the flags both tools end with (--force, --no-progress), parse, and check --max-shard-size."""
    p.add_argument("--force", action="store_true", help="Replace --out if it exists (only after the new folder is complete).")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")
    args = p.parse_args(argv)
    check_size_flag(p, "--max-shard-size", args.max_shard_size)
    return args


def run_tool(tool: str, convert: Callable[..., object], args: argparse.Namespace, *, checkpoint: Optional[str] = None,
             **kwargs: Any) -> int:
    """``convert(**kwargs)`` plus the output flags, with logging on; see :func:`run_main` for errors."""
    setup_logging()
    return run_main(lambda: convert(**kwargs, max_shard_size=args.max_shard_size, force=args.force,
                                    progress=not args.no_progress and sys.stderr.isatty()), tool, checkpoint)


def run_main(fn: Callable[[], object], tool: str, checkpoint: Optional[str] = None) -> int:
    """Run ``fn``; a bad input is reported as ``tool: error: ...`` (exit 2), with nothing written.

    ``checkpoint``: the DeepSpeed checkpoint path read. torch's own load errors (a truncated .pt gives a
    RuntimeError from its zip reader) do not name the file, so when one escapes, the checkpoint's .pt files
    are probed and the unreadable one is reported instead; if none is found the error is not ours to word.
    """
    try:
        fn()
    except INPUT_ERRORS as e:
        return _report(tool, str(e))
    except TORCH_LOAD_ERRORS as e:
        bad = unreadable_torch_files(checkpoint) if checkpoint else []
        if not bad:
            raise
        return _report(tool, "; ".join(f"{path}: {reason}" for path, reason in bad)
                       + f" (torch.load: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    return 0


def _report(tool: str, message: str) -> int:
    print(f"{tool}: error: {message}\n{tool}: nothing was written under the output name", file=sys.stderr)
    return 2


def unreadable_torch_files(path: str) -> List[Tuple[str, str]]:
    """(file, reason) for each DeepSpeed .pt file under ``path`` (a step, checkpoints/ or run directory)
    that is not a complete torch archive. torch.save writes zip archives whose directory is at the end, so
    a truncated or half-copied file fails to open as a zip."""
    found = []
    for folder in sorted({path, *glob.glob(os.path.join(path, "step_*")), *glob.glob(os.path.join(path, "*", "step_*"))}):
        for file in sorted(glob.glob(os.path.join(folder, "*.pt"))):
            try:
                zipfile.ZipFile(file).close()
            except (zipfile.BadZipFile, OSError) as e:
                found.append((file, f"not a complete torch checkpoint file ({os.path.getsize(file)} bytes: {e}); "
                                    "truncated or partly copied? Copy it again or pick another step with --step"))
    return found
