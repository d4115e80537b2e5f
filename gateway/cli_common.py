"""What every `countersign` command module shares: finding the configuration, and declaring a command.

`gateway.cli` assembles the commands; `gateway.cli_policy` and `gateway.cli_approvers` hold some of them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from gateway.config import Settings, load_settings

CONFIG_HELP = "configuration file (default: $COUNTERSIGN_CONFIG, else ./countersign.toml)"


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """How a command that goes through the approver API finds the gateway and says who it is."""
    parser.add_argument(
        "--url", help="gateway URL (default: $COUNTERSIGN_URL, else the configuration's public_url or host:port)"
    )
    parser.add_argument("--token", help="approver API token (default: $COUNTERSIGN_API_TOKEN)")
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)


if TYPE_CHECKING:
    # What add_subparsers() returns; argparse names it only privately and it is generic only in stubs.
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def config_path(given: str | None) -> str:
    """The configuration file every command reads: --config, else $COUNTERSIGN_CONFIG, else ./countersign.toml."""
    return given or os.environ.get("COUNTERSIGN_CONFIG") or "countersign.toml"


def read_settings(path: str | None, *, only: Collection[str] | None = None, ignore: Collection[str] = ()) -> Settings:
    return load_settings(config_path(path), only=only, ignore=ignore)


def command(
    sub: Subparsers, name: str, help_text: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
    parser.set_defaults(func=func)
    return parser
