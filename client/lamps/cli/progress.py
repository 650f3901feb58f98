"""A one-line progress bar on stderr for long commands (redrawn in place on a terminal, a line per
tenth of the way otherwise, so logs stay readable)."""

from __future__ import annotations

import sys
from collections.abc import Callable

Progress = Callable[[str, float], None]


def progress_bar(width: int = 30) -> Progress:
    """`show(label, done_fraction)`; a fraction of 1 ends the line. Off a terminal, a line per
    tenth of the way, so logs stay short."""
    tty = sys.stderr.isatty()
    shown = [-1]

    def show(label: str, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if not tty:
            tenth = int(fraction * 10)
            if tenth == shown[0]:
                return
            shown[0] = tenth
        filled = int(width * fraction)
        bar = "#" * filled + "." * (width - filled)
        end = "" if tty and fraction < 1.0 else "\n"
        prefix = "\r" if tty else ""
        sys.stderr.write(f"{prefix}[{bar}] {fraction:4.0%} {label:<40}{end}")
        sys.stderr.flush()

    return show
