"""The four-panel quantization analysis figure (values, errors, histogram, correlation).

Drawn with ``matplotlib.figure.Figure`` and the Agg canvas directly: importing
pyplot or calling ``matplotlib.use`` would change the backend of a user who
has an interactive session open. matplotlib is imported on the first call, so
``import jaxfp4`` does not need it.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

import jax
import numpy as np

from jaxfp4._src import extras

FIGSIZE = (12.0, 9.0)
DPI = 120  # 1440 x 1080 pixels

# One fixed colour and marker per format, so fp4 looks the same in every figure.
_STYLE = {
    "fp4": ("tab:red", "s"),
    "nf4": ("tab:blue", "^"),
    "e2m1": ("tab:green", "D"),
    "mxfp4": ("tab:purple", "v"),
    "nvfp4": ("tab:orange", "P"),
}
_EXTRA_COLOURS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")

# Up to this many points, lines and larger markers are readable; above it only
# small markers are.
_SMALL = 200


def _flat64(a: Any) -> np.ndarray:
  return np.asarray(jax.device_get(a)).reshape(-1).astype(np.float64)


def _style(name: str, i: int) -> tuple[str, str]:
  return _STYLE.get(name, (_EXTRA_COLOURS[i % len(_EXTRA_COLOURS)], "o"))


def plot_analysis(
    x: Any,
    results: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    max_points: int = 2000,
    seed: int = 0,
) -> pathlib.Path:
  """Writes the 2x2 analysis figure of ``x`` and its dequantized versions as PNG.

  Panels: original and dequantized values by weight index (the dequantized
  values sit on a few horizontal bands), absolute error by index, histograms
  of the original and dequantized values, and dequantized against original
  with the ``y = x`` diagonal (a staircase). Each format gets one colour.

  Args:
    x: the original array, any shape.
    results: ``{quant_type: dequantized values}``, each with ``x``'s number of
      elements (e.g. from :func:`quantize_roundtrip`).
    path: where to write the PNG (parent folders must exist).
    title: figure title; None for one naming the size. A line saying how many
      elements were sampled is added below it when there were too many.
    max_points: above this many elements, the index and scatter panels show
      this many randomly chosen elements (the same ones for every format);
      the histograms always use every element.
    seed: seed of that choice.

  Returns:
    ``path`` as a :class:`pathlib.Path`. The image is 1440 x 1080 pixels.

  Raises:
    ValueError: if ``x`` is empty, a result has a different size, or
      ``max_points < 1``.

  Example:
    >>> import numpy as np, tempfile, os
    >>> from jaxfp4.analysis import plot_analysis, quantize_roundtrip
    >>> x = np.random.default_rng(0).normal(0, 0.5, 50).astype(np.float32)
    >>> out = os.path.join(tempfile.mkdtemp(), "fp4.png")
    >>> plot_analysis(x, {"fp4": quantize_roundtrip(x)[0]}, out).suffix
    '.png'
  """
  extras.require("matplotlib", feature="plot_analysis")
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  xo = _flat64(x)
  n = xo.size
  if n == 0:
    raise ValueError("`x` is empty; there is nothing to plot.")
  if isinstance(max_points, bool) or int(max_points) < 1:
    raise ValueError(f"`max_points` must be a positive int, got {max_points!r}.")
  deq = {}
  for name, values in results.items():
    d = _flat64(values)
    if d.size != n:
      raise ValueError(f"`results[{name!r}]` has {d.size} elements, `x` has {n}.")
    deq[name] = d

  if n > max_points:
    idx = np.sort(np.random.default_rng(seed).choice(n, int(max_points), replace=False))
  else:
    idx = np.arange(n)
  small = idx.size <= _SMALL
  ms = 4.0 if small else 1.5

  fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  (ax_val, ax_err), (ax_hist, ax_corr) = fig.subplots(2, 2)
  if title is None:
    title = f"4-bit quantization analysis: {n:,} weights"
  if idx.size < n:
    title += f"\n({idx.size:,} of {n:,} elements sampled in the index and correlation panels)"
  fig.suptitle(title)

  ax_val.plot(idx, xo[idx], "o-" if small else ".", color="black", ms=ms,
              lw=0.8, alpha=0.8 if small else 0.4, label="original")
  for i, (name, d) in enumerate(deq.items()):
    colour, marker = _style(name, i)
    # Markers without lines leave the quantization levels as horizontal bands.
    ax_val.plot(idx, d[idx], marker, ls="none", color=colour, ms=ms,
                alpha=0.8 if small else 0.5, label=f"{name} dequantized")
    err = np.abs(d[idx] - xo[idx])
    ax_err.plot(idx, err, marker, ls="-" if small else "none", lw=0.7, color=colour,
                ms=ms, alpha=0.8 if small else 0.5, label=name)
    ax_corr.plot(xo[idx], d[idx], marker, ls="none", color=colour, ms=ms,
                 alpha=0.7 if small else 0.4, label=name)
  ax_val.set(title="Original vs Dequantized Values", xlabel="weight index", ylabel="value")
  ax_err.set(title="Absolute Errors", xlabel="weight index", ylabel="|dequantized - original|")

  everything = np.concatenate([xo, *deq.values()])
  lo, hi = float(everything.min()), float(everything.max())
  if lo == hi:  # a constant tensor still needs a non-empty bin range
    lo, hi = lo - 0.5, hi + 0.5
  edges = np.linspace(lo, hi, min(60, max(10, n // 3)) + 1)
  ax_hist.stairs(np.histogram(xo, edges)[0], edges, fill=True, color="0.6", alpha=0.6,
                 label="original")
  for i, (name, d) in enumerate(deq.items()):
    ax_hist.stairs(np.histogram(d, edges)[0], edges, color=_style(name, i)[0], lw=1.4,
                   label=f"{name} dequantized")
  ax_hist.set(title="Value Distribution", xlabel="value", ylabel="count")

  ax_corr.plot([lo, hi], [lo, hi], "--", color="black", lw=1.0, label="y = x")
  ax_corr.set(title="Correlation", xlabel="original", ylabel="dequantized")
  ax_corr.set_aspect("equal", adjustable="datalim")

  for ax in (ax_val, ax_err, ax_hist, ax_corr):
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best", markerscale=1.0 if small else 3.0)
  out = pathlib.Path(path)
  fig.savefig(out, format="png", dpi=DPI)
  return out
