"""Pictures of training: loss curves, decision boundaries, hidden feature spaces, confusion
matrices and first-layer weights, each a matplotlib ``Figure``.

Every function builds its figure with matplotlib's object API (``Figure()``, ``fig.subplots()``),
never ``pyplot``: nothing is shown, no global figure is left open, and it works under any backend
(Agg included). A notebook displays the returned figure; a script saves it with
``fig.savefig("loss.png")``::

    params, history = fg.train.fit(loss_fn, params, (x, y), ...)
    fg.viz.plots.loss_curves(history)
    fg.viz.plots.decision_boundary(lambda pts: predict(params, pts), x, y)
    fg.viz.plots.confusion_matrix(y_test, y_pred, class_names=names)
    fg.viz.plots.weight_images(params["layers"][0]["W"])          # 784 x k -> k 28x28 images

Predictions for a decision boundary are class-1 probabilities ``(m,)`` / ``(m, 1)`` for a binary
classifier, or class probabilities ``(m, k)`` for ``k`` classes (argmax wins).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "boundary_grid",
    "confusion_counts",
    "confusion_matrix",
    "decision_boundary",
    "draw_boundary",
    "loss_curves",
    "weight_images",
    "xor_feature_space",
]

# Two classes: blue and red as in the classic "neural network playground" pictures; more
# classes take matplotlib's tab10 order.
CLASS_COLORS = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
PROBABILITY_CMAP = "RdBu_r"  # class-1 probability: 0 blue, 1 red, 0.5 white
WEIGHT_CMAP = "RdBu_r"  # weights: negative blue, positive red, 0 white
_TIME_KEYS = ("epoch_time", "wall_time")


# ---- loss and accuracy --------------------------------------------------------------------------
def _metric_panels(history: Mapping[str, Sequence[float]], metrics: Sequence[str] | None):
    """``[(metric, [(label, values), ...]), ...]``: train and eval curves of each metric."""
    names = [k for k in history if k not in _TIME_KEYS]
    base = list(dict.fromkeys(k.removeprefix("eval_") for k in names))
    if metrics is not None:
        unknown = [m for m in metrics if m not in base]
        if unknown:
            raise ValueError(
                f"loss_curves: no metric {unknown} in history; it has {base} "
                "(train values under the name, eval values under eval_<name>)"
            )
        base = list(metrics)
    panels = []
    for m in base:
        keys = (("train", m), ("eval", f"eval_{m}"))
        curves = [(label, list(history[k])) for label, k in keys if len(history.get(k, ()))]
        if curves:
            panels.append((m, curves))
    return panels


def loss_curves(
    history: Mapping[str, Sequence[float]],
    *,
    metrics: Sequence[str] | None = None,
    step_losses: Sequence[Sequence[float]] | None = None,
    log_loss: bool | None = None,
    title: str | None = None,
    panel_size: tuple[float, float] = (4.2, 3.2),
) -> Figure:
    """One panel per metric (loss, accuracy, ...) against the epoch, train and eval curves.

    ``history`` is what :func:`funcgrad.train.fit` returns: per-epoch lists such as ``loss``,
    ``accuracy``, ``eval_loss``, ``eval_accuracy``; ``eval_<name>`` is drawn in the panel of
    ``<name>``, the time columns are left out. ``metrics`` picks and orders the panels (default:
    every metric). ``step_losses``, one sequence of step losses per epoch (the
    ``state["step_losses"]`` a fit callback receives), adds every step's loss to the loss panel
    as a thin line, step ``i`` of ``s`` in epoch ``e`` at ``e - 1 + (i + 1) / s``, so the epoch
    means sit at the end of their epochs: the picture for runs of only a few epochs.
    ``log_loss`` puts the loss on a log scale (default: when it spans more than two orders of
    magnitude and is positive).
    """
    panels = _metric_panels(history, metrics)
    if not panels:
        raise ValueError(
            f"loss_curves: history has no metric values to plot (keys {list(history)}); pass the "
            "history returned by fg.train.fit after at least one epoch"
        )
    fig = Figure(figsize=(panel_size[0] * len(panels), panel_size[1]), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (metric, curves) in zip(axes, panels):
        if metric == "loss" and step_losses is not None:
            xs, ys = _step_positions(step_losses)
            ax.plot(xs, ys, "-", color="0.6", lw=0.6, label="train (each step)")
            curves = [*curves, ("train (each step)", ys)]  # for the log-scale decision
        for label, values in curves:
            if label == "train (each step)":
                continue
            epochs = np.arange(1, len(values) + 1)
            style = "-" if label == "train" else "--"
            marker = "o" if len(values) <= 30 else None
            ax.plot(epochs, values, style, marker=marker, markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if metric == "loss" and _use_log(curves, log_loss):
            ax.set_yscale("log")
        if "accuracy" in metric:
            ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
        ax.legend(loc="best")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return fig


def _step_positions(step_losses: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for e, losses in enumerate(step_losses):
        losses = np.asarray(losses, dtype=float).reshape(-1)
        xs.append(e + np.arange(1, losses.size + 1) / max(losses.size, 1))
        ys.append(losses)
    if not xs:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(xs), np.concatenate(ys)


def _use_log(curves: list[tuple[str, list[float]]], log_loss: bool | None) -> bool:
    if log_loss is not None:
        return log_loss
    values = np.concatenate([np.asarray(v, float) for _, v in curves])
    values = values[np.isfinite(values)]
    return bool(values.size) and values.min() > 0 and values.max() / values.min() > 100


# ---- decision boundaries ------------------------------------------------------------------------
def boundary_grid(
    x: Any, *, resolution: int = 200, padding: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xx, yy, points)``: a ``resolution``² grid over the 2-D inputs ``x`` plus ``padding``.

    ``xx`` and ``yy`` are ``(resolution, resolution)`` coordinates, ``points`` the same grid as
    ``(resolution², 2)`` float32 rows, ready for a model; reshape predictions with
    ``.reshape(xx.shape)``.
    """
    x = _points_2d(x, "boundary_grid")
    if resolution < 2:
        raise ValueError(f"boundary_grid: resolution must be >= 2, got {resolution}")
    lo, hi = x.min(axis=0) - padding, x.max(axis=0) + padding
    xx, yy = np.meshgrid(
        np.linspace(lo[0], hi[0], resolution, dtype=np.float32),
        np.linspace(lo[1], hi[1], resolution, dtype=np.float32),
    )
    return xx, yy, np.stack([xx.ravel(), yy.ravel()], axis=1)


