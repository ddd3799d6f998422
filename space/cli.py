"""What every script shares: one-line errors instead of tracebacks, and a resume hint on Ctrl-C."""

from __future__ import annotations

import sys

from space.errors import SpaceError


def run(main) -> None:
    """Call `main()`; a `SpaceError` becomes `error: <message>` on stderr and exit status 1."""
    try:
        main()
    except SpaceError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted: finished results are kept; rerun the same command to resume")
