"""`gptflow config`: every config key with its type, default, doc, requirement and role.

The table is generated from the section dataclasses (gpt/config/reference.py). This command reads
no workspace and imports neither torch nor tiktoken, so it answers at once.
"""

from __future__ import annotations

import argparse
import sys

from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from gpt.config.reference import config_reference, filter_rows, render_markdown, render_text


def add_config_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `config` subcommand ([SECTION], --markdown, --config FILE, --set KEY=VALUE) to the CLI."""
    cfg = sub.add_parser(
        "config",
        help="list every config key with its type, default and doc (e.g. gptflow config pretrain)",
        description="Every config key with its type, default, doc, what its value must be, and its role "
        "(observation / placement keys are left out of the stage cache keys). With --config or --set, "
        "the resolved value of each key too.",
    )
    cfg.add_argument("section", nargs="?", help="only the keys at or under this prefix, e.g. pretrain or tasks")
    cfg.add_argument("--markdown", action="store_true", help="print a Markdown table instead of aligned text")
    add_config_options(cfg)


def add_config_options(sp: argparse.ArgumentParser) -> None:
    """`--config FILE` and repeatable `--set KEY=VALUE`: how every command that reads a config takes it."""
    sp.add_argument("--config", help="YAML config (e.g. configs/demo.yaml); defaults apply when omitted")
    sp.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set pretrain.max_steps=100 (repeatable)",
    )


def cmd_config(args: argparse.Namespace) -> int:
    """Print the reference; a bad config or an unknown section exits 2 with one line."""
    try:
        resolved = load_config(args.config, args.overrides) if args.config or args.overrides else None
        rows = filter_rows(config_reference(resolved), args.section)
    except ConfigError as e:
        print(f"gptflow: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(render_markdown(rows) if args.markdown else render_text(rows))
    return 0
