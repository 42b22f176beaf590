"""The style sheet and the script of interactive graphs and backward-pass animations.

Both are inlined into every page or notebook output (no file, no network): the script finds its
own container by id, so several graphs can share a page. It shows a node's full summary when
the mouse is over it (``data-tip``), opens a collapsed cluster's precomputed view when it is
clicked (``data-view``) with a way back, and, for an animation, steps through its frames: each
frame sets the attributes and texts listed in the page's data (``props``), the same changes
:class:`~funcgrad.viz.graph.animation.BackwardAnimation` applies to make its SVG frames.
"""

from __future__ import annotations

__all__ = ["CSS", "SCRIPT"]

CSS = """
.fg-root { font-family: "DejaVu Sans", sans-serif; font-size: 13px; color: #222;
           position: relative; outline: none; }
.fg-root .fg-bar { display: flex; flex-wrap: wrap; gap: 6px; align-items: center;
                   margin: 4px 0; }
.fg-root button { font: inherit; padding: 2px 9px; border: 1px solid #999; border-radius: 4px;
                  background: #f7f7f7; cursor: pointer; }
.fg-root button:hover { background: #eee; }
.fg-root .fg-slider { width: 260px; }
.fg-root .fg-count { font-variant-numeric: tabular-nums; color: #444; min-width: 8em; }
.fg-root .fg-hint, .fg-root .fg-where { color: #777; font-size: 12px; }
.fg-root .fg-view { overflow: auto; max-height: 85vh; border: 1px solid #eee; }
.fg-root .fg-view svg { display: block; }
.fg-root .fg-view-title { font-weight: bold; margin: 4px; color: #555; }
.fg-root g.node.fg-drill { cursor: zoom-in; }
.fg-root .fg-caption { background: #fbfbf7; border: 1px solid #eee; padding: 4px 8px;
                       margin-bottom: 2px; min-height: 5.6em; }
.fg-root .fg-cap0 { font-weight: bold; }
.fg-root .fg-cap1 { color: #a13d2d; }
.fg-root .fg-tip { position: fixed; z-index: 1000; max-width: 46em; white-space: pre;
                   background: #fffff4; border: 1px solid #aaa; border-radius: 4px;
                   padding: 5px 8px; font-size: 12px; line-height: 1.35;
                   box-shadow: 2px 2px 6px rgba(0,0,0,0.2); pointer-events: none; }
"""

