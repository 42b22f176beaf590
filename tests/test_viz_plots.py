"""Training pictures: each plot returns a Figure with the expected artists; the GIF has a frame per
recorded epoch; the HTML report is escaped, relative and written atomically."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import optax
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from PIL import Image

from funcgrad import manual, models, train
from funcgrad.viz import animate, plots, report

HISTORY = {
    "loss": [1.0, 0.5, 0.25],
    "accuracy": [0.5, 0.75, 1.0],
    "eval_loss": [1.1, 0.6, 0.4],
    "eval_accuracy": [0.5, 0.7, 0.9],
    "epoch_time": [0.1, 0.1, 0.1],
    "wall_time": [0.5, 0.6, 0.7],
}


def images(fig: Figure) -> list[AxesImage]:
    return [im for ax in fig.axes for im in ax.images]


def scatters(ax) -> list[PathCollection]:
    return [c for c in ax.collections if type(c) is PathCollection]


def contours(ax) -> list[ContourSet]:
    return [c for c in ax.collections if isinstance(c, ContourSet)]


# ---- loss_curves ----------------------------------------------------------------------------
def test_loss_curves_one_panel_per_metric_with_train_and_eval():
    fig = plots.loss_curves(HISTORY)
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]  # no time panels
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["train", "eval"]
        np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(fig.axes[1].get_lines()[1].get_ydata(), [0.5, 0.7, 0.9])


def test_loss_curves_picks_metrics_and_uses_log_scale_for_a_wide_loss():
    fig = plots.loss_curves({"loss": [10.0, 1.0, 0.01]}, metrics=["loss"])
    assert len(fig.axes) == 1 and fig.axes[0].get_yscale() == "log"
    assert plots.loss_curves(HISTORY, metrics=["loss"]).axes[0].get_yscale() == "linear"
    with pytest.raises(ValueError, match="no metric \\['mse'\\]"):
        plots.loss_curves(HISTORY, metrics=["mse"])
    with pytest.raises(ValueError, match="no metric values"):
        plots.loss_curves({"loss": [], "epoch_time": []})


def test_loss_curves_places_every_step_inside_its_epoch():
    steps = [np.array([4.0, 3.0, 2.0, 1.0]), np.array([0.9, 0.8, 0.7, 0.6])]
    fig = plots.loss_curves({"loss": [2.5, 0.75]}, step_losses=steps)
    each_step = next(line for line in fig.axes[0].get_lines() if "each step" in line.get_label())
    np.testing.assert_allclose(each_step.get_xdata(), [0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2])
    np.testing.assert_allclose(each_step.get_ydata(), np.concatenate(steps))


# ---- decision boundaries ---------------------------------------------------------------------
def test_boundary_grid_covers_the_data_with_padding():
    x = np.array([[0.0, -1.0], [2.0, 3.0]])
    xx, yy, points = plots.boundary_grid(x, resolution=5, padding=0.5)
    assert xx.shape == yy.shape == (5, 5) and points.shape == (25, 2)
    assert points.dtype == np.float32
    np.testing.assert_allclose([xx.min(), xx.max(), yy.min(), yy.max()], [-0.5, 2.5, -1.5, 3.5])
    with pytest.raises(ValueError, match="shape \\(n, 2\\)"):
        plots.boundary_grid(np.zeros((3, 3)))


def test_decision_boundary_binary_draws_probabilities_the_boundary_and_each_class():
    x = np.array([[-1.0, 0.0], [1.0, 0.0], [-1.0, 1.0], [1.0, 1.0]])
    y = np.array([0, 1, 0, 1])
    fig = plots.decision_boundary(lambda p: 1 / (1 + np.exp(-5 * p[:, 0])), x, y, resolution=30)
    ax = fig.axes[0]
    (image,) = ax.images
    assert image.get_array().shape == (30, 30)
    assert 0 <= image.get_array().min() < 0.5 < image.get_array().max() <= 1
    assert len(contours(ax)) == 1  # the 0.5 line
    assert sum(len(c.get_offsets()) for c in scatters(ax)) == len(x)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["class 0", "class 1"]


def test_decision_boundary_multiclass_colours_the_argmax():
    x = np.random.default_rng(0).normal(size=(30, 2))
    y = np.arange(30) % 3

    def scores(p):
        return np.stack([p[:, 0], p[:, 1], -p[:, 0] - p[:, 1]], axis=1)

    fig = plots.decision_boundary(scores, x, y, resolution=20, class_names=["a", "b", "c"])
    ax = fig.axes[0]
    winner = ax.images[0].get_array()
    assert set(np.unique(winner)) == {0, 1, 2}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]


def test_decision_boundary_names_a_wrong_prediction_shape():
    with pytest.raises(ValueError, match="returned shape \\(3,\\) for 100 grid points"):
        plots.decision_boundary(lambda p: np.zeros(3), np.zeros((4, 2)), np.zeros(4),
                                resolution=10)


# ---- XOR feature space -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def xor_nets():
    """Trained 2-2-1 and 2-3-1 sigmoid XOR networks (full batch Adam; seeds that do not end in
    one of XOR's local minima)."""
    x, t = manual.xor.data()
    nets = {}
    for hidden, seed in ((2, 1), (3, 0)):
        params = manual.xor.init(jax.random.key(seed), hidden)
        params, _ = train.fit(manual.xor.loss, params, (x, t), optimizer=optax.adam(0.1),
                              epochs=300, batch_size=4, key=jax.random.key(0))
        out = np.asarray(manual.xor.forward(params, x)["o"])[:, 0]
        assert np.array_equal(out > 0.5, [False, True, True, False]), out
        nets[hidden] = params
    return nets


def test_xor_feature_space_2d_separates_the_hidden_points_with_the_output_line(xor_nets):
    params = xor_nets[2]
    fig = plots.xor_feature_space(params)
    ax_in, ax_h = fig.axes
    assert ax_in.images and contours(ax_in)  # the input-space boundary
    assert ax_h.name == "rectilinear"
    # The black line drawn in hidden space is w2·h + b2 = 0: the two classes lie on either side.
    (W1, b1), (W2, b2) = ((np.asarray(l["W"]), np.asarray(l["b"])) for l in params["layers"])
    h = 1 / (1 + np.exp(-(plots.XOR_POINTS @ W1 + b1)))
    line = next(l for l in ax_h.get_lines() if to_hex(l.get_color()) == "#000000")
    (x0, x1), (y0, y1) = line.get_xdata(), line.get_ydata()
    np.testing.assert_allclose(np.array([[x0, y0], [x1, y1]]) @ W2[:, 0] + b2, 0, atol=1e-6)
    side = np.sign((x1 - x0) * (h[:, 1] - y0) - (y1 - y0) * (h[:, 0] - x0))
    assert side[0] == side[3] != side[1] == side[2]
    np.testing.assert_allclose(
        np.concatenate([c.get_offsets() for c in scatters(ax_h)]),
        np.concatenate([h[[0, 3]], h[[1, 2]]]),  # class 0 points, then class 1
        rtol=1e-5,
    )


def test_xor_feature_space_3d_draws_a_plane(xor_nets):
    fig = plots.xor_feature_space(xor_nets[3])
    ax_h = fig.axes[1]
    assert ax_h.name == "3d"
    assert any(type(c).__name__ == "Poly3DCollection" for c in ax_h.collections)  # the plane
    assert "plane" in ax_h.get_title()


def test_xor_feature_space_projects_wider_layers_onto_the_output_direction():
    params = models.mlp.init(jax.random.key(0), [2, 5, 1])
    fig = plots.xor_feature_space(params)
    ax_h = fig.axes[1]
    assert "w_2" in ax_h.get_xlabel()  # first axis: the output weights' direction
    (boundary,) = [l for l in ax_h.get_lines() if to_hex(l.get_color()) == "#000000"]
    assert boundary.get_xdata()[0] == boundary.get_xdata()[1]  # a vertical line
    with pytest.raises(ValueError, match="2-n-1 MLP"):
        plots.xor_feature_space(models.mlp.init(jax.random.key(0), [2, 3, 2]))
    with pytest.raises(ValueError, match="at most the 2 hidden units"):
        plots.xor_feature_space(models.mlp.init(jax.random.key(0), [2, 2, 1]), dims=3)


# ---- confusion matrix ------------------------------------------------------------------------
def test_confusion_counts_and_matrix_sum_to_the_number_of_examples():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    counts = plots.confusion_counts(y_true, y_pred)
    assert counts.shape == (4, 4) and counts.sum() == 200
    assert counts[1, 2] == np.sum((y_true == 1) & (y_pred == 2))
    fig = plots.confusion_matrix(y_true, y_pred, class_names=list("abcd"))
    ax = fig.axes[0]
    shown = np.asarray(ax.images[0].get_array())
    assert shown.sum() == 200
    cells = [int(t.get_text()) for t in ax.texts]
    assert len(cells) == 16 and sum(cells) == 200
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcd")
    assert f"{100 * np.trace(counts) / 200:.1f}%" in ax.get_title()


def test_confusion_matrix_normalized_rows_sum_to_one():
    fig = plots.confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], normalize=True)
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()).sum(axis=1), 1)
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        plots.confusion_matrix([0, 1], [1, 0], class_names=["a", "b", "c"])


