#!/usr/bin/env python
"""Pre-train a discrete flow-matching Qwen3 model with DeepSpeed.

    deepspeed --num_gpus 4 pretrain_dfm.py --config examples/qwen3_1p7b_h100x4.yaml
    DS_ACCELERATOR=cpu deepspeed --num_accelerators 2 pretrain_dfm.py --config examples/tiny_cpu.yaml
    python pretrain_dfm.py --config examples/tiny_cpu.yaml --set training.train_steps=10

Every config key can be overridden with --set section.key=value (values are YAML).
"""

from __future__ import annotations

import argparse
import sys

from megadfm.config import ConfigError, MegaDFMConfig, config_to_yaml, describe, load_config


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config (see examples/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set training.lr=1e-4 (repeatable)")
    parser.add_argument("--help-config", action="store_true", help="list every config key with its type, default and meaning")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return parser.parse_args(argv)


def main(argv=None, callbacks=()) -> int:
    """``callbacks``: extra megadfm.training.callbacks.Callback objects for this run (a wrapper script's
    way to add behaviour, e.g. the test suite's fault injection)."""
    args = parse_args(argv)
    if args.help_config:
        print(describe(MegaDFMConfig))
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"pretrain_dfm.py: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    from megadfm.training.run import run_training

    return run_training(cfg, args, callbacks=callbacks)


if __name__ == "__main__":
    from megadfm.training.run import exit_process

    exit_process(main())
