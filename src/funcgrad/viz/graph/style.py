"""How a drawing looks: its colours and font, and a node's fill by its gradient status."""

from __future__ import annotations

from funcgrad.viz.graph.fonts import FONT_FAMILY
from funcgrad.viz.graph.labels import FLOWS, UNKNOWN, ZERO

__all__ = [
    "CALL_COLOR",
    "CONTROL_COLOR",
    "DATA_COLOR",
    "DATA_FILL",
    "EDGE_COLOR",
    "FONT",
    "GRAD_COLOR",
    "GREY_TEXT",
    "NOFLOW_EDGE",
    "NOFLOW_FILL",
    "OUTPUT_COLOR",
    "OUTPUT_FILL",
    "PARAM_COLOR",
    "RULE_COLOR",
    "SCOPE_COLOR",
    "SHAPE_TEXT",
    "ZERO_FILL",
    "cluster_text_color",
    "status_style",
]

PARAM_COLOR = "#d62728"  # outline of parameters (differentiated inputs)
DATA_COLOR = "#1f77b4"  # outline of data inputs and other constants
DATA_FILL = "#e8f1fa"
GRAD_COLOR = "#c0392b"  # gradient text
OUTPUT_FILL = "#fff3cd"
OUTPUT_COLOR = "#b8860b"
ZERO_FILL = "#dedede"  # gradient exactly zero
NOFLOW_FILL = "#f5f5f5"  # no gradient flows
GREY_TEXT = "#808080"
SHAPE_TEXT = "#555555"
EDGE_COLOR = "#4d4d4d"
NOFLOW_EDGE = "#b3b3b3"
SCOPE_COLOR = "#b0b0b0"  # clusters of a Python function's equations
RULE_COLOR = "#e8a8a8"  # clusters of one VJP rule's equations
CALL_COLOR = "#7f7f7f"  # clusters of a call's body (jit, custom_jvp, checkpoint, ...)
CONTROL_COLOR = "#8c564b"  # clusters of scan, cond and while bodies
FONT = FONT_FAMILY  # installed with Graphviz's fonts; pages embed it (see .fonts)

_CLUSTER_TEXT = {SCOPE_COLOR: "#707070", RULE_COLOR: "#b05050"}


def cluster_text_color(color: str) -> str:
    """The colour of a cluster's title, given the colour of its outline."""
    return _CLUSTER_TEXT.get(color, color)


def status_style(status: str, grads: bool) -> dict[str, str]:
    """Node attributes for a gradient status: grey fill for exactly zero, dashed grey for none."""
    if not grads or status in (FLOWS, UNKNOWN):
        return {}
    if status == ZERO:
        return {"fillcolor": ZERO_FILL, "fontcolor": GREY_TEXT, "color": GREY_TEXT}
    return {
        "style": "rounded,filled,dashed",
        "fillcolor": NOFLOW_FILL,
        "fontcolor": GREY_TEXT,
        "color": GREY_TEXT,
    }
