"""What fit calls after every epoch, and the callback that prints one line per epoch."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

Callback = Callable[[dict[str, Any]], Any]
"""``callback(state)`` after every epoch; returning True stops training (see ``fit``)."""


def print_epochs(file: Any = None) -> Callback:
    """Return a callback printing one line per epoch: ``epoch 3/5  loss 0.3121  ...  1.92s``."""

    def callback(state: dict[str, Any]) -> None:
        history = state["history"]
        parts = [f"epoch {state['epoch'] + 1}/{state['epochs']}"]
        for name, values in history.items():
            if name in ("epoch_time", "wall_time") or not values:
                continue
            parts.append(f"{name} {values[-1]:.4f}")
        parts.append(f"{history['epoch_time'][-1]:.2f}s")
        print("  ".join(parts), file=sys.stdout if file is None else file, flush=True)

    return callback
