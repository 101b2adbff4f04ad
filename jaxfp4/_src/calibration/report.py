"""``CalibrationReport``: per-layer input statistics and the output error of each candidate format."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class CandidateResult:
  """One layer stored in one candidate format.

  Attributes:
    error: relative output error ``tr(dK^T H dK) / tr(K^T H K)``: the squared
      error of the layer's outputs on the calibration inputs over their squared
      norm (bias excluded; 0 is exact).
    bits: stored bits per weight (packed data, scales, kept columns).
    nbytes: stored bytes of the weight.
    clip: the clipping ratio per output row (``+clip`` candidates), else None.
  """

  error: float
  bits: float
  nbytes: int
  clip: tuple[float, ...] | None = None


@dataclasses.dataclass(frozen=True)
class LayerCalibration:
  """One ``nnx.Linear``: its calibration input statistics and candidate results."""

  path: str
  in_features: int
  out_features: int
  rows: int
  input_mean_abs: tuple[float, ...]
  input_max_abs: tuple[float, ...]
  input_rms: tuple[float, ...]
  output_energy: float  # tr(K^T H K) / rows: mean squared output norm per row
  results: dict[str, CandidateResult]

  @property
  def params(self) -> int:
    return self.in_features * self.out_features


@dataclasses.dataclass(frozen=True)
class CalibrationReport:
  """What :func:`jaxfp4.calibrate` measured, per linear layer.

  Attributes:
    layers: one :class:`LayerCalibration` per calibrated layer, in model order.
    candidates: the candidate keys (``"nf4@64"``, ``"nf4+dq@64"``, ``"nvfp4"``, ...).
    num_batches: calibration batches run.
    uncalibrated: linear layers the calibration batches never reached.
  """

  layers: tuple[LayerCalibration, ...]
  candidates: tuple[str, ...]
  num_batches: int
  uncalibrated: tuple[str, ...] = ()

  def layer(self, path: str) -> LayerCalibration:
    for l in self.layers:
      if l.path == path:
        return l
    raise KeyError(f"no calibrated layer {path!r}; the report has {[l.path for l in self.layers][:4]} ...")

  @property
  def params(self) -> int:
    return sum(l.params for l in self.layers)

  def mean_error(self, key: str) -> float:
    """Parameter-weighted mean relative output error of one candidate over all layers."""
    return sum(l.results[key].error * l.params for l in self.layers) / max(self.params, 1)

  def bits(self, key: str) -> float:
    """Average stored bits per weight of one candidate over all layers."""
    return 8.0 * sum(l.results[key].nbytes for l in self.layers) / max(self.params, 1)

  def __str__(self) -> str:
    keys = self.candidates
    w = max([len(l.path) for l in self.layers] + [5])
    cw = max([len(k) for k in keys] + [9])
    head = f"{'layer':<{w}}  {'params':>10}  " + "  ".join(f"{k:>{cw}}" for k in keys)
    rows = [f"relative output error (squared) per layer and format; {self.num_batches} batches, "
            f"{self.layers[0].rows if self.layers else 0:,} rows", head]
    for l in self.layers:
      rows.append(f"{l.path:<{w}}  {l.params:>10,}  " + "  ".join(f"{l.results[k].error:>{cw}.3e}" for k in keys))
    rows.append(f"{'mean (by params)':<{w}}  {self.params:>10,}  "
                + "  ".join(f"{self.mean_error(k):>{cw}.3e}" for k in keys))
    rows.append(f"{'bits/weight':<{w}}  {'':>10}  " + "  ".join(f"{self.bits(k):>{cw}.3f}" for k in keys))
    return "\n".join(rows)

  def to_dict(self) -> dict[str, Any]:
    return {"format": "jaxfp4.CalibrationReport", "version": FORMAT_VERSION, **dataclasses.asdict(self)}

  def save(self, path: str | Path) -> None:
    """Writes the report as JSON."""
    with open(path, "w") as f:
      json.dump(self.to_dict(), f)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "CalibrationReport":
    if d.get("format") != "jaxfp4.CalibrationReport" or d.get("version") != FORMAT_VERSION:
      raise ValueError(f"not a jaxfp4 calibration report (version {FORMAT_VERSION}): "
                       f"format={d.get('format')!r}, version={d.get('version')!r}.")
    layers = []
    for l in d["layers"]:
      results = {k: CandidateResult(r["error"], r["bits"], r["nbytes"],
                                    None if r["clip"] is None else tuple(r["clip"]))
                 for k, r in l["results"].items()}
      layers.append(LayerCalibration(
          l["path"], l["in_features"], l["out_features"], l["rows"], tuple(l["input_mean_abs"]),
          tuple(l["input_max_abs"]), tuple(l["input_rms"]), l["output_energy"], results))
    return cls(tuple(layers), tuple(d["candidates"]), d["num_batches"], tuple(d.get("uncalibrated", ())))

  @classmethod
  def load(cls, path: str | Path) -> "CalibrationReport":
    """Reads a report written by :meth:`save`."""
    try:
      with open(path) as f:
        d = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not JSON: {e}") from None
    if not isinstance(d, dict):
      raise ValueError(f"{path} is not a jaxfp4 calibration report.")
    return cls.from_dict(d)