def _points_2d(x: Any, where: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != 2 or len(x) == 0:
        raise ValueError(
            f"{where}: x must be 2-D inputs of shape (n, 2) with n >= 1, got shape {x.shape}; "
            "decision boundaries are drawn for models with two input features"
        )
    return x


def _grid_values(values: Any, shape: tuple[int, int], where: str) -> np.ndarray:
    """Predictions on the grid as ``(R, R)`` class-1 probabilities or ``(R, R, k)`` scores."""
    v = np.asarray(values, dtype=np.float32)
    m = shape[0] * shape[1]
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim not in (1, 2) or v.shape[0] != m:
        raise ValueError(
            f"{where}: predict_fn returned shape {v.shape} for {m} grid points; return class-1 "
            f"probabilities of shape ({m},) or ({m}, 1), or class probabilities ({m}, k)"
        )
    return v.reshape(*shape, *v.shape[1:])


def draw_boundary(
    ax: Axes,
    xx: np.ndarray,
    yy: np.ndarray,
    values: Any,
    x: Any,
    y: Any,
    *,
    threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
    legend: bool = True,
) -> None:
    """Draw grid predictions ``values`` (``(R, R)`` or ``(R*R,)`` probabilities, or ``(.., k)``
    class probabilities) as a coloured background with the boundary line, and the labelled
    points ``x``, ``y`` on top, into ``ax``."""
    v = _grid_values(np.reshape(values, (xx.size, -1)), xx.shape, "draw_boundary")
    _draw_regions(ax, xx, yy, v, threshold)
    _scatter_classes(ax, x, y, 2 if v.ndim == 2 else v.shape[-1], class_names, legend)
    ax.set_xlim(float(xx.min()), float(xx.max()))
    ax.set_ylim(float(yy.min()), float(yy.max()))


def _draw_regions(ax: Axes, xx: np.ndarray, yy: np.ndarray, v: np.ndarray, threshold: float):
    """The background of a decision-boundary picture; returns its artists (to remove them)."""
    extent = (float(xx.min()), float(xx.max()), float(yy.min()), float(yy.max()))
    if v.ndim == 2:  # binary: probability of class 1
        artists = [ax.imshow(v, origin="lower", extent=extent, cmap=PROBABILITY_CMAP, vmin=0,
                             vmax=1, alpha=0.55, aspect="auto", interpolation="bilinear")]
        if v.min() < threshold < v.max():
            artists.append(ax.contour(xx, yy, v, levels=[threshold], colors="k", linewidths=1.5))
        return artists
    # k classes: the argmax's colour, and lines where it changes
    k = v.shape[-1]
    winner = v.argmax(axis=-1)
    colors = ListedColormap(CLASS_COLORS[:k] if k <= len(CLASS_COLORS) else None)
    artists = [ax.imshow(winner, origin="lower", extent=extent, cmap=colors, vmin=-0.5,
                         vmax=k - 0.5, alpha=0.35, aspect="auto", interpolation="nearest")]
    if winner.min() != winner.max():
        artists.append(ax.contour(xx, yy, winner, levels=np.arange(k - 1) + 0.5, colors="k",
                                  linewidths=1))
    return artists


def _scatter_classes(ax, x, y, num_classes, class_names, legend) -> None:
    x = _points_2d(x, "decision_boundary")
    y = np.asarray(y).reshape(-1)
    if len(y) != len(x):
        raise ValueError(f"decision_boundary: {len(x)} points but {len(y)} labels")
    labels = np.rint(y).astype(int)
    for c in np.unique(labels):
        name = class_names[c] if class_names is not None and c < len(class_names) else f"class {c}"
        color = CLASS_COLORS[c % len(CLASS_COLORS)]
        sel = labels == c
        ax.scatter(x[sel, 0], x[sel, 1], s=18, color=color, edgecolors="k", linewidths=0.4,
                   label=name, zorder=3)
    if legend and num_classes <= 10:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.8)


