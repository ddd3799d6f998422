"""What every script shares: one flag parser, one-line errors instead of tracebacks, a resume hint on Ctrl-C.

`parse_flags` is how every entry point reads its command line: `HfArgumentParser` over the script's argument
dataclasses (booleans take `true/false`, a bare `--flag` means true), and an unknown flag, a value of the
wrong type or a missing required flag is one `SpaceError` line naming it, never argparse's usage dump (for
`train_sft.py` that is hundreds of lines). `run` prints such a line as `error: ...` and exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence

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


def require_counts(args, names: Sequence[str], hints: Mapping[str, str] | None = None) -> None:
    """One line for the first flag of `names` (attributes of `args`) set below 1, with `hints[name]` after it: a
    count of 0 or less never means "all" or "the default", and it must be refused before minutes of loading.
    An unset flag (None) passes."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            hint = (hints or {}).get(name)
            raise SpaceError(f"--{name} must be at least 1 (got {value})" + (f"; {hint}" if hint else ""))


def count_list(flag: str, text: str, example: str = "1,2,4") -> list[int]:
    """`text` (the value of `--flag`) as the whole numbers >= 1 it lists, in order: one line for anything else
    (a word, an empty item, 0 or less), naming the flag and an example."""
    try:
        counts = [int(item) for item in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise SpaceError(f"--{flag} must be a comma list of whole numbers, at least 1 each, e.g. {example} "
                         f"(got {text!r})")
    return counts


def parse_flags(types: Sequence[type], argv: Sequence[str] | None, program: str, description: str | None = None,
                defaults: Mapping | None = None, show_defaults: bool = True) -> tuple:
    """One instance of each dataclass in `types` from `argv` (None: the command line). `defaults` replace the
    dataclasses' own (converted exactly like flag values). `show_defaults`: `--help` appends each default; off
    where the help texts say what a None default means."""
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message: str):  # argparse's contract: raise or exit, never return
            raise SpaceError(f"{program}: {message}; see --help")

    formatter = argparse.ArgumentDefaultsHelpFormatter if show_defaults else argparse.HelpFormatter
    parser = Parser(list(types), prog=program, description=description, formatter_class=formatter)
    if defaults:
        # argparse converts string defaults exactly like flag values; scalars from a config file go the same way
        parser.set_defaults(**{key: str(value) if isinstance(value, (bool, int, float)) else value
                               for key, value in defaults.items()})
    try:
        return tuple(parser.parse_args_into_dataclasses(args=None if argv is None else list(argv),
                                                        look_for_args_file=False))
    except ValueError as error:
        if isinstance(error, SpaceError):
            raise
        message = " ".join(str(error).split())
        if "arguments are not used by the HfArgumentParser" in message:
            unknown = message.rsplit(":", 1)[-1].strip()
            raise SpaceError(f"unknown flag(s) for {program}: {unknown}; see --help") from None
        raise SpaceError(f"{program}: {message}") from None
