"""A tiny progress bar that draws only on terminals.

Used by downloads (bytes) and by training (steps). It has no dependencies and writes nothing when
its stream is not a terminal (a log file, a pipe, a notebook's captured stderr, a CI job), so
library code can always create one without cluttering logs::

    with ProgressBar(total=size, desc="train-images", unit="B") as bar:
        for chunk in chunks:
            bar.update(len(chunk))
            bar.set_postfix(f"mirror {i}")
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

__all__ = ["ProgressBar", "format_size"]

_BAR_WIDTH = 24


def format_size(n: float, unit: str = "B") -> str:
    """Return ``n`` with a decimal SI prefix: ``format_size(26421880) == '26.4 MB'``."""
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.0f} {prefix}{unit}" if prefix == "" else f"{n:.1f} {prefix}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


class ProgressBar:
    """A one-line progress bar on ``stream`` (default stderr), drawn only if it is a terminal.

    Args:
      total: the count at completion (bytes, steps, ...), or None if unknown (then only the count
        and rate are shown).
      desc: a short label drawn before the bar.
      unit: ``"B"`` shows sizes with SI prefixes (``12.3 MB``); anything else is shown as a plain
        count followed by the unit (``120/500 steps``).
      stream: where to draw; default ``sys.stderr`` at construction time.
      enabled: force drawing on (True) or off (False); default: only if ``stream.isatty()``.
      min_interval: seconds between redraws, so tight loops do not spend their time drawing.

    ``update(n)`` advances the count, ``set_postfix(text)`` sets a short text drawn after the bar
    (e.g. ``"loss 0.231"``), ``close()`` draws the final state and ends the line. It is a context
    manager; leaving the ``with`` block closes it.
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        desc: str = "",
        unit: str = "it",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        min_interval: float = 0.1,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.postfix = ""
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.min_interval = min_interval
        self.closed = False
        self._start = time.monotonic()
        self._last_draw = -float("inf")
        self._last_width = 0

    def update(self, n: int = 1) -> None:
        """Advance the count by ``n`` and redraw if ``min_interval`` has passed."""
        self.n += n
        if self.enabled and not self.closed:
            now = time.monotonic()
            if now - self._last_draw >= self.min_interval:
                self._draw(now)

    def set_postfix(self, text: str) -> None:
        """Set the text drawn after the bar (shown at the next redraw)."""
        self.postfix = text

    def close(self) -> None:
        """Draw the final state and end the line. Closing twice is harmless."""
        if self.closed:
            return
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
        self.closed = True

    def format(self, elapsed: float) -> str:
        """Return the line as it would be drawn after ``elapsed`` seconds."""
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.unit == "B":
            count = format_size(self.n)
            if self.total is not None:
                count += f"/{format_size(self.total)}"
            speed = f"{format_size(rate)}/s"
        else:
            count = f"{self.n}" if self.total is None else f"{self.n}/{self.total}"
            count += f" {self.unit}"
            speed = f"{rate:.1f} {self.unit}/s"
        parts = [f"{self.desc}:"] if self.desc else []
        timing = _format_seconds(elapsed)
        if self.total:
            fraction = min(max(self.n / self.total, 0.0), 1.0)
            filled = round(fraction * _BAR_WIDTH)
            parts.append(f"{fraction:4.0%} |{'#' * filled}{' ' * (_BAR_WIDTH - filled)}|")
            if 0 < self.n < self.total and rate > 0:
                timing += f"<{_format_seconds((self.total - self.n) / rate)}"
        parts.append(f"{count} [{timing}, {speed}]")
        if self.postfix:
            parts.append(self.postfix)
        return " ".join(parts)

    def _draw(self, now: float) -> None:
        line = self.format(now - self._start)
        # Pad with spaces to wipe what is left of a longer previous line.
        padding = " " * max(self._last_width - len(line), 0)
        self.stream.write(f"\r{line}{padding}")
        self.stream.flush()
        self._last_width = len(line)
        self._last_draw = now

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