# ``ROOT`` is replaced by the container's id.
SCRIPT = r"""
(function () {
  var root = document.getElementById("ROOT");
  if (!root || root.getAttribute("data-ready")) { return; }
  root.setAttribute("data-ready", "1");
  var data = JSON.parse(root.querySelector("script.fg-data").textContent);
  var tip = root.querySelector(".fg-tip");
  var back = root.querySelector(".fg-back");
  var where = root.querySelector(".fg-where");
  var views = data.views, stack = [0];
  // Native tooltips (<title>) would double the summary shown below: keep them in data-tip.
  root.querySelectorAll("g.node > title, g.cluster > title").forEach(function (t) {
    t.parentNode.removeChild(t);
  });
  function nodeOf(el) {
    while (el && el !== root) {
      if (el.classList && el.classList.contains("node")) { return el; }
      el = el.parentNode;
    }
    return null;
  }
  function place(ev) {
    var x = ev.clientX + 16, y = ev.clientY + 14;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth - 4) { x = Math.max(4, ev.clientX - w - 12); }
    if (y + h > window.innerHeight - 4) { y = Math.max(4, ev.clientY - h - 10); }
    tip.style.left = x + "px"; tip.style.top = y + "px";
  }
  root.addEventListener("mouseover", function (ev) {
    var node = nodeOf(ev.target), text = node && node.getAttribute("data-tip");
    if (!text) { tip.hidden = true; return; }
    if (node.getAttribute("data-view")) { text += "\n\nclick to open this cluster"; }
    tip.textContent = text; tip.hidden = false; place(ev);
  });
  root.addEventListener("mousemove", function (ev) { if (!tip.hidden) { place(ev); } });
  root.addEventListener("mouseleave", function () { tip.hidden = true; });

  function show(k) {
    views.forEach(function (v, i) {
      document.getElementById(v.id).hidden = i !== k;
    });
    var top = stack.length > 1;
    back.hidden = !top;
    if (top) { back.textContent = "\u2190 back to " + views[stack[stack.length - 2]].title; }
    var path = stack.map(function (i) { return views[i].title; });
    where.textContent = top ? path.join(" \u203a ") : "";
    root.setAttribute("data-view", views[k].id);
  }
  function open(k) { stack.push(k); tip.hidden = true; show(k); }
  function close() { if (stack.length > 1) { stack.pop(); show(stack[stack.length - 1]); } }
  back.addEventListener("click", close);
  root.addEventListener("click", function (ev) {
    var node = nodeOf(ev.target), view = node && node.getAttribute("data-view");
    if (view !== null && view !== undefined && view !== "") {
      ev.preventDefault(); open(parseInt(view, 10));
    }
  });

  var anim = data.anim, frame = 0, timer = null, playBtn, slider, count;
  var props = [];
  function valueAt(changes, k) {
    var v = changes[0][1];
    for (var i = 1; i < changes.length && changes[i][0] <= k; i++) { v = changes[i][1]; }
    return v;
  }
  function apply(k) {
    frame = Math.max(0, Math.min(anim.frames - 1, k));
    props.forEach(function (p) {
      if (!p.el) { return; }
      var v = valueAt(p.changes, frame);
      if (p.attr === "#text") { p.el.textContent = v; } else { p.el.setAttribute(p.attr, v); }
    });
    slider.value = frame;
    count.textContent = "step " + frame + " / " + (anim.frames - 1);
    root.setAttribute("data-frame", frame);
    root.setAttribute("data-current", anim.current[frame] || "");
    reveal(anim.current[frame]);
    if (frame === anim.frames - 1) { stop(); }
  }
  function reveal(id) {  // scroll the view (not the page) to show the highlighted node
    var el = id && document.getElementById(id), view = el && el.closest(".fg-view");
    if (!el || !view || view.hidden) { return; }
    var b = el.getBoundingClientRect(), v = view.getBoundingClientRect();
    if (b.left < v.left || b.right > v.right) {
      view.scrollLeft += (b.left + b.right) / 2 - (v.left + v.right) / 2;
    }
    if (b.top < v.top || b.bottom > v.bottom) {
      view.scrollTop += (b.top + b.bottom) / 2 - (v.top + v.bottom) / 2;
    }
  }
  function stop() {
    if (timer) { clearInterval(timer); timer = null; }
    if (playBtn) { playBtn.textContent = "\u25b6 play"; }
  }
  function play() {
    if (timer) { stop(); return; }
    if (frame === anim.frames - 1) { apply(0); }
    playBtn.textContent = "\u275a\u275a pause";
    timer = setInterval(function () { apply(frame + 1); }, anim.interval);
  }
  function key(ev) {
    var k = ev.key;
    if (ev.target === slider && (k === "ArrowRight" || k === "ArrowLeft")) { return; }
    if (k === "ArrowRight") { stop(); apply(frame + 1); }
    else if (k === "ArrowLeft") { stop(); apply(frame - 1); }
    else if (k === "Home") { stop(); apply(0); }
    else if (k === "End") { stop(); apply(anim.frames - 1); }
    else if (k === " ") { play(); }
    else if (k === "Escape" || k === "Backspace") { close(); }
    else { return; }
    ev.preventDefault();
  }
  if (anim) {
    anim.props.forEach(function (p) {
      props.push({el: document.getElementById(p[0]), attr: p[1], changes: p[2]});
    });
    playBtn = root.querySelector('[data-act="play"]');
    slider = root.querySelector(".fg-slider");
    count = root.querySelector(".fg-count");
    root.querySelectorAll("[data-act]").forEach(function (b) {
      b.addEventListener("click", function () {
        var act = b.getAttribute("data-act");
        if (act === "play") { play(); return; }
        stop();
        if (act === "first") { apply(0); }
        else if (act === "prev") { apply(frame - 1); }
        else if (act === "next") { apply(frame + 1); }
        else if (act === "last") { apply(anim.frames - 1); }
      });
    });
    slider.addEventListener("input", function () { stop(); apply(parseInt(slider.value, 10)); });
    root.addEventListener("keydown", key);
    if (anim.page_keys) {
      document.addEventListener("keydown", function (ev) {
        if (!root.contains(ev.target)) { key(ev); }
      });
    }
    apply(0);
  } else {
    root.addEventListener("keydown", function (ev) {
      if (ev.key === "Escape" || ev.key === "Backspace") { close(); ev.preventDefault(); }
    });
  }
  root.addEventListener("mousedown", function () { root.focus({preventScroll: true}); });
  show(0);
})();
"""
