"""4-bit weights with a few input columns kept in high precision.

A handful of input features carry most of the large values in transformer
activations and weights (Dettmers et al. 2022, LLM.int8(), "outlier features";
Lin et al. 2023, AWQ, salient channels by activation magnitude). Keeping those
columns of ``W[out, in]`` in bf16 and zeroing them before quantizing helps twice:
the outliers are exact, and the blocks they sat in get a smaller absmax, so
every other weight of those blocks is quantized finer. The 4-bit part is an
ordinary bitsandbytes-format weight; the columns travel beside it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfp4._src.quantize import dequantize_4bit, quantize_4bit
from jaxfp4._src.state import QuantState


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class OutlierColumns:
  """Input columns of ``W[out, in]`` kept out of the 4-bit weight.

  Attributes:
    index: int32 ``[c]``, sorted input-feature indices.
    values: ``[out, c]``, the columns in high precision.
  """

  index: jax.Array
  values: jax.Array

  @property
  def num_columns(self) -> int:
    return int(self.index.shape[0])

  def nbytes(self) -> int:
    return int(self.index.size * self.index.dtype.itemsize + self.values.size * self.values.dtype.itemsize)


def select_outlier_columns(
    w: jax.typing.ArrayLike,
    *,
    num_columns: int,
    activations: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """The ``num_columns`` input columns of ``W[out, in]`` to keep in high precision.

  Args:
    w: the weight ``[out, in]``.
    num_columns: how many columns (0 <= num_columns < in).
    activations: optional calibration inputs ``[..., in]``. Without them, columns
      are ranked by their largest |weight|. With them, by ``||W[:, c]||_2 * rms(x_c)``,
      the size of the output that column produces (AWQ's saliency, Lin et al. 2023).

  Returns:
    int32 ``[num_columns]``, sorted.
  """
  w = jnp.asarray(w)
  if w.ndim != 2 or not jnp.issubdtype(w.dtype, jnp.floating):
    raise ValueError(f"`w` must be a 2-D float array [out, in], got {w.dtype}{list(w.shape)}.")
  k = w.shape[1]
  if isinstance(num_columns, bool) or not isinstance(num_columns, int) or not 0 <= num_columns < k:
    raise ValueError(f"`num_columns` must be an int in [0, {k}), got {num_columns!r}.")
  w32 = jnp.abs(w.astype(jnp.float32))
  if activations is None:
    score = jnp.max(w32, axis=0)
  else:
    a = jnp.asarray(activations)
    if a.ndim < 1 or a.shape[-1] != k or not jnp.issubdtype(a.dtype, jnp.floating):
      raise ValueError(f"`activations` must be a float array [..., {k}], got {a.dtype}{list(a.shape)}.")
    rms = jnp.sqrt(jnp.mean(jnp.square(a.reshape(-1, k).astype(jnp.float32)), axis=0))
    score = jnp.sqrt(jnp.sum(jnp.square(w32), axis=0)) * rms
  _, top = jax.lax.top_k(score, num_columns)
  return jnp.sort(top).astype(jnp.int32)


def quantize_4bit_with_outliers(
    w: jax.typing.ArrayLike,
    *,
    num_columns: int,
    activations: jax.typing.ArrayLike | None = None,
    outlier_dtype: Any = None,
    **quantize_kwargs: Any,
) -> tuple[jax.Array, QuantState, OutlierColumns]:
  """Quantizes ``W[out, in]`` to 4 bits except ``num_columns`` columns kept in high precision.

  Args:
    w: the weight ``[out, in]``.
    num_columns, activations: see :func:`select_outlier_columns`.
    outlier_dtype: dtype of the kept columns (default: ``w.dtype``).
    **quantize_kwargs: passed to :func:`jaxfp4.quantize_4bit` (quant_type, blocksize, ...).

  Returns:
    ``(packed, state, outliers)``; the 4-bit part has the kept columns zeroed.

  Example:
    >>> import jax, jaxfp4
    >>> w = jax.random.normal(jax.random.key(0), (64, 128))
    >>> packed, state, cols = jaxfp4.quantize_4bit_with_outliers(w, num_columns=4, quant_type="nf4")
    >>> cols.values.shape
    (64, 4)
  """
  w = jnp.asarray(w)
  index = select_outlier_columns(w, num_columns=num_columns, activations=activations)
  values = w[:, index].astype(w.dtype if outlier_dtype is None else outlier_dtype)
  rest = w.at[:, index].set(jnp.zeros((), w.dtype))
  packed, state = quantize_4bit(rest, **quantize_kwargs)
  return packed, state, OutlierColumns(index=index, values=values)


def dequantize_4bit_with_outliers(packed: jax.Array, state: QuantState, outliers: OutlierColumns) -> jax.Array:
  """The full weight: the decoded 4-bit part with the kept columns put back."""
  check_outliers(outliers, state)
  w = dequantize_4bit(packed, state)
  return w.at[:, outliers.index].set(outliers.values.astype(w.dtype))


def check_outliers(outliers: OutlierColumns, state: QuantState) -> None:
  """Raises ValueError unless ``outliers`` fits the weight that ``state`` describes.

  Shapes are always checked. The index values (in ``[0, in)``, no repeats) are
  checked once per object, and skipped under ``jit`` where they are not known:
  a wrong index would silently read another column, or NaN past the end.
  """
  if not isinstance(outliers, OutlierColumns):
    raise ValueError(f"`outliers` must be an OutlierColumns, got {type(outliers).__name__}.")
  if len(state.shape) != 2:
    raise ValueError(f"`outliers` need a 2-D weight [out, in], but the state's shape is {state.shape}.")
  n, k = state.shape
  index = outliers.index
  c = index.shape[0] if getattr(index, "ndim", None) == 1 else -1
  if c < 0 or not jnp.issubdtype(index.dtype, jnp.integer):
    raise ValueError(f"`outliers.index` must be a 1-D int array, got {getattr(index, 'dtype', type(index))}"
                     f"{list(getattr(index, 'shape', ()))}.")
  if c >= k:
    raise ValueError(f"`outliers.index` holds {c} columns; a weight with {k} input columns allows "
                     f"at most {k - 1}.")
  if tuple(outliers.values.shape) != (n, c):
    raise ValueError(f"`outliers.values` must have shape ({n}, {c}) for a weight of shape {(n, k)}, "
                     f"got {tuple(outliers.values.shape)}.")
  if isinstance(index, jax.core.Tracer) or outliers.__dict__.get("_checked_for") == k:
    return
  idx = np.asarray(index).astype(np.int64)
  bad = idx[(idx < 0) | (idx >= k)]
  if bad.size:
    raise ValueError(f"`outliers.index` must hold input columns in [0, {k}), got {bad[:8].tolist()}.")
  uniq, counts = np.unique(idx, return_counts=True)
  if np.any(counts > 1):
    raise ValueError(f"`outliers.index` must not repeat a column; repeated: {uniq[counts > 1][:8].tolist()}.")
  object.__setattr__(outliers, "_checked_for", k)  # the index is immutable: check once


def outlier_product(x: jax.Array, outliers: OutlierColumns) -> jax.Array:
  """``x[..., index] @ values.T`` in float32."""
  xs = jnp.take(x, outliers.index, axis=-1)
  return jnp.matmul(xs.astype(jnp.float32), outliers.values.astype(jnp.float32).T,
                    precision=jax.lax.Precision.HIGHEST)
