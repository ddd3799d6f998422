"""Regenerate the "at a glance" tables of README.md and docs/benchmarks.md from the results files.

    python scripts/make_glance.py

The runs shown are named in `docs/results/glance.json`; the rendering is `space.bench.glance`. A test fails
when a page's tables differ from what this writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from space.bench.glance import update_glance
from space.cli import parse_flags, run


@dataclass
class GlanceArguments:
    root: str = field(default=str(Path(__file__).resolve().parents[1]), metadata={"help": "the repository"})


def main(argv=None) -> list[Path]:
    (args,) = parse_flags((GlanceArguments,), argv, "make_glance.py", __doc__.split("\n\n")[0])
    written = update_glance(args.root)
    print("\n".join(str(path) for path in written) or "the tables were up to date")
    return written


if __name__ == "__main__":
    run(main)
