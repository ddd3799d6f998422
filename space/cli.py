"""Small helpers shared by the scripts: `true/false` flags and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import sys

from space.errors import SpaceError


def str2bool(value: str) -> bool:
    """The original scripts pass booleans as strings (`--use_cache true`)."""
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def run(main) -> None:
    """Call `main()`; a `SpaceError` becomes `error: <message>` on stderr and exit status 1."""
    try:
        main()
    except SpaceError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted: finished results are kept; rerun the same command to resume")
