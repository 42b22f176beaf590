"""The decision boundary of a 2-D classifier over training, as an animated GIF.

Frames are collected during :func:`funcgrad.train.fit` by a callback that predicts on a fixed grid
once per epoch (one jitted call: cheap next to the epoch itself), then written as a GIF::

    recorder = fg.viz.animate.record_boundary(predict, x)     # predict(params, points) -> probs
    recorder.record(params)                                   # frame 0: before training
    params, history = fg.train.fit(..., callbacks=[recorder])
    fg.viz.animate.decision_boundary_animation(recorder.frames, x, y, "moons.gif", fps=8)

A frame is a plain dict: ``epoch`` (epochs done), ``xx``/``yy`` (the grid), ``values`` (the
predictions on it, ``(R, R)`` class-1 probabilities or ``(R, R, k)`` class probabilities) and
``metrics`` (the epoch's entries of ``history``, e.g. loss and accuracy).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.collections import PathCollection
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure

from funcgrad.viz.plots import _draw_regions, _grid_values, boundary_grid, draw_boundary

__all__ = ["BoundaryRecorder", "decision_boundary_animation", "record_boundary"]

_SHOWN_METRICS = ("loss", "accuracy", "eval_loss", "eval_accuracy")


class BoundaryRecorder:
    """A ``fit`` callback that stores the predictions on a fixed 2-D grid every ``every`` epochs.

    Made by :func:`record_boundary`. ``frames`` is the list of frame dicts (see the module
    docstring); ``record(params)`` adds one by hand, e.g. before training. Never stops training.
    """

    def __init__(
        self,
        predict_fn: Callable[[Any, Any], Any],
        x: Any,
        *,
        resolution: int = 100,
        padding: float = 0.5,
        every: int = 1,
    ) -> None:
        import jax

        if every < 1:
            raise ValueError(f"record_boundary: every must be >= 1, got {every}")
        self.xx, self.yy, points = boundary_grid(x, resolution=resolution, padding=padding)
        self.every = every
        self.frames: list[dict[str, Any]] = []
        self._predict = jax.jit(lambda params: predict_fn(params, points))

    def record(
        self, params: Any, *, epoch: int = 0, metrics: Mapping[str, float] | None = None
    ) -> dict[str, Any]:
        """Predict on the grid with ``params`` and append the frame; returns it."""
        values = np.asarray(self._predict(params), dtype=np.float32)
        values = values.reshape(*self.xx.shape, -1)
        if values.shape[-1] == 1:
            values = values[..., 0]
        frame = {
            "epoch": int(epoch),
            "xx": self.xx,
            "yy": self.yy,
            "values": values,
            "metrics": dict(metrics or {}),
        }
        self.frames.append(frame)
        return frame

    def __call__(self, state: Mapping[str, Any]) -> None:
        epoch = int(state["epoch"]) + 1  # fit passes the 0-based index of the epoch just done
        if epoch % self.every and epoch != state.get("epochs"):
            return
        history = state.get("history", {})
        metrics = {k: float(history[k][-1]) for k in _SHOWN_METRICS if history.get(k)}
        self.record(state["params"], epoch=epoch, metrics=metrics)


def record_boundary(
    predict_fn: Callable[[Any, Any], Any],
    x: Any,
    *,
    resolution: int = 100,
    padding: float = 0.5,
    every: int = 1,
) -> BoundaryRecorder:
    """Return a ``fit`` callback recording the decision boundary every ``every`` epochs (and at
    the last one).

    ``predict_fn(params, points)`` maps ``(m, 2)`` float32 grid points to class-1 probabilities
    ``(m,)``/``(m, 1)`` or class probabilities ``(m, k)``; it is jitted once. The grid covers
    ``x`` plus ``padding`` at ``resolution``² points.
    """
    return BoundaryRecorder(predict_fn, x, resolution=resolution, padding=padding, every=every)


def _is_scatter(artist: Any) -> bool:
    return isinstance(artist, PathCollection) and not isinstance(artist, ContourSet)


_SHORT_NAMES = {"accuracy": "acc", "eval_loss": "val loss", "eval_accuracy": "val acc"}


def _frame_title(frame: Mapping[str, Any], title: str | None) -> str:
    parts = [f"epoch {frame['epoch']}"]
    for name, value in frame.get("metrics", {}).items():
        short = _SHORT_NAMES.get(name, name)
        shown = f"{100 * value:.1f}%" if "accuracy" in name else f"{value:.3f}"
        parts.append(f"{short} {shown}")
    head = f"{title}\n" if title else ""
    return head + "   ".join(parts)


def decision_boundary_animation(
    frames: Sequence[Mapping[str, Any]],
    x: Any,
    y: Any,
    path: str | os.PathLike[str],
    *,
    fps: float = 8,
    threshold: float = 0.5,
    title: str | None = None,
    dpi: int = 80,
    figsize: tuple[float, float] = (5.0, 4.6),
) -> Path:
    """Write the recorded ``frames`` as a looping GIF at ``path``; return the path.

    Each frame is drawn as :func:`funcgrad.viz.plots.decision_boundary` draws one picture, the
    data ``x``, ``y`` on top, the epoch and its metrics in the title: one GIF frame per recorded
    frame. Written with matplotlib's ``PillowWriter`` (Pillow comes with matplotlib) to a
    temporary file beside ``path``, then renamed: an interrupted run leaves no broken GIF.
    """
    frames = list(frames)
    if not frames:
        raise ValueError(
            "decision_boundary_animation: no frames; pass recorder.frames after fit(..., "
            "callbacks=[recorder]) (record_boundary makes the recorder)"
        )
    if fps <= 0:
        raise ValueError(f"decision_boundary_animation: fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=figsize)  # a fixed layout: constrained layout per frame is slow
    ax = fig.subplots()
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.11, top=0.89)

    first = frames[0]
    draw_boundary(ax, first["xx"], first["yy"], first["values"], x, y, threshold=threshold)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    # Only the background and the title change from frame to frame; the points and axes stay.
    regions = [a for a in [*ax.images, *ax.collections] if not _is_scatter(a)]

    def draw(i: int) -> list:
        frame = frames[i]
        if i:
            for artist in regions:
                artist.remove()
            values = _grid_values(
                np.reshape(frame["values"], (frame["xx"].size, -1)), frame["xx"].shape, "frame"
            )
            regions[:] = _draw_regions(ax, frame["xx"], frame["yy"], values, threshold)
        ax.set_title(_frame_title(frame, title), fontsize=9)
        return []

    animation = FuncAnimation(fig, draw, frames=len(frames), blit=False, repeat=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".gif", dir=path.parent)
    os.close(fd)
    try:
        animation.save(tmp, writer=PillowWriter(fps=fps), dpi=dpi)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