def decision_boundary(
    predict_fn: Callable[[np.ndarray], Any],
    x: Any,
    y: Any,
    *,
    resolution: int = 200,
    padding: float = 0.5,
    threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """The decision regions of a 2-D classifier with the data on top.

    ``predict_fn(points)`` maps ``(m, 2)`` float32 points to class-1 probabilities ``(m,)`` /
    ``(m, 1)`` (the boundary is drawn where they cross ``threshold``) or to class probabilities
    ``(m, k)`` (regions coloured by the argmax). ``x`` ``(n, 2)`` and integer labels ``y`` ``(n,)``
    are scattered over it. With ``ax``, draws into that axes and returns its figure.
    """
    xx, yy, points = boundary_grid(x, resolution=resolution, padding=padding)
    values = _grid_values(predict_fn(points), xx.shape, "decision_boundary")
    if ax is None:
        fig = Figure(figsize=(5, 4.4), layout="constrained")
        ax = fig.subplots()
    draw_boundary(ax, xx, yy, values, x, y, threshold=threshold, class_names=class_names)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if title:
        ax.set_title(title)
    return ax.figure


# ---- the XOR network's hidden layer -------------------------------------------------------------
_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0),
    "identity": lambda z: z,
}

XOR_POINTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
XOR_LABELS = np.array([0, 1, 1, 0])


