"""``matmul_4bit``: ``x @ W.T + bias`` against a packed 4-bit weight, with gradients.

The weight stays packed. On a GPU the forward product picks, by M (crossovers
measured per device kind, ``pallas_kernels/data/matmul_4bit.json``): a few rows
of x run the CUDA-core GEMV (table values from warp shuffles, post-scaled
chunks), up to ~128 rows the tensor-core kernel that decodes the weight in
registers as the left operand; past that the work is compute-bound and the
dequantize kernel feeds XLA's GEMM. The input gradient takes the dequantize
route (or the tile-decode kernel where it measured faster). Off the GPU both
directions are plain jnp. The backward pass needs only the weight and the
output gradient, so no activation is saved for it.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxfp4._src import outlier_columns as outliers_lib
from jaxfp4._src import product as product_lib
from jaxfp4._src import quantize as quantize_lib
from jaxfp4._src.sharding import layout
from jaxfp4._src.sharding import matmul as sharded
from jaxfp4._src.state import QuantState

# Re-exported: matmul_group and the benchmarks name them through this module.
IMPLEMENTATIONS = product_lib.IMPLEMENTATIONS
ACTIVATION_DTYPES = product_lib.ACTIVATION_DTYPES


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _matmul(x, bias, data, state, implementation):
  return product_lib.product(x, data, state, bias, implementation, transpose=False)


def _matmul_fwd(x, bias, data, state, implementation):
  return product_lib.product(x, data, state, bias, implementation, transpose=False), (bias, data, state)


def _matmul_bwd(implementation, residuals, dy):
  bias, data, state = residuals
  dx = product_lib.product(dy, data, state, None, implementation, transpose=True)
  dbias = None if bias is None else jnp.sum(dy.astype(jnp.float32), axis=0).astype(bias.dtype)
  zero = product_lib.zero_cotangent
  return dx, dbias, zero(data), jax.tree_util.tree_map(zero, state)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def check_product_shapes(x: jax.Array, state: QuantState, bias, *, weight: str,
                         bias_name: str) -> tuple[int, int, jax.Array | None]:
  """``(N, K, bias)`` of ``x @ W.T + bias``: ``state`` must describe a 2-D weight
  ``[N, K]``, ``x`` be ``[..., K]`` and ``bias`` None or a float ``[N]``.

  ``weight`` and ``bias_name`` name the arguments in the errors.
  """
  if len(state.shape) != 2:
    raise ValueError(f"{weight} must be the state of a 2-D weight [N, K], got shape "
                     f"{state.shape}.")
  n, k = state.shape
  if x.ndim < 1 or x.shape[-1] != k:
    raise ValueError(f"`x` must have shape [..., K] with K={k} ({weight} is [N={n}, K={k}]), "
                     f"got {tuple(x.shape)}.")
  if bias is not None:
    bias = jnp.asarray(bias)
    if tuple(bias.shape) != (n,) or not jnp.issubdtype(bias.dtype, jnp.floating):
      raise ValueError(f"{bias_name} must be a float array of shape ({n},), got "
                       f"{bias.dtype} {tuple(bias.shape)}.")
  return n, k, bias


def matmul_4bit(
    x: jax.typing.ArrayLike,
    packed: jax.typing.ArrayLike,
    state: QuantState,
    *,
    bias: jax.typing.ArrayLike | None = None,
    outliers: Any = None,
    implementation: str | None = None,
    sharding: Any = None,
) -> jax.Array:
  """``x @ dequantize_4bit(packed, state).T + bias`` without widening the weight.

  ``W[N, K]`` is laid out as bitsandbytes ``Linear4bit`` stores it. The decoded
  weight is ``float32(table[nibble] * scale)`` rounded once to ``x.dtype``
  (equal to ``dequantize_4bit`` when ``x.dtype == state.dtype``); products are
  accumulated in float32 and the bias is added before the final rounding. The
  GPU's GEMV for a few rows of x (decode) multiplies the float32 weight itself,
  without that rounding (closer to the exact product).

  Gradients (``jax.custom_vjp``): ``dx = dy @ W`` from the packed weight and
  ``dbias = sum(dy)``. The 4-bit weight is frozen: the cotangents of
  ``packed`` and of every ``state`` leaf are zero (train adapters beside it,
  as QLoRA does).

  Args:
    x: ``[..., K]`` activations, float32, bfloat16 or float16.
    packed: the packed bytes from :func:`quantize_4bit` (any ``quant_storage``).
    state: the weight's :class:`QuantState`, of shape ``(N, K)``.
    bias: optional ``[N]`` float bias.
    outliers: optional :class:`jaxfp4.OutlierColumns` from
      :func:`jaxfp4.quantize_4bit_with_outliers`: their product
      ``x[..., index] @ values.T`` is added in float32 to the 4-bit product
      (so the result is rounded twice; gradients flow through both parts).
    implementation: None (on a GPU the register-table kernels for small M,
      dequantize kernel + XLA GEMM for large M; jnp elsewhere), ``"xla"``
      (pure jnp) or ``"pallas"`` (Pallas kernels for every M, never a 16-bit
      copy of the weight: interpret mode off the GPU; an error if the
      weight's blocks straddle rows).
    sharding: a :class:`jaxfp4.sharding.WeightSharding`: the weight is split
      over a mesh (column and/or row parallel, FSDP) and the kernels run per
      shard inside ``shard_map``; place the weight with
      :func:`jaxfp4.sharding.shard_4bit`. Row-parallel partial products are
      summed in float32 by the SPMD partitioner.

  Returns:
    ``[..., N]`` in ``x.dtype``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxfp4
    >>> w = jax.random.normal(jax.random.key(0), (32, 64), jnp.bfloat16)
    >>> packed, state = jaxfp4.quantize_4bit(w, quant_type="nf4")
    >>> x = jnp.ones((2, 3, 64), jnp.bfloat16)
    >>> jaxfp4.matmul_4bit(x, packed, state).shape
    (2, 3, 32)
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"`implementation` must be one of {IMPLEMENTATIONS}, got {implementation!r}.")
  if sharding is None:
    data = quantize_lib.check_packed(packed, state)
  else:
    data = layout.check_row_view(packed, state)
  x = jnp.asarray(x)
  if jnp.dtype(x.dtype).name not in ACTIVATION_DTYPES:
    raise ValueError(f"`x` must have a dtype in {ACTIVATION_DTYPES}, got {x.dtype}.")
  n, k, bias = check_product_shapes(x, state, bias, weight="`state`", bias_name="`bias`")
  lead = x.shape[:-1]
  if sharding is not None:
    if outliers is not None:
      raise ValueError("`outliers` cannot be combined with `sharding`: the kept columns are not "
                       "split with the weight; quantize without outlier columns to shard.")
    return sharded.matmul_sharded(x.reshape(-1, k), data, state, bias, implementation,
                                  sharding).reshape(*lead, n)
  y = _matmul(x.reshape(-1, k), bias, data, state, implementation)
  if outliers is not None:
    outliers_lib.check_outliers(outliers, state)
    y = (y.astype(jnp.float32) + outliers_lib.outlier_product(x.reshape(-1, k), outliers)).astype(x.dtype)
  return y.reshape(*lead, n)