# ---- first-layer weights ---------------------------------------------------------------------
def test_weight_images_one_28x28_image_per_unit_with_symmetric_colours():
    W = np.random.default_rng(0).normal(size=(784, 10))
    fig = plots.weight_images(W)
    ims = images(fig)
    assert len(ims) == 10
    assert all(im.get_array().shape == (28, 28) for im in ims)
    np.testing.assert_allclose(ims[3].get_array(), W[:, 3].reshape(28, 28), rtol=1e-6)
    low, high = ims[3].get_clim()
    assert low == -high == -np.abs(W[:, 3]).max().astype(np.float32)
    assert len(images(plots.weight_images(W, max_images=4))) == 4
    with pytest.raises(ValueError, match="shape \\(784, k\\)"):
        plots.weight_images(np.zeros((10, 784)))


# ---- the animation ---------------------------------------------------------------------------
def test_decision_boundary_animation_has_one_gif_frame_per_recorded_epoch(tmp_path):
    x = np.array([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]], np.float32)
    y = np.array([0, 1, 0, 1], np.int32)
    apply = models.linear.apply

    def predict(params, points):
        return jax.nn.sigmoid(apply(params, points))

    recorder = animate.record_boundary(predict, x, resolution=20)
    params = models.linear.init(jax.random.key(0), 2)
    recorder.record(params)
    loss = train.classifier_loss(apply)
    params, history = train.fit(loss, params, (x, y), optimizer=optax.sgd(0.5), epochs=5,
                                batch_size=4, key=jax.random.key(1), has_aux=True,
                                callbacks=[recorder])
    frames = recorder.frames
    assert [f["epoch"] for f in frames] == [0, 1, 2, 3, 4, 5]
    assert frames[0]["values"].shape == (20, 20)
    assert frames[-1]["metrics"]["loss"] == history["loss"][-1]

    path = animate.decision_boundary_animation(frames, x, y, tmp_path / "b.gif", fps=5)
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == len(frames)
        assert gif.info["duration"] == 200
    assert [p.name for p in tmp_path.iterdir()] == ["b.gif"]  # no temporary file left


