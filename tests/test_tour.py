"""`funcgrad tour --quick` writes a page whose every image loads in a real browser (headless
Chromium); a missing data set is skipped with a message, never a crash."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from funcgrad import cli_tour, tour
from funcgrad.data import mnist

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",
]


class _Links(HTMLParser):
    """Every src/href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        for name in ("src", "href"):
            if attrs.get(name) and tag != "img":
                self.links.append(attrs[name])


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def quick_tour(tmp_path_factory):
    """Run `funcgrad tour --quick --out DIR` as a user would, in a fresh process."""
    out = tmp_path_factory.mktemp("tour") / "funcgrad-tour"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "funcgrad.cli", "tour", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
        check=False,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout, proc.stderr


@pytest.mark.slow
def test_quick_tour_prints_a_summary_and_writes_a_page_of_existing_files(quick_tour):
    out, stdout, stderr = quick_tour
    index = out / "index.html"
    assert f"wrote {index}" in stdout
    assert "step/s" not in stderr and "%|" not in stderr  # into a pipe: no progress bar
    header = next(line for line in stdout.splitlines() if line.startswith("section"))
    assert header.split() == ["section", "metric", "value", "time"]
    assert "learned f(x1, x2) = " in stdout

    summary = json.loads((out / "summary.json").read_text())
    assert summary["quick"] is True and summary["failed_checks"] == []
    rows = {(r["section"], r["metric"]): r["value"] for r in summary["summary"]}
    assert {r["section"] for r in summary["summary"]} == set(tour.SECTIONS)
    assert rows[("xor", "2-2-1 sigmoid accuracy")].startswith("100.0%")
    assert rows[("xor", "2-3-1 sigmoid accuracy")].startswith("100.0%")
    assert all(v.startswith("OK") for (s, _), v in rows.items() if s == "gradients")
    assert ("mnist", "skipped") in rows or ("mnist", "784-64-10 test accuracy") in rows
    assert rows[("reverse", "animated backward passes")] == (
        "one neuron: 7 steps, XOR 2-2-1: 15 steps"
    )

    text = index.read_text()
    assert text.count('<div class="fg-root"') == 3  # two players and the live transformer graph
    assert text.count('<button data-act="play"') == 2
    page = _Links()
    page.feed(text)
    assert len(page.images) >= 10
    for ref in page.images + page.links:
        if ref.startswith("#"):
            continue
        assert not re.match(r"^[a-z]+:", ref), f"non-relative link {ref}"
        assert (out / ref).is_file(), f"{ref} is referenced but missing"
    shipped = {f"images/{p.name}" for p in (out / "images").iterdir()}
    assert shipped == set(page.images), "every image written is shown, and only those"
    gif = next(p for p in page.images if p.endswith(".gif"))
    from PIL import Image

    with Image.open(out / gif) as im:
        assert im.n_frames == tour.QUICK.moons_epochs + 1  # epoch 0 and after every epoch


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian's `chromium`) is not "
                    "installed; CI installs it")
def test_every_image_of_the_tour_loads_in_headless_chromium(quick_tour, tmp_path, record_property):
    out, _, _ = quick_tour
    url = (out / "index.html").as_uri()
    dom = _chromium(["--dump-dom", url], tmp_path / "profile")
    match = re.search(r'<body[^>]*data-images-ok="(\d+)/(\d+)"', dom.stdout)
    assert match, f"the page's load script did not run:\n{dom.stdout[:500]}\n{dom.stderr[-2000:]}"
    ok, total = int(match[1]), int(match[2])
    broken = re.search(r'data-images-broken="([^"]*)"', dom.stdout)[1]
    assert total >= 10
    assert ok == total, f"{total - ok} image(s) did not load: {broken}"
    # Each player and interactive graph ran its script and shows its first step.
    ready = re.findall(r'<div class="fg-root" id="\w+" tabindex="0" data-ready="1"[^>]*>',
                       dom.stdout)
    assert len(ready) == 3, ready
    assert sum('data-frame="0"' in tag for tag in ready) == 2

    screenshot = tmp_path / "tour.png"
    shot = _chromium(["--window-size=1280,2000", f"--screenshot={screenshot}", url],
                     tmp_path / "profile")
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    record_property("screenshot", str(screenshot))  # in --junitxml reports
    print(f"screenshot of the tour page: {screenshot}")  # shown with -s or -rP


