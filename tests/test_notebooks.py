"""Every notebook in notebooks/ runs top to bottom without an error (a notebook is documentation
that runs). New notebooks are picked up automatically."""

from __future__ import annotations

import html
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from nbclient.exceptions import CellExecutionError  # noqa: E402

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))

# Per cell; each notebook is meant to run in well under a minute on a laptop CPU, and this leaves
# room for a loaded CI machine compiling JAX ops for the first time.
CELL_TIMEOUT = 600


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOKS_DIR}"


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("outputs")]
        assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path):
    nb = nbformat.read(path, as_version=4)
    # The kernel is a subprocess: it inherits this environment (CPU only, headless matplotlib)
    # and, through the "python3" kernel spec, this interpreter (jupyter_client runs the spec's
    # "python" as sys.executable).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute()
    except CellExecutionError as err:
        pytest.fail(f"{path.name}: a cell raised\n{err}", pytrace=False)


# Run in a Jupyter kernel: tqdm.auto draws widgets there (ipywidgets is installed with the dev
# extra), updated from XLA's callback thread while the epoch runs.
PROGRESS_CELLS = [
    """\
import hashlib, http.server, pathlib, tempfile, threading
import jax, optax
import funcgrad as fg
from funcgrad import train
from funcgrad.data.download import download
from funcgrad.models import linear

x, y = fg.data.linear_regression(jax.random.key(0), 64)
fit_args = (train.regression_loss(linear.apply), linear.init(jax.random.key(1), 1), (x, y))
common = dict(optimizer=optax.sgd(0.1), epochs=2, batch_size=8, key=jax.random.key(2))
body = bytes(range(256)) * 40


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()""",
    "_, history = train.fit(*fit_args, **common, callbacks=[train.print_epochs()])",
    "_ = train.fit(*fit_args, **common, progress=False)",
    """\
url = f"http://127.0.0.1:{server.server_address[1]}/file.bin"
dest = download([url], pathlib.Path(tempfile.mkdtemp()) / "file.bin",
                sha256=hashlib.sha256(body).hexdigest())""",
    "print(f\"{history['loss'][-1]:.4g}\")",
]


def _widget_views(cell) -> list[str]:
    return [
        out["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
        for out in cell.outputs
        if out.output_type == "display_data"
        and "application/vnd.jupyter.widget-view+json" in out.get("data", {})
    ]


def test_fit_and_downloads_draw_tqdm_widgets_in_a_jupyter_kernel():
    pytest.importorskip("ipywidgets")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in PROGRESS_CELLS])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3")
    try:
        client.execute()
    except CellExecutionError as err:
        pytest.fail(f"a cell raised\n{err}", pytrace=False)
    _, fit_cell, quiet_cell, download_cell, loss_cell = nb.cells
    loss = loss_cell.outputs[0].text.strip()
    streams = [o for c in nb.cells[:4] for o in c.outputs if o.output_type == "stream"]
    assert not any("%|" in o.text or "/s]" in o.text for o in streams), "a text bar was drawn"
    # fit: one widget for the run; the callback's lines printed beside it, whole.
    assert len(_widget_views(fit_cell)) == 1
    printed = "".join(o.text for o in fit_cell.outputs if o.output_type == "stream")
    assert [line.split("  ")[0] for line in printed.splitlines()] == ["epoch 1/2", "epoch 2/2"]
    assert quiet_cell.outputs == []  # progress=False: nothing at all
    assert len(_widget_views(download_cell)) == 1
    # The widgets' final state, as stored in the notebook: bars full and green, labelled.
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [m["state"] for m in state.values() if m["model_name"] == "FloatProgressModel"]
    assert sorted((b["value"], b["max"], b["bar_style"]) for b in bars) == [
        (16, 16, "success"),
        (10240, 10240, "success"),
    ]
    texts = [  # tqdm pads with figure spaces and escapes HTML
        html.unescape(m["state"].get("value", "")).replace("\u2007", " ")
        for m in state.values()
        if m["model_name"] == "HTMLModel"
    ]
    assert "epoch 2/2: 100%" in texts and "file.bin: 100%" in texts
    assert any(t.startswith(" 16/16 [") and t.endswith(f"step/s, loss={loss}]") for t in texts)
    assert any(t.startswith(" 10.2k/10.2k [") and t.endswith("B/s, from 127.0.0.1]") for t in texts)
