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
import numpy as np

from jaxfp4._src import formats
from jaxfp4._src import outlier_columns as outliers_lib
from jaxfp4._src import quantize as quantize_lib
from jaxfp4._src.state import QuantState
import pallas_kernels
from pallas_kernels._src import common as kernel_common
from pallas_kernels._src.lut_matmul import api as lut_api
from pallas_kernels._src.matmul_4bit import config as matmul_config

IMPLEMENTATIONS = (None, "xla", "pallas")
ACTIVATION_DTYPES = ("float32", "bfloat16", "float16")


def kernel_weight(data: jax.Array, state: QuantState
                  ) -> tuple[pallas_kernels.PackedWeight, pallas_kernels.WeightFormat]:
  """The packed weight in the kernels' layout (``K % blocksize == 0``)."""
  n, k = state.shape
  bs = state.blocksize
  fmt = state.format
  nkb = k // bs
  data = data.reshape(n, nkb, bs // 2)
  lut = tuple(fmt.decode_lut)
  mult = float(np.float32(1.0 / formats.E2M1_MAX)) if fmt.name == "e2m1" else 1.0
  if fmt.scale_kind in ("e8m0", "e4m3"):
    # Every possible byte decoded once; the per-tensor nvfp4 scale is folded in.
    every_byte = jax.lax.bitcast_convert_type(jnp.arange(256, dtype=jnp.uint8),
                                              state.absmax.dtype)
    table = quantize_lib.decode_scale_bytes(every_byte, state)
    raw = jax.lax.bitcast_convert_type(state.absmax, jnp.uint8).reshape(n, nkb)
    return (pallas_kernels.PackedWeight(data, raw, table),
            pallas_kernels.WeightFormat(lut=lut, blocksize=bs, scale_kind="byte"))
  if state.state2 is not None:
    assert state.offset is not None  # QuantState.validate: a nested state has its offset
    # The group scales go in as stored: a padded copy would cost a launch per
    # product (96 per Llama-8B decode step, docs/benchmarks.md).
    table = jnp.asarray(np.asarray(state.state2.code, np.float32))
    w = pallas_kernels.PackedWeight(data, state.absmax.reshape(n, nkb), table,
                                    state.state2.absmax.astype(jnp.float32),
                                    jnp.reshape(state.offset, (1,)).astype(jnp.float32))
    return w, pallas_kernels.WeightFormat(lut=lut, blocksize=bs, scale_kind="byte",
                                          scale_multiplier=mult,
                                          nested_blocksize=state.state2.blocksize)
  return (pallas_kernels.PackedWeight(data, state.absmax.reshape(n, nkb)),
          pallas_kernels.WeightFormat(lut=lut, blocksize=bs, scale_multiplier=mult))


def _fused_ok(state: QuantState, dtype) -> bool:
  n, k = state.shape
  return matmul_config.can_use_kernel(n, k, state.blocksize, dtype)


def _route(m: int, state: QuantState, dtype, implementation, transpose: bool) -> str:
  """``"gemv"``/``"mma"`` (register-table kernels), ``"fused"`` (tile-decode
  kernel), ``"dequantize"`` (kernel decode + XLA dot) or ``"xla"``."""
  if implementation == "xla":
    return "xla"
  usable = _fused_ok(state, dtype)
  if implementation == "pallas":
    if not usable:
      raise ValueError(
          f"implementation='pallas' needs the weight's K={state.shape[1]} to be a multiple of its "
          f"blocksize={state.blocksize} (blocks must not straddle rows); use None or 'xla'.")
    if not transpose:
      kind = lut_api.choose_kind(m, dtype, kernel_common.device_kind()
                                 if kernel_common.on_gpu() else None)
      if kind is None and jnp.dtype(dtype).name != "float32":
        kind = "mma"  # no 16-bit copy of the weight, whatever M
      if kind:
        return kind
    return "fused"
  if not kernel_common.on_gpu():
    return "xla"
  device = kernel_common.device_kind()
  if usable and not transpose:
    kind = lut_api.choose_kind(m, dtype, device)
    if kind:
      return kind
  if usable and matmul_config.prefer_fused(m, transpose, device):
    return "fused"
  return "dequantize"


def _decoded_weight(data, state: QuantState, dtype, use_kernel: bool) -> jax.Array:
  """``W[N, K]`` in ``dtype``: float32 ``lut * scale`` rounded once."""
  return pallas_kernels.dequantize_blocks(
      data, quantize_lib.block_scales(state), lut=tuple(state.format.decode_lut),
      numel=state.numel, blocksize=state.blocksize, out_dtype=dtype,
      implementation=None if use_kernel else "xla").reshape(state.shape)


def _product(x, data, state, bias, implementation, transpose: bool):
  route = _route(x.shape[0], state, x.dtype, implementation, transpose)
  if route in ("gemv", "mma"):
    w, fmt = kernel_weight(data, state)
    return pallas_kernels.matmul_lut(x, w, fmt=fmt, bias=bias, kind=route,
                                     implementation="pallas")
  if route == "fused":
    w, fmt = kernel_weight(data, state)
    return pallas_kernels.matmul_packed(x, w, fmt=fmt, transpose=transpose, bias=bias,
                                        implementation="pallas")
  wt = _decoded_weight(data, state, x.dtype, use_kernel=route == "dequantize")
  dims = (((1,), (0,)), ((), ())) if transpose else (((1,), (1,)), ((), ()))
  prec = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
  acc = jax.lax.dot_general(x, wt, dims, precision=prec, preferred_element_type=jnp.float32)
  if bias is not None:
    acc = acc + bias.astype(jnp.float32)[None, :]
  return acc.astype(x.dtype)


def _zero_cotangent(a):
  if jnp.issubdtype(a.dtype, jnp.inexact):
    return jnp.zeros_like(a)
  return np.zeros(a.shape, jax.dtypes.float0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _matmul(x, bias, data, state, implementation):
  return _product(x, data, state, bias, implementation, transpose=False)


def _matmul_fwd(x, bias, data, state, implementation):
  return _product(x, data, state, bias, implementation, transpose=False), (bias, data, state)


def _matmul_bwd(implementation, residuals, dy):
  bias, data, state = residuals
  dx = _product(dy, data, state, None, implementation, transpose=True)
  dbias = None if bias is None else jnp.sum(dy.astype(jnp.float32), axis=0).astype(bias.dtype)
  return (dx, dbias, _zero_cotangent(data), jax.tree_util.tree_map(_zero_cotangent, state))


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
    from jaxfp4._src.sharding import layout  # one-way import: sharding builds on this module
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
    from jaxfp4._src.sharding import matmul as sharded  # one-way import: it builds on this module
    return sharded.matmul_sharded(x.reshape(-1, k), data, state, bias, implementation,
                                  sharding).reshape(*lead, n)
  y = _matmul(x.reshape(-1, k), bias, data, state, implementation)
  if outliers is not None:
    outliers_lib.check_outliers(outliers, state)
    y = (y.astype(jnp.float32) + outliers_lib.outlier_product(x.reshape(-1, k), outliers)).astype(x.dtype)
  return y.reshape(*lead, n)
