"""What the two conversion tools share: the output flags, logging set-up, and turning known input
errors into one line."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Optional, Sequence

from megadfm.checkpoints.safetensors_io import SafetensorsError
from megadfm.checkpoints.source import SourceError
from megadfm.config_base import ConfigError
from megadfm.conversion.hf_folder import HFFolderError
from megadfm.conversion.metadata import NotEnoughSpaceError, OutputExistsError
from megadfm.conversion.name_map import ConversionError
from megadfm.data.tokenizer import TokenizerError

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


def run_tool(tool: str, convert: Callable[..., object], args: argparse.Namespace, **kwargs: Any) -> int:
    """``convert(**kwargs)`` plus the output flags, with logging on; see :func:`run_main` for errors."""
    setup_logging()
    return run_main(lambda: convert(**kwargs, max_shard_size=args.max_shard_size, force=args.force,
                                    progress=not args.no_progress and sys.stderr.isatty()), tool)


def run_main(fn: Callable[[], object], tool: str) -> int:
    """Run ``fn``; a bad input is reported as ``tool: error: ...`` (exit 2), with nothing written."""
    try:
        fn()
    except INPUT_ERRORS as e:
        print(f"{tool}: error: {e}\n{tool}: nothing was written under the output name", file=sys.stderr)
        return 2
    return 0
