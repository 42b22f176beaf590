"""fit's progress bar: one ``tqdm.auto`` bar per fit, advanced from inside the compiled epoch.

``tqdm.auto`` draws a widget in a Jupyter kernel and a text line on a terminal. The bar counts
the optimizer steps of the whole run (``total`` = epochs to run × steps per epoch), so that its
rate and remaining time are the run's; its label says which epoch runs (``epoch 3/10``) and its
postfix shows the metrics of the last finished epoch.

The compiled epoch is shared by every fit with the same settings (see ``programs``), so which
bar an epoch advances is an argument of each call: an id registered here for the duration of
that call, under which :func:`report_progress` finds the bar. Two fits sharing a program thus
never advance each other's bars, and a report arriving after its epoch ended is ignored.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

from tqdm.auto import tqdm

NO_PROGRESS_BAR = 0
"""The id of "no bar": an epoch called with it reports nothing."""

# How often the compiled epoch reports, in the first epoch: every 1/20 of it (the step time is not
# known yet). Later epochs report about every REPORT_SECONDS, measured on the epoch before, and at
# most 20 times per epoch: a report is a host callback (tens of microseconds), too dear for every
# step of a small model.
_REPORTS_PER_EPOCH = 20
REPORT_SECONDS = 0.1

_IN_NOTEBOOK = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)


def shows_progress_by_default() -> bool:
    """Whether ``progress=None`` draws: in a Jupyter kernel (a widget, when ipywidgets is
    installed) or when stderr is a terminal; never into a log file, a pipe or CI's output."""
    isatty = getattr(sys.stderr, "isatty", None)
    return _IN_NOTEBOOK or bool(isatty and isatty())


class _EpochReports:
    """What a report of the running epoch advances: the bar, from ``offset`` steps on."""

    def __init__(self, bar: tqdm, offset: int) -> None:
        self.bar = bar
        self.offset = offset
        self.lock = threading.Lock()

    def advance_to(self, done: int) -> None:
        # Called from XLA's callback thread, once per device under a mesh: idempotent.
        with self.lock:
            target = self.offset + done
            if target > self.bar.n:
                self.bar.update(target - self.bar.n)


_REPORTS: dict[int, _EpochReports] = {}
_report_ids = itertools.count(1)


def report_progress(bar_id: Any, done: Any) -> None:
    """Advance the bar registered under ``bar_id`` to ``done`` steps of its epoch (no-op for an
    id that is not registered: no bar, or an epoch that already ended)."""
    reports = _REPORTS.get(int(bar_id))
    if reports is not None:
        reports.advance_to(int(done))


class FitProgress:
    """The progress bar of one fit run (nothing at all when ``enabled`` is False).

    Args:
      enabled: draw the bar (``fit``'s ``progress``, resolved).
      first_epoch, epochs: the run covers epochs ``first_epoch .. epochs - 1``.
      num_steps: optimizer steps per epoch.

    The bar is created at the first :meth:`epoch`, after that epoch's program is compiled, so its
    clock and rate exclude compilation. Use it as a context manager: leaving closes the bar.
    """

    def __init__(self, *, enabled: bool, first_epoch: int, epochs: int, num_steps: int) -> None:
        self.enabled = enabled
        self.first_epoch = first_epoch
        self.epochs = epochs
        self.num_steps = num_steps
        self.bar: tqdm | None = None
        self.seconds_per_step: float | None = None  # measured on the last epoch

    def report_every(self) -> int:
        """Steps between two reports from inside the next epoch (more than ``num_steps``: none;
        the end of each epoch is drawn by :meth:`end_epoch`)."""
        every = max(1, math.ceil(self.num_steps / _REPORTS_PER_EPOCH))
        if self.seconds_per_step:
            every = max(every, math.ceil(REPORT_SECONDS / self.seconds_per_step))
        return every

    @contextlib.contextmanager
    def epoch(self, epoch: int) -> Iterator[tuple[int, int]]:
        """Register epoch ``epoch``'s reports while the ``with`` block lasts; yields the bar id
        and the reporting interval to pass the epoch program (``(NO_PROGRESS_BAR, 0)`` when
        disabled)."""
        if not self.enabled:
            yield NO_PROGRESS_BAR, 0
            return
        desc = f"epoch {epoch + 1}/{self.epochs}"
        if self.bar is None:
            total = (self.epochs - self.first_epoch) * self.num_steps
            self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, disable=False)
        else:
            self.bar.set_description(desc, refresh=False)
        bar_id = next(_report_ids)
        _REPORTS[bar_id] = _EpochReports(self.bar, (epoch - self.first_epoch) * self.num_steps)
        start = time.perf_counter()
        try:
            yield bar_id, self.report_every()
        finally:
            del _REPORTS[bar_id]
        if self.num_steps:
            self.seconds_per_step = (time.perf_counter() - start) / self.num_steps

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Show epoch ``epoch`` as done, with its ``metrics`` (``{"loss": 0.23, ...}``)."""
        if self.bar is None:
            return
        # Drawn at tqdm's own pace (at most every 0.1 s), not once per epoch of a tiny model.
        self.bar.set_postfix({name: f"{value:.4g}" for name, value in metrics.items()}, False)
        self.bar.update((epoch + 1 - self.first_epoch) * self.num_steps - self.bar.n)

    def stopped_early(self) -> None:
        """A callback stopped the run: the steps done are the whole of it."""
        if self.bar is not None:
            self.bar.total = self.bar.n
            postfix = self.bar.postfix
            self.bar.set_postfix_str(f"{postfix}, stopped early" if postfix else "stopped early")

    def callbacks_writing(self) -> contextlib.AbstractContextManager[None]:
        """Around code that may print (fit's callbacks): the terminal bar is wiped before and
        drawn again after, so printed lines never land in the middle of it."""
        if self.bar is None or _IN_NOTEBOOK:  # a widget is not in the way of printed text
            return contextlib.nullcontext()
        return tqdm.external_write_mode(nolock=True)

    def __enter__(self) -> FitProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.close()
