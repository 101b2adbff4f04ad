"""The plan figure: each layer's sensitivity in every candidate format, the chosen one marked.

Drawn with ``matplotlib.figure.Figure`` and the Agg canvas (no pyplot, so a
user's interactive backend is left alone), like ``jaxfp4.analysis``'s figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxfp4._src import extras
from jaxfp4._src.calibration.plan import PrecisionPlan


def plot_plan(plan: PrecisionPlan, path: str | Path, *, title: str | None = None, dpi: int = 100) -> None:
  """Writes a PNG: sensitivity per layer (log scale) for each candidate, the chosen format circled."""
  extras.require("matplotlib", feature="plot_plan")
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  paths = [e.path for e in plan.entries]
  keys = list(plan.sensitivities[paths[0]])
  fig = Figure(figsize=(max(6.0, 0.28 * len(paths) + 3.0), 5.6), dpi=dpi)
  import matplotlib
  cmap = matplotlib.colormaps["tab20"]
  color = lambda k: cmap(k % 20)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  x = np.arange(len(paths))
  floor = min((v for s in plan.sensitivities.values() for v in s.values() if v > 0), default=1e-12)
  for k, key in enumerate(keys):
    y = [max(plan.sensitivities[p][key], floor) for p in paths]
    ax.plot(x, y, marker="os^vD"[k % 5], ms=3, lw=0.8, color=color(k), label=key)
  for i, e in enumerate(plan.entries):
    k = keys.index(e.candidate) if e.candidate in keys else 0
    ax.plot([i], [max(e.sensitivity, floor)], marker="o", ms=9, mfc="none", mec=color(k), mew=1.6)
  ax.set_yscale("log")
  ax.set_xticks(x)
  ax.set_xticklabels(paths, rotation=90, fontsize=6)
  ax.set_ylabel("sensitivity\n(rel. output error x param. share)", fontsize=8)
  ax.set_title(title or f"precision plan: {plan.bits_per_weight:.3f} bits/weight (budget {plan.budget_bits:g}); "
               "circles = chosen", fontsize=9)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path)