def _two_layer(params: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    try:
        hidden, out = params["layers"]
        W1, b1 = np.asarray(hidden["W"], np.float64), np.asarray(hidden["b"], np.float64)
        W2, b2 = np.asarray(out["W"], np.float64), np.asarray(out["b"], np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            "xor_feature_space: params must be a 2-n-1 MLP, {'layers': [{'W': (2, n), 'b': (n,)}, "
            "{'W': (n, 1), 'b': (1,)}]} as from fg.models.mlp.init(key, [2, n, 1])"
        ) from err
    if W1.shape[0] != 2 or W2.shape[1:] != (1,) or W2.shape[0] != W1.shape[1]:
        raise ValueError(
            f"xor_feature_space: expected a 2-n-1 MLP, got layer shapes {W1.shape} and {W2.shape}"
        )
    return W1, b1, W2[:, 0], float(np.reshape(b2, -1)[0])


def _projection(h: np.ndarray, w: np.ndarray, dims: int) -> np.ndarray:
    """Orthonormal rows: the output weights' direction first, then the principal directions of
    the hidden points orthogonal to it. In these coordinates the output unit's boundary
    w·h + b = 0 is the line (or plane) where the first coordinate is -b/|w|."""
    u = w / np.linalg.norm(w)
    rest = h - h.mean(axis=0)
    rest = rest - np.outer(rest @ u, u)
    basis = [u]
    _, _, vt = np.linalg.svd(rest, full_matrices=True)
    for v in vt:
        v = v - sum((v @ b) * b for b in basis)
        if np.linalg.norm(v) > 1e-6:
            basis.append(v / np.linalg.norm(v))
        if len(basis) == dims:
            break
    return np.array(basis)


def xor_feature_space(
    params: Any,
    x: Any = None,
    y: Any = None,
    *,
    activation: str = "sigmoid",
    dims: int | None = None,
    resolution: int = 150,
    grid_lines: int = 9,
    title: str | None = None,
) -> Figure:
    """The input space and the hidden-layer feature space of a 2-n-1 network, side by side.

    Left: the input plane with the network's decision regions (output probability σ(z), the
    boundary where it is 1/2), the data and, dashed, each hidden unit's line x·W1[:, j] + b1[j] = 0.
    Right: the data mapped to the hidden layer h = act(x W1 + b1), where the output unit is a
    linear classifier, z = h·w2 + b2: its boundary z = 0 is a straight line (``dims=2``) or a plane
    (``dims=3``, a 3-D panel). The grey curves are straight grid lines of the input square, bent by
    the hidden layer: the picture of how the layer makes XOR linearly separable.

    ``params`` is ``fg.models.mlp.init(key, [2, n, 1])`` (trained). ``x``, ``y`` default to the four
    XOR patterns. ``dims`` defaults to ``n`` for n in (2, 3) and to 2 otherwise; when ``n`` is more
    than ``dims``, the hidden points are shown in coordinates whose first axis is the output
    weights' direction w2/|w2| (so the boundary stays a line or plane), the others the hidden
    points' principal directions orthogonal to it. ``activation`` is the hidden layer's
    (sigmoid, tanh, relu, identity); the output unit is read as a sigmoid of z.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"xor_feature_space: activation must be one of {sorted(_ACTIVATIONS)}, got "
            f"{activation!r}"
        )
    act = _ACTIVATIONS[activation]
    W1, b1, w2, b2 = _two_layer(params)
    n_hidden = W1.shape[1]
    if dims is None:
        dims = n_hidden if n_hidden in (2, 3) else 2
    if dims not in (2, 3) or dims > n_hidden:
        raise ValueError(
            f"xor_feature_space: dims must be 2 or 3 and at most the {n_hidden} hidden units, got "
            f"{dims}"
        )
    x = XOR_POINTS if x is None else _points_2d(x, "xor_feature_space")
    y = XOR_LABELS if y is None else np.asarray(y).reshape(-1)

    def hidden(points: np.ndarray) -> np.ndarray:
        return act(np.asarray(points, np.float64) @ W1 + b1)

    def prob(points: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(hidden(points) @ w2 + b2)))

    fig = Figure(figsize=(10.5, 4.6), layout="constrained")
    points = _input_space_panel(fig.add_subplot(1, 2, 1), x, y, W1, b1, prob, resolution)
    ax_h = fig.add_subplot(1, 2, 2, projection="3d" if dims == 3 else None)
    _hidden_space_panel(ax_h, x, y, hidden, points, w2, b2, dims, grid_lines)
    if title:
        fig.suptitle(title)
    return fig


def _input_space_panel(ax: Any, x: np.ndarray, y: np.ndarray, W1: np.ndarray, b1: np.ndarray,
                       prob: Callable, resolution: int) -> np.ndarray:
    """The input plane: decision regions, data, one dashed line per hidden unit; the grid."""
    xx, yy, points = boundary_grid(x, resolution=resolution, padding=0.5)
    draw_boundary(ax, xx, yy, prob(points), x, y)
    xs = np.linspace(xx.min(), xx.max(), 2)
    for j in range(W1.shape[1]):
        a, b, c = W1[0, j], W1[1, j], b1[j]
        if abs(b) > 1e-9:
            ax.plot(xs, -(a * xs + c) / b, "--", color="0.3", lw=0.9)
        elif abs(a) > 1e-9:
            ax.axvline(-c / a, ls="--", color="0.3", lw=0.9)
    ax.set_xlim(xx.min(), xx.max())
    ax.set_ylim(yy.min(), yy.max())
    ax.set_title("input space: the network's boundary\n(dashed: one line per hidden unit)")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    return points


def _hidden_space_panel(ax: Any, x: np.ndarray, y: np.ndarray, hidden: Callable,
                        points: np.ndarray, w2: np.ndarray, b2: Any, dims: int,
                        grid_lines: int) -> None:
    """The data in the hidden layer, the bent input grid and the output unit's boundary."""
    n_hidden = len(w2)
    h = hidden(x)
    if dims == n_hidden:
        basis, offset = np.eye(n_hidden), None
        names = [f"$h_{j + 1}$" for j in range(n_hidden)]
    else:
        basis = _projection(hidden(points), w2, dims)
        offset = -b2 / np.linalg.norm(w2)
        names = ["$w_2 \\cdot h / |w_2|$"] + [f"principal direction {j}" for j in range(1, dims)]
    coords = h @ basis.T
    lines = _bent_grid(x, grid_lines, hidden, basis)
    for line in lines:
        ax.plot(*line.T, color="0.65", lw=0.7)
    labels = np.rint(y).astype(int)
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(*coords[sel].T, s=40, color=CLASS_COLORS[c % len(CLASS_COLORS)],
                   edgecolors="k", linewidths=0.5, label=f"class {c}", zorder=3)
    everything = np.concatenate([coords, *lines])
    lo, hi = everything.min(axis=0), everything.max(axis=0)
    pad = 0.08 * np.maximum(hi - lo, 1e-3)
    lo, hi = lo - pad, hi + pad
    w = basis @ w2  # the output weights in the plotted coordinates
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    if dims == 2:
        _boundary_line(ax, w, b2, lo, hi, offset)
    else:
        _boundary_plane(ax, w, b2, lo, hi, offset)
        ax.set_zlim(lo[2], hi[2])
        ax.set_zlabel(names[2])
        ax.view_init(elev=22, azim=-58)
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    what = "line" if dims == 2 else "plane"
    ax.set_title(f"hidden space ({n_hidden} units)\nthe output unit's {what} "
                 f"$w_2 \\cdot h + b_2 = 0$")
    ax.legend(loc="upper right", fontsize=8)


def _bent_grid(x: np.ndarray, n: int, hidden: Callable, basis: np.ndarray) -> list[np.ndarray]:
    """Straight lines of the input square, carried through the hidden layer."""
    if n <= 0:
        return []
    lo, hi = x.min(axis=0) - 0.25, x.max(axis=0) + 0.25
    t = np.linspace(0, 1, 60)
    out = []
    for s in np.linspace(0, 1, n):
        for axis in (0, 1):
            pts = np.empty((len(t), 2))
            pts[:, axis] = lo[axis] + s * (hi[axis] - lo[axis])
            pts[:, 1 - axis] = lo[1 - axis] + t * (hi[1 - axis] - lo[1 - axis])
            out.append(hidden(pts) @ basis.T)
    return out


def _boundary_line(ax: Axes, w: np.ndarray, b: float, lo, hi, offset) -> None:
    if offset is not None:  # projected coordinates: the boundary is first coordinate = offset
        ax.axvline(offset, color="k", lw=1.5)
        return
    xs = np.linspace(lo[0], hi[0], 2)
    if abs(w[1]) > 1e-9:
        ax.plot(xs, -(w[0] * xs + b) / w[1], "k", lw=1.5)
    elif abs(w[0]) > 1e-9:
        ax.axvline(-b / w[0], color="k", lw=1.5)


def _boundary_plane(ax: Any, w: np.ndarray, b: float, lo, hi, offset) -> None:
    if offset is not None:
        w, b = np.array([1.0, 0.0, 0.0]), -offset
    k = int(np.argmax(np.abs(w)))  # solve for the coordinate the plane depends on most
    i, j = [d for d in range(3) if d != k]
    ui, uj = np.meshgrid(np.linspace(lo[i], hi[i], 12), np.linspace(lo[j], hi[j], 12))
    uk = -(w[i] * ui + w[j] * uj + b) / w[k]
    uk = np.where((uk >= lo[k]) & (uk <= hi[k]), uk, np.nan)
    grid = [None, None, None]
    grid[i], grid[j], grid[k] = ui, uj, uk
    ax.plot_surface(*grid, color="#777777", alpha=0.2, linewidth=0)
    ax.plot_wireframe(*grid, color="k", linewidth=0.25, alpha=0.35, rstride=2, cstride=2)


# ---- confusion matrix ---------------------------------------------------------------------------
def confusion_counts(y_true: Any, y_pred: Any, num_classes: int | None = None) -> np.ndarray:
    """``counts[i, j]``: how many examples of true class ``i`` were predicted as class ``j``."""
    t = np.asarray(y_true).reshape(-1).astype(np.int64)
    p = np.asarray(y_pred).reshape(-1).astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"confusion_counts: {t.size} true labels but {p.size} predictions")
    if t.size and min(t.min(), p.min()) < 0:
        raise ValueError("confusion_counts: labels must be class indices >= 0")
    k = int(max(t.max(initial=-1), p.max(initial=-1)) + 1) if num_classes is None else num_classes
    if t.size and max(t.max(), p.max()) >= k:
        raise ValueError(f"confusion_counts: a label is >= num_classes={k}")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def confusion_matrix(
    y_true: Any,
    y_pred: Any,
    *,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    normalize: bool = False,
    title: str | None = None,
) -> Figure:
    """The confusion matrix as a heat map: rows the true class, columns the predicted one.

    Each cell shows its count (``normalize=True``: the fraction of its row, i.e. per-class
    recall on the diagonal). ``y_pred`` are class indices (take ``logits.argmax(-1)``).
    ``class_names`` label the axes; the title reports the accuracy.
    """
    counts = confusion_counts(y_true, y_pred, num_classes)
    k = counts.shape[0]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"confusion_matrix: {len(class_names)} class names for {k} classes")
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    rows = counts.sum(axis=1, keepdims=True)
    shown = counts / np.maximum(rows, 1) if normalize else counts
    size = max(4.0, 0.55 * k + 2.5)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of row" if normalize else "count")
    top = shown.max() if shown.size else 1
    for i in range(k):
        for j in range(k):
            text = f"{shown[i, j]:.2f}" if normalize else f"{counts[i, j]:d}"
            color = "white" if shown[i, j] > 0.6 * top else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = counts.sum()
    accuracy = np.trace(counts) / total if total else float("nan")
    ax.set_title((f"{title}\n" if title else "") + f"accuracy {100 * accuracy:.1f}% of {total}")
    return fig