def test_recorder_every_n_epochs_and_the_last():
    x = np.zeros((4, 2), np.float32)
    recorder = animate.record_boundary(lambda p, pts: pts[:, 0] * p, x, resolution=4, every=3)
    for epoch in range(7):
        recorder({"epoch": epoch, "epochs": 7, "params": 1.0, "history": {"loss": [0.5]}})
    assert [f["epoch"] for f in recorder.frames] == [3, 6, 7]
    with pytest.raises(ValueError, match="no frames"):
        animate.decision_boundary_animation([], x, np.zeros(4), "never.gif")


# ---- the HTML report -------------------------------------------------------------------------
def test_report_escapes_text_links_images_relatively_and_writes_atomically(tmp_path):
    page = report.Report("<b>tour</b> & co")
    page.summary([{"section": "<x>", "value": 1.5}])
    sec = page.section("Plots & <graphs>", "a `code` span <script>alert(1)</script>")
    sec.figure(plots.loss_curves(HISTORY), "loss curves")
    sec.image(b"GIF89a-not-really", "anim", suffix=".gif")
    sec.table([{"a": "<td>", "b": 2}])
    out = tmp_path / "out"
    index = page.write(out, extra={"wall_time": 1.0})
    text = index.read_text()
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;tour&lt;/b&gt; &amp; co" in text and "<code>code</code>" in text
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert srcs == ["images/loss-curves.png", "images/anim.gif"]
    assert all((out / s).is_file() for s in srcs)
    assert (out / "images/loss-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text())["summary"][0]["section"] == "<x>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary dirs left

    # A second write replaces the first as a whole.
    page2 = report.Report("second")
    page2.section("only text", "nothing else")
    page2.write(out)
    assert "second" in (out / "index.html").read_text()
    assert list((out / "images").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_report_never_replaces_a_foreign_directory_and_a_failed_write_leaves_the_old_page(
    tmp_path,
):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not written by funcgrad"):
        report.Report("t").write(foreign)
    assert (foreign / "thesis.tex").read_text() == "precious"

    out = tmp_path / "out"
    report.Report("first").write(out)

    class Broken:
        def savefig(self, *args, **kwargs):
            raise RuntimeError("boom")

    page = report.Report("second")
    with pytest.raises(RuntimeError, match="boom"):
        page.section("s").figure(Broken(), "x")  # fails while the page is being built
    page.files["bad.png"] = None  # and a write that fails half way
    with pytest.raises(TypeError):
        page.write(out)
    assert "first" in (out / "index.html").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]
