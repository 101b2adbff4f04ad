"""``plan_precision``: one format per layer, the least summed sensitivity under a bit budget.

This is a multiple-choice knapsack: layer ``l`` takes exactly one candidate
``c``, costing ``bits[l, c] * params[l]`` bits and adding ``sensitivity[l, c]``;
the total cost must stay within ``bits_per_weight * sum(params)``. It is solved
by dynamic programming over the budget above the all-smallest plan, divided
into ``resolution`` units (exact when the costs are multiples of a unit; a plan
never exceeds the budget, see :func:`solve_knapsack`).

Sensitivity of a layer in a format is its relative output error on the
calibration data (``CalibrationReport``) times the layer's share of the
parameters: relative errors are comparable between layers whose outputs differ
in scale, and weighting by size makes the trade an error-per-bit one (a
1%-error on a layer of 4x the parameters counts 4x, as its bits do).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxfp4._src.calibration.report import CalibrationReport

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PlanEntry:
  """The format chosen for one layer.

  Attributes:
    path: the layer's path (as ``quantize_model`` reports it).
    candidate: the chosen candidate key (``"nf4+dq@64"``, ``"bf16"``, ...).
    params: weights of the layer.
    bits: stored bits per weight of the choice.
    sensitivity: the choice's sensitivity (relative error x parameter share).
    clip: per-row clipping ratios for ``+clip`` candidates.
    input_rms: per-input-channel rms for ``+outliers`` candidates (ranks the kept columns).
  """

  path: str
  candidate: str
  params: int
  bits: float
  sensitivity: float
  clip: tuple[float, ...] | None = None
  input_rms: tuple[float, ...] | None = None


@dataclasses.dataclass(frozen=True)
class PrecisionPlan:
  """A format per linear layer; apply with ``quantize_model(model, plan=plan)``.

  Attributes:
    entries: one :class:`PlanEntry` per layer.
    budget_bits: the requested average bits per weight.
    sensitivities: ``{path: {candidate: sensitivity}}`` of every candidate considered.
  """

  entries: tuple[PlanEntry, ...]
  budget_bits: float
  sensitivities: dict[str, dict[str, float]]

  @property
  def params(self) -> int:
    return sum(e.params for e in self.entries)

  @property
  def bits_per_weight(self) -> float:
    """The plan's average stored bits per weight."""
    return sum(e.bits * e.params for e in self.entries) / max(self.params, 1)

  @property
  def sensitivity(self) -> float:
    return sum(e.sensitivity for e in self.entries)

  def entry(self, path: str) -> PlanEntry:
    for e in self.entries:
      if e.path == path:
        return e
    raise KeyError(path)

  def __str__(self) -> str:
    return self.table()

  def table(self, width: int | None = None) -> str:
    """The plan as text: one row per layer with its format and the sensitivities.

    Args:
      width: characters per line (default: the terminal's, 80 when not a
        terminal). Sensitivity columns that do not fit are left out, the
        chosen formats' first; the last line says how many (``to_dict`` has them all).
    """
    if width is None:
      width = shutil.get_terminal_size().columns
    keys = list(next(iter(self.sensitivities.values()))) if self.sensitivities else []
    w = max([len(e.path) for e in self.entries] + [5])
    cw = max([len(k) for k in keys] + [len(e.candidate) for e in self.entries] + [6])
    chosen = {e.candidate for e in self.entries}
    room = max(0, (width - (w + 2 + 10 + 2 + cw + 2 + 6 + 2)) // (cw + 3))
    order = [k for k in keys if k in chosen] + [k for k in keys if k not in chosen]
    visible = set(order[:max(room, sum(k in chosen for k in keys))])  # the chosen always
    hidden = len(order) - len(visible)
    keys = [k for k in keys if k in visible]
    rows = [f"{'layer':<{w}}  {'params':>10}  {'chosen':<{cw}}  {'bits':>6}  "
            + "  ".join(f"{k:>{cw}}" for k in keys)]
    for e in self.entries:
      s = self.sensitivities.get(e.path, {})
      rows.append(f"{e.path:<{w}}  {e.params:>10,}  {e.candidate:<{cw}}  {e.bits:>6.3f}  "
                  + "  ".join(f"{s[k]:>{cw}.3e}" + ("*" if k == e.candidate else " ") for k in keys))
    counts: dict[str, int] = {}
    for e in self.entries:
      counts[e.candidate] = counts.get(e.candidate, 0) + 1
    rows.append(f"{len(self.entries)} layers, {self.params:,} weights: {self.bits_per_weight:.3f} bits/weight "
                f"(budget {self.budget_bits:g})")
    rows.append(f"summed sensitivity {self.sensitivity:.4e}; "
                + ", ".join(f"{k} x{v}" for k, v in counts.items()) + "  (* = chosen)")
    if hidden:
      rows.append(f"{hidden} more candidates' sensitivities do not fit {width} columns "
                  "(the plan's JSON has them)")
    return "\n".join(rows)

  def to_dict(self) -> dict[str, Any]:
    return {"format": "jaxfp4.PrecisionPlan", "version": FORMAT_VERSION, **dataclasses.asdict(self)}

  def save(self, path: str | Path) -> None:
    """Writes the plan as JSON to a new file (FileExistsError if ``path`` exists)."""
    from jaxfp4._src.io.files import write_text_atomic
    write_text_atomic(path, json.dumps(self.to_dict()))

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "PrecisionPlan":
    if d.get("format") != "jaxfp4.PrecisionPlan" or d.get("version") != FORMAT_VERSION:
      raise ValueError(f"not a jaxfp4 precision plan (version {FORMAT_VERSION}): "
                       f"format={d.get('format')!r}, version={d.get('version')!r}.")
    entries = tuple(PlanEntry(e["path"], e["candidate"], e["params"], e["bits"], e["sensitivity"],
                              None if e["clip"] is None else tuple(e["clip"]),
                              None if e["input_rms"] is None else tuple(e["input_rms"]))
                    for e in d["entries"])
    return cls(entries, d["budget_bits"], {k: dict(v) for k, v in d["sensitivities"].items()})

  @classmethod
  def load(cls, path: str | Path) -> "PrecisionPlan":
    """Reads a plan written by :meth:`save`."""
    with open(path) as f:
      return cls.from_dict(json.load(f))


def solve_knapsack(cost: np.ndarray, value: np.ndarray, budget: float, *, resolution: int = 4096) -> np.ndarray:
  """Multiple-choice knapsack: one column per row, least summed ``value`` with summed ``cost <= budget``.

  Each row's cheapest cost is paid up front; the DP runs over what is left of
  the budget in ``resolution`` units. Costs are first rounded to the nearest
  unit (exact when they are multiples of it); if that plan's real cost exceeds
  the budget, costs are rounded up instead, which can never exceed it.

  Args:
    cost, value: ``[rows, columns]``; an ``inf`` value marks an unavailable choice.
    budget: the largest summed cost.
    resolution: budget units of the DP.

  Returns:
    int ``[rows]``, the chosen column per row.
  """
  cost = np.asarray(cost, np.float64)
  value = np.asarray(value, np.float64)
  n, m = cost.shape
  cost = np.where(np.isfinite(value), cost, np.inf)
  base = cost.min(axis=1)
  extra, room = cost - base[:, None], budget - base.sum()
  if not np.all(np.isfinite(base)) or room < -1e-9 * max(abs(budget), 1.0):
    raise ValueError("no assignment fits the budget.")
  if room <= 0:  # only each row's cheapest columns fit
    return np.argmin(np.where(extra == 0, value, np.inf), axis=1)
  unit = room / resolution
  limit = budget * (1 + 1e-12)
  for rounding in (np.rint, np.ceil):
    icost = np.where(np.isfinite(extra), rounding(extra / unit), resolution + 1).astype(np.int64)
    out = _dp(icost, value, resolution)
    if out is not None and cost[np.arange(n), out].sum() <= limit:
      return _improve(out, cost, value, limit)
  raise ValueError("no assignment fits the budget.")


def _improve(out: np.ndarray, cost: np.ndarray, value: np.ndarray, limit: float) -> np.ndarray:
  """Single-row swaps that lower the value and fit the real (unrounded) budget, best first.

  Rounding costs to units can leave a sliver of budget unused (an all-``c``
  plan whose cost equals the budget exactly may round one unit over); this
  takes it back.
  """
  out = out.copy()
  rows = np.arange(len(out))
  while True:
    slack = limit - cost[rows, out].sum()
    gain = value[rows, out][:, None] - value  # > 0: better
    fits = cost - cost[rows, out][:, None] <= slack
    gain = np.where(fits & np.isfinite(value), gain, 0.0)
    i, j = np.unravel_index(np.argmax(gain), gain.shape)
    if gain[i, j] <= 0:
      return out
    out[i] = j


def _dp(icost: np.ndarray, value: np.ndarray, resolution: int) -> np.ndarray | None:
  n, m = icost.shape
  best = np.zeros(resolution + 1)  # best[b]: least value of the rows so far within b units
  choice = np.zeros((n, resolution + 1), np.int64)
  for i in range(n):
    new = np.full(resolution + 1, np.inf)
    for j in range(m):
      c = icost[i, j]
      if c > resolution or not np.isfinite(value[i, j]):
        continue
      cand = np.full(resolution + 1, np.inf)
      cand[c:] = best[: resolution + 1 - c] + value[i, j]
      better = cand < new
      new[better] = cand[better]
      choice[i, better] = j
    best = new
  if not np.isfinite(best[resolution]):
    return None
  out = np.zeros(n, np.int64)
  b = resolution
  for i in range(n - 1, -1, -1):
    out[i] = choice[i, b]
    b -= icost[i, out[i]]
  return out


def plan_precision(
    report: CalibrationReport,
    *,
    bits_per_weight: float,
    candidates: Sequence[str] | None = None,
    keep: Mapping[str, str] | None = None,
    resolution: int = 4096,
) -> PrecisionPlan:
  """Chooses one candidate per layer to minimize summed sensitivity within a size budget.

  Args:
    report: a :class:`CalibrationReport` from :func:`jaxfp4.calibrate`.
    bits_per_weight: the budget: average stored bits per weight over the
      report's layers (e.g. 4.3).
    candidates: the report's candidate keys to choose from (default all).
    keep: ``{path: candidate}`` fixed choices (e.g. ``{"lm_head": "bf16"}``).
    resolution: budget units of the exact dynamic programme.

  Returns:
    A :class:`PrecisionPlan`.

  Example:
    >>> import jax, jaxfp4, jaxfp4.nnx
    >>> from flax import nnx
    >>> model = nnx.Sequential(nnx.Linear(64, 128, rngs=nnx.Rngs(0)), nnx.Linear(128, 8, rngs=nnx.Rngs(1)))
    >>> batches = [jax.random.normal(jax.random.key(i), (16, 64)) for i in range(2)]
    >>> report = jaxfp4.calibrate(model, batches, formats=("nf4", "nf4+dq", "bf16"), progress=False)
    >>> plan = jaxfp4.plan_precision(report, bits_per_weight=4.5)
    >>> plan.bits_per_weight <= 4.5
    True
    >>> _ = jaxfp4.nnx.quantize_model(model, plan=plan)
  """
  if not isinstance(report, CalibrationReport):
    raise ValueError(f"`report` must be a CalibrationReport, got {type(report).__name__}.")
  if not report.layers:
    raise ValueError("`report` has no calibrated layers.")
  keys = list(report.candidates if candidates is None else candidates)
  unknown = [k for k in keys if k not in report.candidates]
  if not keys or unknown:
    raise ValueError(f"`candidates` must be a non-empty subset of the report's {report.candidates}, "
                     f"got unknown {unknown}.")
  keep = dict(keep or {})
  paths = [l.path for l in report.layers]
  bad = {p: k for p, k in keep.items() if p not in paths or k not in report.candidates}
  if bad:
    raise ValueError(f"`keep` must map the report's layers to its candidates {report.candidates}; "
                     f"not found: {bad}.")
  if isinstance(bits_per_weight, bool) or not isinstance(bits_per_weight, (int, float)) or not bits_per_weight > 0:
    raise ValueError(f"`bits_per_weight` must be a positive number, got {bits_per_weight!r}.")
  if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 16:
    raise ValueError(f"`resolution` must be an int >= 16, got {resolution!r}.")

  total = report.params
  cost = np.empty((len(paths), len(keys)))
  sens = np.empty((len(paths), len(keys)))
  for i, l in enumerate(report.layers):
    for j, k in enumerate(keys):
      r = l.results[k]
      cost[i, j] = r.nbytes * 8.0
      sens[i, j] = r.error * l.params / total
      if l.path in keep and keep[l.path] != k:
        sens[i, j] = np.inf
    if l.path in keep and keep[l.path] not in keys:
      cost[i], sens[i] = np.inf, np.inf  # filled below from the kept candidate
  budget = bits_per_weight * total
  kept_extra = [(i, keep[l.path]) for i, l in enumerate(report.layers) if l.path in keep and keep[l.path] not in keys]
  for i, k in kept_extra:  # a fixed choice outside `candidates`: its bits come off the budget
    budget -= report.layers[i].results[k].nbytes * 8.0
  free = [i for i in range(len(paths)) if not any(i == j for j, _ in kept_extra)]
  smallest = (sum(np.min(np.where(np.isfinite(sens[i]), cost[i], np.inf)) for i in free)
              + sum(report.layers[i].results[k].nbytes * 8.0 for i, k in kept_extra)) / total
  if bits_per_weight < smallest - 1e-9:
    raise ValueError(f"`bits_per_weight`={bits_per_weight:g} is below the smallest plan these candidates allow: "
                     f"{smallest:.4f} bits per weight (every layer in its smallest format).")
  chosen = np.zeros(len(paths), np.int64)
  if free:
    chosen[free] = solve_knapsack(cost[free], sens[free], max(budget, 0.0), resolution=resolution)
  entries = []
  for i, l in enumerate(report.layers):
    k = dict(kept_extra).get(i, keys[chosen[i]])
    r = l.results[k]
    entries.append(PlanEntry(
        l.path, k, l.params, r.bits, r.error * l.params / total, r.clip,
        l.input_rms if "+outliers" in k else None))
  sensitivities = {l.path: {k: l.results[k].error * l.params / total for k in keys} for l in report.layers}
  return PrecisionPlan(tuple(entries), float(bits_per_weight), sensitivities)