class FakeTerminal(io.StringIO):
    """What tqdm sees on a terminal: a tty that takes UTF-8."""

    encoding = "utf-8"

    def isatty(self):
        return True


@pytest.mark.slow
def test_on_a_terminal_the_fashion_mnist_training_draws_a_progress_bar(tmp_path, monkeypatch):
    try:
        mnist.load_mnist("fashion-mnist", "test", download=False)
    except (mnist.DatasetError, OSError):
        pytest.skip("Fashion-MNIST is not on this machine (CI installs dataset-fashion-mnist)")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    lines: list[str] = []
    tour.run(tmp_path / "out", quick=True, sections=["linear", "mnist"], print_fn=lines.append)
    steps = tour.QUICK.mnist_train // 128
    draws = terminal.getvalue().split("\r")
    assert draws[0] == "" and terminal.getvalue().count("\n") == 1  # one bar: mnist's, not linear's
    assert draws[1] == f"epoch 1/1:   0%|          | 0/{steps} [00:00<?, ?step/s]"
    assert draws[-1].startswith(f"epoch 1/1: 100%|██████████| {steps}/{steps} [")
    assert "eval_accuracy=" in draws[-1] and draws[-1].endswith("]\n")
    assert any(line.startswith("  Fashion-MNIST: test accuracy") for line in lines)


def test_a_missing_data_set_is_skipped_with_a_message(tmp_path, monkeypatch):
    # No Fashion-MNIST anywhere: an empty cache and no system folders.
    monkeypatch.setenv("FUNCGRAD_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setitem(mnist.KNOWN_DIRS, "fashion-mnist", ())
    lines: list[str] = []
    result = tour.run(tmp_path / "out", quick=True, sections=["mnist"], print_fn=lines.append)
    assert result["summary"][0]["section"] == "mnist"
    assert result["summary"][0]["metric"] == "skipped"
    assert any("skipped: Fashion-MNIST is not on this machine" in line for line in lines)
    text = result["index"].read_text()
    assert "apt-get install dataset-fashion-mnist" in text and 'class="note warning"' in text


def test_a_failed_gradient_check_is_shown_on_the_page_and_fails_the_command(
    tmp_path, monkeypatch, capsys
):
    import jax.numpy as jnp

    import funcgrad as fg
    from funcgrad import cli

    def cube(x):
        return jnp.sum(x**3)

    def wrong(x):  # d/dx x³ is 3x², not 2x²
        return 2 * x**2

    planted = {"planted": lambda: fg.compare_grads(cube, jnp.arange(1.0, 4.0), reference=wrong)}
    monkeypatch.setattr(tour, "_grad_cases", lambda t: planted)
    status = cli.main(["tour", "--only", "gradients", "--out", str(tmp_path / "out")])
    assert status == 1
    out = capsys.readouterr().out
    assert "planted: FAILED 1/2 out of tolerance" in out
    assert "gradient checks FAILED: planted" in out
    page = (tmp_path / "out" / "index.html").read_text()
    assert 'class="note error"' in page and "Gradient checks FAILED: planted" in page
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["failed_checks"]


def test_tour_refuses_unknown_sections_and_a_foreign_output_directory(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown section"):
        tour.run(tmp_path / "x", sections=["moon"])
    assert tuple(cli_tour.SECTION_NAMES) == tour.SECTIONS
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    from funcgrad import cli

    status = cli.main(["tour", "--quick", "--only", "linear", "--out", str(foreign)])
    assert status == 2
    assert "not written by funcgrad" in capsys.readouterr().out
    assert (foreign / "todo.txt").read_text() == "keep me"
    with pytest.raises(SystemExit):
        cli.main(["tour", "--only", "linear,nope"])
