"""What the two conversion tools share: logging set-up and turning known input errors into one line."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from megadfm.config_base import ConfigError
from megadfm.conversion.checkpoint_source import SourceError
from megadfm.conversion.hf_folder import HFFolderError
from megadfm.conversion.metadata import NotEnoughSpaceError, OutputExistsError
from megadfm.conversion.name_map import ConversionError
from megadfm.conversion.safetensors_io import SafetensorsError
from megadfm.data.tokenizer import TokenizerError

INPUT_ERRORS = (ConversionError, HFFolderError, SourceError, SafetensorsError, OutputExistsError, NotEnoughSpaceError,
                TokenizerError, ConfigError, FileNotFoundError)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def check_size_flag(parser, flag: str, value: str) -> None:
    """Reject an unparseable size (e.g. --max-shard-size 5XB) at argument parsing, before any work."""
    from megadfm.conversion.safetensors_io import parse_size

    try:
        parse_size(value)
    except ValueError as e:
        parser.error(f"{flag}: {e}")


def run_main(fn: Callable[[], object], tool: str) -> int:
    """Run ``fn``; a bad input is reported as ``tool: error: ...`` (exit 2), with nothing written."""
    try:
        fn()
    except INPUT_ERRORS as e:
        print(f"{tool}: error: {e}\n{tool}: nothing was written under the output name", file=sys.stderr)
        return 2
    return 0
