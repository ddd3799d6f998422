"""What every script shares: one-line errors instead of tracebacks, and a resume hint on Ctrl-C."""

from __future__ import annotations

import sys
from collections.abc import Callable

from space.errors import SpaceError

RESUME_HINT = "rerun the same command to resume"


def run(main, resume_hint: Callable[[], str] | None = None) -> None:
    """Call `main()`; a `SpaceError` becomes `error: <message>` on stderr and exit status 1.

    On Ctrl-C the message says what is kept and how to continue: `resume_hint()` where a script resumes only
    when told to (train_sft.py), else the rerun that every resumable script takes."""
    try:
        main()
    except SpaceError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        hint = RESUME_HINT
        if resume_hint is not None:
            try:
                hint = resume_hint()
            except Exception:  # noqa: BLE001 - a hint that fails must not hide the interruption
                pass
        sys.exit(f"interrupted: finished results are kept; {hint}")
