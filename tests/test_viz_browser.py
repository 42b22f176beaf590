"""The interactive graphs and the backward animation in a real browser (headless Chromium).

Like the tour's browser test, Debian's ``chromium`` runs headless with nothing downloaded; these
tests also drive it, through the DevTools protocol over ``--remote-debugging-pipe`` (file
descriptors 3 and 4: no port, no extra package): they press the player's buttons and keys,
move the mouse over nodes, click collapsed clusters, and measure every label as it is drawn.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import jax
import pytest

import funcgrad as fg
from funcgrad import manual
from funcgrad.manual import cases

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
)
BASH = shutil.which("bash")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BASH is None, reason="bash starts Chromium with its DevTools pipe"),
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian's `chromium`) is not "
                       "installed; CI installs it"),
    pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed"),
]

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--remote-debugging-pipe",
]


class Browser:
    """Chromium, spoken to in the DevTools protocol: JSON messages ending in NUL on fd 3/4."""

    def __init__(self, profile: Path) -> None:
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # Chromium's ends go to its fds 3 and 4 by bash's redirections (no Python runs in
        # the forked child: JAX's threads make that unsafe), from fds above both, so that
        # placing one cannot clobber the other.
        high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10)
        high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
        self.proc = subprocess.Popen(
            [BASH, "-c", f'exec "$@" 3<&{high_r} 4>&{high_w}', "bash", CHROMIUM, *FLAGS,
             f"--user-data-dir={profile}"],
            pass_fds=(high_r, high_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in (to_chrome_r, from_chrome_w, high_r, high_w):
            os.close(fd)
        self._buffer = b""
        self._id = 0

    def _message(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer")
            if select.select([self._r], [], [], left)[0]:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed its DevTools pipe")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 120) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._w, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", timeout=20)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


class Page:
    """One tab: navigate, evaluate JavaScript, press keys, move and click the mouse."""

    def __init__(self, browser: Browser, path: Path, width: int = 1400, height: int = 900):
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget",
                                    {"targetId": target, "flatten": True})["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.send("Page.navigate", {"url": path.as_uri()})
        for _ in range(600):
            if self.eval("document.readyState") == "complete":
                break
            time.sleep(0.05)
        self.eval("document.fonts.ready.then(function () { return true; })")

    def send(self, method: str, params: dict | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, self.session)

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def key(self, key: str, code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent",
                      {"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code})

    def move(self, x: float, y: float) -> None:
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})

    def click(self, x: float, y: float) -> None:
        self.move(x, y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent",
                      {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def centre(self, selector: str) -> tuple[float, float]:
        """Scroll the first element matching ``selector`` into view; its centre on screen."""
        box = self.eval(
            f"(function () {{ var e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center', inline: 'center'});"
            " var b = e.getBoundingClientRect(); return [b.x + b.width / 2, b.y + b.height / 2];"
            " })()"
        )
        return box[0], box[1]

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def small_transformer():
    return cases.transformer(jax.random.PRNGKey(4), jax.random.PRNGKey(5), d_model=8, seq_len=4)


# ---- the animation ---------------------------------------------------------------------------


def test_the_player_steps_on_next_and_arrow_keys_and_highlights_each_step(browser, tmp_path):
    params = manual.xor.init(jax.random.PRNGKey(0), 2)
    x, t = manual.xor.data()
    anim = fg.viz.animate_backward(manual.xor.loss, params, x, t)
    page = Page(browser, anim.save(tmp_path / "xor.html"))
    state = ("(function () { var r = document.querySelector('.fg-root');"
             " var c = document.querySelectorAll('g.fg-current');"
             " return [r.getAttribute('data-frame'), r.getAttribute('data-current'),"
             " Array.prototype.map.call(c, function (e) { return e.id; })]; })()")
    assert page.eval(state) == ["0", "", []]
    seen = []
    for k in range(1, 4):
        page.click(*page.centre('[data-act="next"]'))
        frame, current, highlighted = page.eval(state)
        assert frame == str(k)
        assert highlighted == [current] == [f"{anim.ns}v0-{anim.steps[k - 1].node}"]
        seen.append(current)
    assert len(set(seen)) == 3, "each step highlights another node"
    page.key("ArrowRight", 39)
    assert page.eval(state)[0] == "4"
    page.key("ArrowLeft", 37)
    page.key("ArrowLeft", 37)
    assert page.eval(state)[:2] == ["2", seen[1]]
    caption = page.eval("document.querySelector('.fg-caption').innerText")
    assert f"step 2 of {len(anim) - 1}: transpose equation {anim.steps[1].index}" in caption
    assert f"rule {anim.steps[1].rule}:" in caption
    page.click(*page.centre('[data-act="last"]'))
    assert page.eval(state)[0] == str(len(anim) - 1)
    # The drawn texts at the last step are those of the last SVG frame.
    texts = page.eval("Array.prototype.map.call(document.querySelectorAll('.fg-view g.node "
                      "text'), function (t) { return t.textContent; })")
    assert "grad ?" not in texts and any(t.startswith("grad [") for t in texts)
    page.screenshot(tmp_path / "player.png")


def test_hovering_a_node_shows_its_summary_as_the_walk_has_got(browser, tmp_path):
    params = manual.xor.init(jax.random.PRNGKey(0), 2)
    x, t = manual.xor.data()
    anim = fg.viz.animate_backward(manual.xor.loss, params, x, t)
    page = Page(browser, anim.save(tmp_path / "xor.html"))
    name = next(n for n, r in anim.graph.records.items()
                if r.kind == "input" and r.grad_lines and "layers[0].W" in
                anim.graph.source.split(f"\t{n} [", 1)[1].split("\n", 1)[0])
    selector = f"#{anim.ns}v0-{name.replace('-', '')}"
    page.move(*page.centre(selector))
    tip = page.eval("document.querySelector('.fg-tip').hidden ? null : "
                    "document.querySelector('.fg-tip').textContent")
    assert tip.startswith("layers[0].W: a parameter")
    assert "value: float32[2, 2], 4 entries" in tip and "std" in tip and "NaN 0" in tip
    assert "gradient: not computed yet" in tip
    page.click(*page.centre('[data-act="last"]'))
    page.move(*page.centre(selector))
    tip = page.eval("document.querySelector('.fg-tip').textContent")
    assert "gradient: float32[2, 2], 4 entries" in tip and "not computed" not in tip


def test_a_collapsed_cluster_opens_and_closes_in_place(browser, tmp_path):
    case = small_transformer()
    anim = fg.viz.animate_backward(case.loss, *case.args, node_budget=60)
    for path in (anim.save(tmp_path / "transformer.html"),
                 fg.viz.draw_jaxpr(case.loss, *case.args, node_budget=60)
                 .save_html(tmp_path / "graph.html")):
        page = Page(browser, path)
        view = "document.querySelector('.fg-root').getAttribute('data-view')"
        first = page.eval(view)
        assert first.endswith("-view-0")
        title = page.eval("document.querySelector('.fg-view:not([hidden]) g.fg-drill')"
                          ".getAttribute('data-view')")
        page.click(*page.centre(".fg-view:not([hidden]) g.fg-drill"))
        opened = page.eval(view)
        assert opened.endswith(f"-view-{title}")
        visible = page.eval("Array.prototype.filter.call(document.querySelectorAll('.fg-view'),"
                            " function (v) { return !v.hidden; }).map(function (v) "
                            "{ return [v.id, v.querySelectorAll('g.node').length]; })")
        assert len(visible) == 1 and visible[0][0] == opened and visible[0][1] > 2
        assert "(opened)" in page.eval(f"document.getElementById({json.dumps(opened)}).innerText")
        page.click(*page.centre(".fg-back"))
        assert page.eval(view) == first


# ---- labels fit their boxes ------------------------------------------------------------------

OVERFLOW = """(function () {
  var bad = [], checked = 0;
  function box(group) {
    var s = group.querySelector('path, polygon, ellipse');
    return s && s.getBBox();
  }
  document.querySelectorAll('g.node, g.cluster').forEach(function (g) {
    var b = box(g);
    if (!b) { return; }
    g.querySelectorAll('text').forEach(function (t) {  // (Graphviz does not nest clusters)
      if (t.closest('.fg-sum') || !t.textContent.trim()) { return; }  // badges; spaces
      var r = t.getBBox();
      checked++;
      if (r.x < b.x - 0.5 || r.x + r.width > b.x + b.width + 0.5) {
        bad.push([g.id, t.textContent, r.x, r.x + r.width, b.x, b.x + b.width]);
      }
    });
  });
  return [checked, bad];
})()"""


def seed_cases():
    k = jax.random.split(jax.random.PRNGKey(6), 3)
    return {
        "linear": cases.linear(k[0], k[1], batch=4),
        "xor": cases.xor(k[0], hidden=2),
        "mlp": cases.mlp(k[0], k[1], batch=2),
        "cnn": cases.cnn(k[0], k[1], k[2], conv_channels=(2,), dense_sizes=(4,), batch=2),
        "transformer": small_transformer(),
    }


@pytest.mark.parametrize("model", ["linear", "xor", "mlp", "cnn", "transformer"])
def test_no_label_overflows_its_box(browser, tmp_path, model):
    case = seed_cases()[model]
    g = fg.viz.draw_jaxpr(case.loss, *case.args)
    backward = fg.viz.draw_jaxpr(case.loss, *case.args, view="backward")
    files = {
        "plain.svg": g.pipe(format="svg"),  # as Graphviz writes it: no font inside
        "embedded.svg": g.to_svg().encode(),
        "backward.svg": backward.to_svg().encode(),
        "page.html": g.to_html().encode(),
    }
    if model in ("xor", "linear"):
        anim = fg.viz.animate_backward(case.loss, *case.args)
        files["frame0.svg"] = anim.frame_svg(0, embed_font=True).encode()
        files["last.svg"] = anim.frame_svg(len(anim) - 1, embed_font=True).encode()
    for name, data in files.items():
        path = tmp_path / f"{model}-{name}"
        path.write_bytes(data)
        page = Page(browser, path)
        assert page.eval("document.fonts.check('10px \"DejaVu Sans\"')")
        checked, bad = page.eval(OVERFLOW)
        assert checked > 10, (name, checked)
        assert bad == [], f"{model} {name}: labels wider than their boxes: {bad[:5]}"
