"""``jaxfp4.calibrate``: score every candidate format of every linear layer on calibration data."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxfp4._src import formats as fmts
from jaxfp4._src.calibration import candidates as cands
from jaxfp4._src.calibration.report import CalibrationReport, CandidateResult, LayerCalibration
from jaxfp4._src.calibration.stats import LayerStats, output_energy
from jaxfp4._src.flax.quantize_model import SkipFn, _matcher, linear_layers, record_linear_inputs
from jaxfp4._src.progress import bar as progress_bar


def _default_forward(model: nnx.Module, batch: Any) -> Any:
  return model(**batch) if isinstance(batch, dict) else model(batch)


def candidate_list(formats: Sequence[str], blocksizes: Sequence[int]) -> list[cands.Candidate]:
  """Every ``formats`` spec at every block size (native-block formats once)."""
  if isinstance(formats, str) or not formats:
    raise ValueError(f"`formats` must be a non-empty sequence of candidate specs, got {formats!r}.")
  if isinstance(blocksizes, int) or not blocksizes or not all(isinstance(b, int) for b in blocksizes):
    raise ValueError(f"`blocksizes` must be a non-empty sequence of ints, got {blocksizes!r}.")
  out: dict[str, cands.Candidate] = {}
  for spec in formats:
    for bs in blocksizes:
      c = cands.parse(spec, bs)
      if c.quantized and c.base not in cands.NATIVE_BLOCKSIZE:
        fmts.resolve_blocksize(fmts.get_format(c.base), c.blocksize)  # ValueError naming the allowed sizes
      out.setdefault(c.key, c)
  return list(out.values())


def calibrate(
    model: nnx.Module,
    batches: Iterable[Any],
    *,
    forward: Callable[[nnx.Module, Any], Any] | None = None,
    formats: Sequence[str] = cands.DEFAULT_CANDIDATES,
    blocksizes: Sequence[int] = (64,),
    skip: str | Sequence[str] | SkipFn | None = None,
    progress: bool = False,
) -> CalibrationReport:
  """Runs ``model`` on calibration batches and scores each candidate format of each linear layer.

  Every ``nnx.Linear`` gets its inputs' Gram matrix ``H = sum x^T x`` and
  per-channel statistics accumulated batch by batch; then each candidate's
  relative output error ``tr(dK^T H dK) / tr(K^T H K)`` is exact for the
  calibration inputs (see ``stats.py``). Memory: one batch's layer inputs
  while it runs plus ``in^2 + 3 in`` float32 per layer, whatever the number of
  batches; ``skip`` layers cost nothing.

  The model runs eagerly (its linear layers are swapped for recording
  stand-ins during each batch). Every input row counts: pass batches without
  padding, or a ``forward`` that runs only real tokens.

  Args:
    model: any NNX module (not modified).
    batches: an iterable of model inputs (a generator is read once).
    forward: ``forward(model, batch)``; default ``model(**batch)`` for a dict,
      else ``model(batch)``.
    formats: candidate specs (see ``candidates.py``): ``nf4``, ``fp4``,
      ``e2m1``, ``mxfp4``, ``nvfp4``, ``bf16``, ``fp32`` with modifiers
      ``+dq``, ``+outliers``, ``+clip``.
    blocksizes: block sizes tried for the nf4/fp4/e2m1 candidates.
    skip: layers not to calibrate (as for ``quantize_model``).
    progress: show progress bars.

  Returns:
    A :class:`CalibrationReport`.

  Example:
    >>> import jax, jaxfp4
    >>> from flax import nnx
    >>> model = nnx.Sequential(nnx.Linear(64, 128, rngs=nnx.Rngs(0)), nnx.Linear(128, 8, rngs=nnx.Rngs(1)))
    >>> batches = [jax.random.normal(jax.random.key(i), (16, 64)) for i in range(4)]
    >>> report = jaxfp4.calibrate(model, batches, formats=("nf4", "nf4+clip", "bf16"), progress=False)
    >>> report.candidates
    ('nf4@64', 'nf4+clip@64', 'bf16')
  """
  if not isinstance(model, nnx.Module):
    raise ValueError(f"`model` must be an nnx.Module, got {type(model).__name__}.")
  if forward is None:
    forward = _default_forward
  elif not callable(forward):
    raise ValueError(f"`forward` must be a callable (model, batch) -> output, got {type(forward).__name__}.")
  candidate_objs = candidate_list(formats, blocksizes)
  match = _matcher(skip)
  layers = linear_layers(model)
  stats: dict[str, LayerStats] = {}
  num_batches = 0
  for batch in progress_bar(batches, enabled=progress, desc="calibration batches", unit="batch"):
    with record_linear_inputs(model) as inputs:
      forward(model, batch)
    for path, xs in inputs.items():
      layer = layers.get(path)
      if layer is None or match(path, layer):
        continue
      acc = stats.setdefault(path, LayerStats(layer.in_features))
      for x in xs:
        acc.update(x)
    num_batches += 1
  if num_batches == 0:
    raise ValueError("`batches` is empty: calibration needs at least one batch of model inputs.")
  calibrated = [p for p in layers if p in stats and stats[p].rows > 0]
  if not calibrated:
    raise ValueError("the calibration batches reached no nnx.Linear layer (all skipped, or no input rows).")
  uncalibrated = tuple(p for p in layers if p not in stats and not match(p, layers[p]))

  out = []
  total = len(calibrated) * len(candidate_objs)
  with progress_bar(total=total, enabled=progress, desc="scoring formats", unit="format") as bar:
    for path in calibrated:
      s, layer = stats[path], layers[path]
      kernel = jnp.asarray(layer.kernel.get_value())
      energy = float(output_energy(kernel, s.gram))
      rms = np.asarray(s.rms)
      results = {}
      for c in candidate_objs:
        stored = cands.store(c, kernel, input_rms=rms, gram=s.gram)
        err = float(output_energy(stored.kernel_hat - kernel.astype(jnp.float32), s.gram))
        results[c.key] = CandidateResult(
            error=err / energy if energy > 0 else float(err > 0) * float("inf"),
            bits=8.0 * stored.nbytes / kernel.size, nbytes=stored.nbytes,
            clip=None if stored.clip is None else tuple(float(a) for a in stored.clip))
        bar.update()
      out.append(LayerCalibration(
          path, layer.in_features, layer.out_features, s.rows,
          tuple(np.asarray(s.mean_abs, np.float64).tolist()), tuple(np.asarray(s.max_abs, np.float64).tolist()),
          tuple(rms.astype(np.float64).tolist()), energy / s.rows, results))
  return CalibrationReport(tuple(out), tuple(c.key for c in candidate_objs), num_batches, uncalibrated)
