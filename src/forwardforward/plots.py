"""Training curves: losses, goodness and errors per epoch, drawn with matplotlib (Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Draw ``metrics.csv`` rows as three panels (loss, goodness, error) into ``path``."""
    epochs = [r["epoch"] for r in rows]
    n_layers = sum(1 for k in rows[0] if k.startswith("loss_"))
    fig, (ax_loss, ax_g, ax_err) = plt.subplots(1, 3, figsize=(15, 4.2))

    for i in range(1, n_layers + 1):
        ax_loss.plot(epochs, [r[f"loss_{i}"] for r in rows], label=f"layer {i}")
        line = ax_g.plot(epochs, [r[f"g_pos_{i}"] for r in rows], label=f"layer {i} positive")
        ax_g.plot(epochs, [r[f"g_neg_{i}"] for r in rows], "--", color=line[0].get_color(),
                  label=f"layer {i} negative")
    ax_loss.set(title="FF loss per layer", xlabel="epoch", yscale="log")
    ax_g.set(title="mean goodness", xlabel="epoch", yscale="log")

    for key, name in (("train_error", "train (fixed subset)"), ("test_error", "test")):
        pts = [(r["epoch"], 100 * r[key]) for r in rows if r.get(key) not in (None, "")]
        if pts:
            ax_err.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax_err.set(title="error (%)", xlabel="epoch", yscale="log")

    for ax in (ax_loss, ax_g, ax_err):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no error curve before the first evaluation
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
