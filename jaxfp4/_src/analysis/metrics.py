"""Quantization error metrics: quantize, dequantize and compare with the input.

Everything is measured on the host in float64 against the input's own values
(a bfloat16 input is compared as bfloat16 values widened exactly to float64),
so the numbers describe the 4-bit format and not a second rounding.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfp4._src import formats
from jaxfp4._src.quantize import dequantize_4bit, quantize_4bit
from jaxfp4._src.state import QuantState

# Metrics are accumulated over slices of this many elements so that a large
# tensor needs a few float64 temporaries of this size, not of the whole tensor.
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class ErrorReport:
  """Error and size of one tensor quantized with one format.

  Attributes:
    quant_type: the format (``"nf4"``, ``"fp4"``, ...).
    blocksize: the block size used (the format default resolved).
    compress_statistics: whether the absmax was double-quantized.
    numel: number of elements.
    dtype: name of the input dtype (``"float32"``, ``"bfloat16"``, ...).
    min, max, mean, std: of the original values (``std`` is the population
      standard deviation, ``ddof=0``, as ``np.std``).
    mae: mean of ``|deq - x|``.
    rmse: square root of the mean of ``(deq - x) ** 2``.
    max_abs_error: max of ``|deq - x|``.
    mean_rel_error: mean of ``|deq - x| / |x|`` over the elements whose
      original ``x`` is not zero (zero elements have no relative error); NaN
      if every element is zero. Small weights that round to 0 count as 1.0,
      so this mean is dominated by the values near zero.
    max_rel_error: max of the same ratio (NaN if every element is zero).
    sqnr_db: signal to quantization noise ratio,
      ``10 * log10(sum(x ** 2) / sum((deq - x) ** 2))``; ``inf`` when the
      reconstruction is exact.
    bytes_before: ``numel * itemsize`` of the input dtype.
    packed_bytes: bytes of the packed 4-bit weights.
    state_bytes: bytes of the quantization state's arrays (absmax, nested
      absmax, offset, global scale).
    bytes_after: ``packed_bytes + state_bytes``.
    compression_ratio: ``bytes_before / bytes_after``.
    bits_per_weight: ``8 * bytes_after / numel``.
    distinct_levels: number of distinct dequantized values.
  """

  quant_type: str
  blocksize: int
  compress_statistics: bool
  numel: int
  dtype: str
  min: float
  max: float
  mean: float
  std: float
  mae: float
  rmse: float
  max_abs_error: float
  mean_rel_error: float
  max_rel_error: float
  sqnr_db: float
  bytes_before: int
  packed_bytes: int
  state_bytes: int
  bytes_after: int
  compression_ratio: float
  bits_per_weight: float
  distinct_levels: int

  def as_dict(self) -> dict[str, Any]:
    """The fields as a plain dict (Python ints, floats, strs and bools)."""
    return dataclasses.asdict(self)


def _host(x: Any) -> np.ndarray:
  """``x`` as a host NumPy array of its own dtype (lists become float32)."""
  if isinstance(x, (list, tuple, int, float)):
    # A Python literal would otherwise become float64, which quantize rejects.
    x = np.asarray(x, np.float32)
  return np.asarray(jax.device_get(x))


def _check_nonempty(x: np.ndarray) -> None:
  if x.size == 0:
    raise ValueError(f"`x` is empty (shape {x.shape}); there is nothing to quantize "
                     "or measure.")


# jit compiles one program per shape instead of one per eager op, which makes
# a small tensor several times faster on a CPU; jitted and eager calls give the
# same bits (tests/test_quantize.py::test_jit_equals_eager).
@functools.lru_cache(maxsize=None)
def _jitted_quantize(quant_type: str, blocksize: int | None, compress_statistics: bool):
  return jax.jit(functools.partial(quantize_4bit, quant_type=quant_type,
                                   blocksize=blocksize,
                                   compress_statistics=compress_statistics))


_jitted_dequantize = jax.jit(dequantize_4bit)


def quantize_roundtrip(
    x: Any,
    *,
    quant_type: str = "fp4",
    blocksize: int | None = None,
    compress_statistics: bool = False,
) -> tuple[np.ndarray, jax.Array, QuantState]:
  """Quantizes ``x``, dequantizes it and returns both sides of the round trip.

  Args:
    x: float32, bfloat16 or float16 array (NumPy or JAX) of any shape.
    quant_type: one of ``jaxfp4.QUANT_TYPES``.
    blocksize: elements per block; None for the format default.
    compress_statistics: double-quantize the absmax (nf4, fp4, e2m1 only).

  Returns:
    ``(dequantized, packed, state)``: the dequantized values as a float64
    NumPy array of ``x``'s shape, and what :func:`jaxfp4.quantize_4bit`
    returned.

  Example:
    >>> import numpy as np
    >>> from jaxfp4.analysis import quantize_roundtrip
    >>> deq, packed, state = quantize_roundtrip(
    ...     np.array([0.5, -1.0, 0.25, 1.0], np.float32), quant_type="fp4")
    >>> deq.tolist(), packed.nbytes, state.nbytes()
    ([0.5, -1.0, 0.25, 1.0], 2, 4)
  """
  host = _host(x)
  _check_nonempty(host)
  # Bad arguments raise quantize_4bit's ValueError while jit traces.
  packed, state = _jitted_quantize(quant_type, blocksize, bool(compress_statistics))(
      jnp.asarray(host))
  deq = np.asarray(jax.device_get(_jitted_dequantize(packed, state)), dtype=np.float64)
  return deq, packed, state


def report_from_roundtrip(
    x: Any, dequantized: Any, packed: jax.Array, state: QuantState,
) -> ErrorReport:
  """Builds the :class:`ErrorReport` of a round trip that was already run.

  Args:
    x: the original array (float32, bfloat16 or float16).
    dequantized: its dequantized values, any float dtype, same number of
      elements as ``x``.
    packed: the packed weights that ``state`` describes.
    state: the :class:`jaxfp4.QuantState`.

  Returns:
    The :class:`ErrorReport`.

  Raises:
    ValueError: if ``x`` is empty, has NaN/Inf values, or does not match
      ``dequantized`` / ``state`` in size.

  Example:
    >>> import numpy as np
    >>> from jaxfp4.analysis import quantize_roundtrip, report_from_roundtrip
    >>> x = np.array([0.5, -1.0, 0.25, 1.0], np.float32)
    >>> report_from_roundtrip(x, *quantize_roundtrip(x, quant_type="fp4")).mae
    0.0
  """
  xh = _host(x)
  _check_nonempty(xh)
  if xh.dtype.name not in formats.INPUT_DTYPES:
    raise ValueError(f"`x` must have a dtype in {formats.INPUT_DTYPES}, got {xh.dtype.name}.")
  yh = np.asarray(jax.device_get(dequantized))
  n = xh.size
  if yh.size != n or state.numel != n:
    raise ValueError(f"`x` has {n} elements but `dequantized` has {yh.size} and the "
                     f"state describes {state.numel}.")
  xf, yf = xh.reshape(-1), yh.reshape(-1)

  total = sq_x = abs_err = sq_err = rel_sum = 0.0
  max_abs = max_rel = 0.0
  nonzero = nonfinite = 0
  lo, hi = math.inf, -math.inf
  for s in range(0, n, _CHUNK):
    xc = xf[s:s + _CHUNK].astype(np.float64)
    yc = yf[s:s + _CHUNK].astype(np.float64)
    nonfinite += int(np.count_nonzero(~np.isfinite(xc)))
    if nonfinite:
      continue
    e = np.abs(yc - xc)
    nz = xc != 0
    rel = e[nz] / np.abs(xc[nz])
    total += float(xc.sum())
    sq_x += float(np.dot(xc, xc))
    abs_err += float(e.sum())
    sq_err += float(np.dot(e, e))
    max_abs = max(max_abs, float(e.max()))
    lo, hi = min(lo, float(xc.min())), max(hi, float(xc.max()))
    nonzero += rel.size
    if rel.size:
      rel_sum += float(rel.sum())
      max_rel = max(max_rel, float(rel.max()))
  if nonfinite:
    raise ValueError(f"`x` has {nonfinite} NaN/Inf values; the error metrics need "
                     "finite inputs.")
  mean = total / n
  # Second pass: the centred sum is accurate where sum(x^2) - n*mean^2 is not.
  var = sum(float(np.sum((xf[s:s + _CHUNK].astype(np.float64) - mean) ** 2))
            for s in range(0, n, _CHUNK)) / n

  if sq_err == 0.0:
    sqnr = math.inf
  elif sq_x == 0.0:
    sqnr = -math.inf
  else:
    sqnr = 10.0 * math.log10(sq_x / sq_err)
  bytes_before = n * xh.dtype.itemsize
  packed_bytes = int(packed.nbytes)
  state_bytes = int(state.nbytes())
  bytes_after = packed_bytes + state_bytes
  return ErrorReport(
      quant_type=state.quant_type, blocksize=int(state.blocksize),
      compress_statistics=bool(state.nested), numel=n, dtype=xh.dtype.name,
      min=lo, max=hi, mean=mean, std=math.sqrt(var),
      mae=abs_err / n, rmse=math.sqrt(sq_err / n), max_abs_error=max_abs,
      mean_rel_error=rel_sum / nonzero if nonzero else math.nan,
      max_rel_error=max_rel if nonzero else math.nan,
      sqnr_db=sqnr, bytes_before=bytes_before, packed_bytes=packed_bytes,
      state_bytes=state_bytes, bytes_after=bytes_after,
      compression_ratio=bytes_before / bytes_after,
      bits_per_weight=8.0 * bytes_after / n,
      distinct_levels=int(np.unique(yf.astype(np.float64)).size))


def error_report(
    x: Any,
    *,
    quant_type: str = "fp4",
    blocksize: int | None = None,
    compress_statistics: bool = False,
) -> ErrorReport:
  """Quantizes ``x`` with one format and measures the error and the size.

  Args:
    x: float32, bfloat16 or float16 array (NumPy or JAX) of any shape, finite.
    quant_type: one of ``jaxfp4.QUANT_TYPES``.
    blocksize: elements per block; None for the format default.
    compress_statistics: double-quantize the absmax (nf4, fp4, e2m1 only).

  Returns:
    The :class:`ErrorReport`.

  Raises:
    ValueError: for an empty or non-finite ``x``, an unsupported dtype, or an
      option the format does not accept.

  Example:
    >>> import numpy as np
    >>> from jaxfp4.analysis import error_report
    >>> r = error_report(np.zeros(4096, np.float32), quant_type="nf4")
    >>> r.mae, r.bytes_after, r.compression_ratio
    (0.0, 2304, 7.111111111111111)
  """
  return report_from_roundtrip(x, *quantize_roundtrip(
      x, quant_type=quant_type, blocksize=blocksize,
      compress_statistics=compress_statistics))


def format_options(
    quant_type: str, *, blocksize: int | None, compress_statistics: bool,
) -> tuple[int | None, bool]:
  """The options :func:`compare_formats` uses for one format.

  A format with one fixed block size (mxfp4: 32, nvfp4: 16) keeps it whatever
  ``blocksize`` asks, and double quantization is applied only where the format
  supports it (mxfp4/nvfp4 scales are already 8-bit).

  Args:
    quant_type: one of ``jaxfp4.QUANT_TYPES``.
    blocksize: the block size asked for (None: format default).
    compress_statistics: whether double quantization was asked for.

  Returns:
    ``(blocksize, compress_statistics)`` to pass to :func:`error_report`.

  Raises:
    ValueError: for an unknown format, or a block size a format with a choice
      of block sizes does not allow.

  Example:
    >>> from jaxfp4.analysis import format_options
    >>> format_options("mxfp4", blocksize=128, compress_statistics=True)
    (32, False)
  """
  fmt = formats.get_format(quant_type)
  if blocksize is not None and len(fmt.blocksizes) == 1:
    blocksize = fmt.blocksizes[0]
  formats.resolve_blocksize(fmt, blocksize)
  return blocksize, bool(compress_statistics and fmt.supports_double_quant)


def compare_formats(
    x: Any,
    quant_types: Sequence[str],
    *,
    blocksize: int | None = None,
    compress_statistics: bool = False,
) -> list[ErrorReport]:
  """:func:`error_report` of ``x`` for each format, in the order given.

  ``blocksize`` and ``compress_statistics`` are applied as
  :func:`format_options` describes, so one call can mix bitsandbytes and MX
  formats; each report records what was used.

  Args:
    x: float32, bfloat16 or float16 array of any shape, finite, not empty.
    quant_types: formats to compare, e.g. ``jaxfp4.QUANT_TYPES``.
    blocksize: block size for the formats that have a choice; None: defaults.
    compress_statistics: double-quantize the absmax where supported.

  Returns:
    One :class:`ErrorReport` per entry of ``quant_types``.

  Example:
    >>> import numpy as np
    >>> from jaxfp4.analysis import compare_formats
    >>> x = np.random.default_rng(0).normal(0, 0.5, 256).astype(np.float32)
    >>> [(r.quant_type, r.blocksize) for r in compare_formats(x, ["nf4", "nvfp4"])]
    [('nf4', 64), ('nvfp4', 16)]
  """
  plans = [(qt, *format_options(qt, blocksize=blocksize,
                                compress_statistics=compress_statistics))
           for qt in quant_types]  # validate all before quantizing any
  return [error_report(x, quant_type=qt, blocksize=bs, compress_statistics=cs)
          for qt, bs, cs in plans]


def _num(v: float, spec: str) -> str:
  if math.isnan(v):
    return "n/a"  # see table_notes: no nonzero input, so no relative error
  return f"{v:{spec}}" if math.isfinite(v) else str(v)


def table_notes(reports: Sequence[ErrorReport]) -> str:
  """What the columns of :func:`format_table` mean, and why a row shows ``n/a`` or ``inf``.

  Example:
    >>> import numpy as np
    >>> from jaxfp4._src.analysis.metrics import compare_formats, table_notes
    >>> print(table_notes(compare_formats(np.zeros(64, np.float32), ["nf4"])).splitlines()[-1])
    n/a: the tensor has no nonzero value, so its relative error is undefined.
  """
  lines = [
      "MAE, RMSE, max abs: |x - x_hat| in the input's units. mean rel, max rel: |x - x_hat| / |x| over",
      "the nonzero x, as a fraction (0.25 = 25%). SQNR: 10 log10(sum x^2 / sum (x - x_hat)^2).",
      "bits/w: stored bits per weight (packed codes + scales). ratio: input bytes / stored bytes.",
      "levels: distinct decoded values in the whole tensor (each block scale gives at most 16).",
  ]
  if any(r.sqnr_db == math.inf for r in reports):
    lines.append("SQNR inf: the tensor decodes exactly (e.g. all zeros).")
  if any(math.isnan(r.mean_rel_error) for r in reports):
    lines.append("n/a: the tensor has no nonzero value, so its relative error is undefined.")
  return "\n".join(lines)


def format_table(
    reports: Sequence[ErrorReport],
    *,
    leading: Mapping[str, Sequence[str]] | None = None,
) -> str:
  """Aligned text table of reports, one row per report.

  Args:
    reports: the reports.
    leading: extra text columns put first, as ``{header: one value per
      report}`` (e.g. the tensor name and shape).

  Returns:
    The table, header line first, no trailing newline.

  Example:
    >>> import numpy as np
    >>> from jaxfp4.analysis import compare_formats, format_table
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32)
    >>> print(format_table(compare_formats(x, ["fp4"])).splitlines()[0].split()[:3])
    ['format', 'block', 'dq']
  """
  leading = dict(leading or {})
  for name, values in leading.items():
    if len(values) != len(reports):
      raise ValueError(f"`leading[{name!r}]` has {len(values)} values for "
                       f"{len(reports)} reports.")
  headers = [*leading, "format", "block", "dq", "MAE", "RMSE", "max abs", "mean rel",
             "max rel", "SQNR dB", "bits/w", "ratio", "levels"]
  rows = []
  for i, r in enumerate(reports):
    rows.append([*(str(v[i]) for v in leading.values()),
                 r.quant_type, str(r.blocksize), "yes" if r.compress_statistics else "no",
                 _num(r.mae, ".4g"), _num(r.rmse, ".4g"), _num(r.max_abs_error, ".4g"),
                 _num(r.mean_rel_error, ".4g"), _num(r.max_rel_error, ".4g"),
                 _num(r.sqnr_db, ".2f"), f"{r.bits_per_weight:.3f}",
                 f"{r.compression_ratio:.2f}x", str(r.distinct_levels)])
  text_cols = len(leading) + 3  # names and options read better left-aligned
  widths = [max(len(h), *(len(row[j]) for row in rows)) if rows else len(h)
            for j, h in enumerate(headers)]

  def line(cells: Sequence[str]) -> str:
    return "  ".join(c.ljust(w) if j < text_cols else c.rjust(w)
                     for j, (c, w) in enumerate(zip(cells, widths))).rstrip()

  return "\n".join([line(headers), *(line(row) for row in rows)])
