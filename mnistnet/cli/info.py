"""``mnistnet info``: the version, the compiled SIMD path and the thread settings."""

from __future__ import annotations

import argparse

from mnistnet.cli.common import EXIT_OK
from mnistnet.runtime import show_config

NAME = "info"
HELP = "show the version, SIMD code path and thread settings"
DESCRIPTION = ("Show the version, the compiled SIMD code path and the OpenMP thread settings "
               "(mnistnet.show_config()).")


def add_arguments(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``mnistnet info`` takes no options."""
    return sub


def run(args: argparse.Namespace) -> int:
    """Print mnistnet.show_config()."""
    show_config()
    return EXIT_OK