# ---- first-layer weights ------------------------------------------------------------------------
def weight_images(
    W: Any,
    shape: tuple[int, int] = (28, 28),
    *,
    max_images: int | None = None,
    ncols: int | None = None,
    titles: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Each column of a first-layer weight matrix ``W`` ``(h·w, k)`` as an ``h×w`` image.

    Unit ``j``'s image is ``W[:, j].reshape(shape)``: the input pattern that excites it most.
    Colours are symmetric around 0 per image (red positive, blue negative, white 0), so the
    sign is readable whatever the scale. ``max_images`` shows the first units only; ``ncols``
    defaults to a near-square grid; ``titles`` label the images (default ``unit j``).
    """
    W = np.asarray(W, dtype=np.float32)
    size = math.prod(shape)
    if W.ndim != 2 or W.shape[0] != size:
        raise ValueError(
            f"weight_images: W must have shape ({size}, k) for {shape[0]}x{shape[1]} images (one "
            f"column per unit, as layers[0].W), got {W.shape}"
        )
    k = W.shape[1] if max_images is None else min(W.shape[1], max_images)
    if k == 0:
        raise ValueError("weight_images: no units to show")
    ncols = ncols or math.ceil(math.sqrt(k))
    nrows = math.ceil(k / ncols)
    fig = Figure(figsize=(1.15 * ncols, 1.25 * nrows + (0.4 if title else 0)),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for j, ax in enumerate(axes):
        ax.set_axis_off()
        if j >= k:
            continue
        image = W[:, j].reshape(shape)
        vmax = float(np.abs(image).max()) or 1.0
        ax.imshow(image, cmap=WEIGHT_CMAP, vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(titles[j] if titles is not None else f"unit {j}", fontsize=7)
    if title:
        fig.suptitle(title)
    return fig
