"""The single-device 4-bit product ``x @ W.T + bias`` (or ``x @ W``) and its kernel route.

Shared by :mod:`jaxfp4._src.matmul` (the public ``matmul_4bit``),
:mod:`jaxfp4._src.matmul_group` and :mod:`jaxfp4._src.sharding.matmul` (which runs
it per shard). It sits below all three so the imports run one way: the
sharded product needs this module, never ``matmul_4bit`` itself
(docs/architecture.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxfp4._src import formats
from jaxfp4._src import quantize as quantize_lib
from jaxfp4._src.state import QuantState
import pallas_kernels
from pallas_kernels._src import common as kernel_common
from pallas_kernels._src.lut_matmul import api as lut_api
from pallas_kernels._src.matmul_4bit import layout as k_order
from pallas_kernels._src.matmul_4bit import config as matmul_config

IMPLEMENTATIONS = (None, "xla", "pallas")
ACTIVATION_DTYPES = ("float32", "bfloat16", "float16")


def kernel_format(state: QuantState) -> pallas_kernels.WeightFormat:
  """The kernels' static description of the weight's format (:func:`kernel_weight`'s)."""
  fmt = state.format
  lut = tuple(fmt.decode_lut)
  bs = state.blocksize
  mult = float(np.float32(1.0 / formats.E2M1_MAX)) if fmt.name == "e2m1" else 1.0
  if fmt.scale_kind in ("e8m0", "e4m3"):
    return pallas_kernels.WeightFormat(lut=lut, blocksize=bs, scale_kind="byte",
                                       layout=state.layout)
  if state.state2 is not None:
    return pallas_kernels.WeightFormat(lut=lut, blocksize=bs, scale_kind="byte",
                                       scale_multiplier=mult,
                                       nested_blocksize=state.state2.blocksize,
                                       layout=state.layout)
  return pallas_kernels.WeightFormat(lut=lut, blocksize=bs, scale_multiplier=mult,
                                     layout=state.layout)


def kernel_weight(data: jax.Array, state: QuantState
                  ) -> tuple[pallas_kernels.PackedWeight, pallas_kernels.WeightFormat]:
  """The packed weight in the kernels' layout (``K % blocksize == 0``)."""
  n, k = state.shape
  bs = state.blocksize
  nkb = k // bs
  data = data.reshape(n, nkb, bs // 2)
  fmt = kernel_format(state)
  if state.format.scale_kind in ("e8m0", "e4m3"):
    # Every possible byte decoded once; the per-tensor nvfp4 scale is folded in.
    every_byte = jax.lax.bitcast_convert_type(jnp.arange(256, dtype=jnp.uint8),
                                              state.absmax.dtype)
    table = quantize_lib.decode_scale_bytes(every_byte, state)
    raw = jax.lax.bitcast_convert_type(state.absmax, jnp.uint8).reshape(n, nkb)
    return pallas_kernels.PackedWeight(data, raw, table), fmt
  if state.state2 is not None:
    assert state.offset is not None  # QuantState.validate: a nested state has its offset
    # The group scales go in as stored: a padded copy would cost a launch per
    # product (96 per Llama-8B decode step, docs/benchmarks.md).
    table = jnp.asarray(np.asarray(state.state2.code, np.float32))
    w = pallas_kernels.PackedWeight(data, state.absmax.reshape(n, nkb), table,
                                    state.state2.absmax.astype(jnp.float32),
                                    jnp.reshape(state.offset, (1,)).astype(jnp.float32))
    return w, fmt
  return pallas_kernels.PackedWeight(data, state.absmax.reshape(n, nkb)), fmt


def fused_ok(state: QuantState, dtype) -> bool:
  n, k = state.shape
  return matmul_config.can_use_kernel(n, k, state.blocksize, dtype)


def route(m: int, state: QuantState, dtype, implementation, transpose: bool) -> str:
  """``"gemv"``/``"mma"`` (register-table kernels), ``"gemv_t"``/``"mma_t"`` (their
  transposed forms for the input gradient), ``"fused"`` (tile-decode kernel),
  ``"dequantize"`` (kernel decode + XLA dot) or ``"xla"``."""
  if implementation == "xla":
    return "xla"
  usable = fused_ok(state, dtype)
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
  n, k = state.shape
  if usable and not transpose:
    kind = lut_api.choose_kind(m, dtype, device)
    if lut_api.use_wgmma(m, n, k, kernel_format(state), dtype, device):
      kind = "mma"  # the Mosaic kernel: its own M range ("wgmma_min_m" to "wgmma_max_m")
    if kind:
      return kind
  if transpose:
    kind = lut_api.transposed_kind(m, n, k, state.blocksize, dtype, device)
    if kind:
      return kind
  if usable and matmul_config.prefer_fused(m, transpose, device):
    return "fused"
  return "dequantize"


def transposed_product(kind: str, dy, data, state: QuantState) -> jax.Array:
  """``dy @ W`` on the transposed kernel ``kind`` (``"gemv_t"`` or ``"mma_t"``) with the
  config recorded for this device kind (GPU)."""
  w, fmt = kernel_weight(data, state)
  n, k = state.shape
  device = kernel_common.device_kind()
  if kind == "gemv_t":
    return pallas_kernels.gemv_t_4bit_triton(
        dy, w, fmt=fmt, config=lut_api.gemv_t_config(dy.shape[0], n, k, device))
  return pallas_kernels.mma_t_4bit_triton(
      dy, w, fmt=fmt, config=lut_api.mma_t_config(dy.shape[0], n, k, device))


def decoded_weight(data, state: QuantState, dtype, use_kernel: bool) -> jax.Array:
  """``W[N, K]`` in ``dtype``: float32 ``lut * scale`` rounded once, its columns in the
  bytes' stored K order (``state.layout``)."""
  return pallas_kernels.dequantize_blocks(
      data, quantize_lib.block_scales(state), lut=tuple(state.format.decode_lut),
      numel=state.numel, blocksize=state.blocksize, out_dtype=dtype,
      implementation=None if use_kernel else "xla").reshape(state.shape)


def product(x, data, state, bias, implementation, transpose: bool):
  """``x @ W.T + bias`` (``transpose``: ``x @ W``) for 2-D ``x`` on the route :func:`route` picks."""
  route_ = route(x.shape[0], state, x.dtype, implementation, transpose)
  if route_ in ("gemv", "mma"):
    w, fmt = kernel_weight(data, state)
    return pallas_kernels.matmul_lut(x, w, fmt=fmt, bias=bias, kind=route_,
                                     implementation="pallas")
  if route_ in ("gemv_t", "mma_t"):
    return transposed_product(route_, x, data, state)
  if route_ == "fused":
    w, fmt = kernel_weight(data, state)
    return pallas_kernels.matmul_packed(x, w, fmt=fmt, transpose=transpose, bias=bias,
                                        implementation="pallas")
  wt = decoded_weight(data, state, x.dtype, use_kernel=route_ == "dequantize")
  dims = (((1,), (0,)), ((), ())) if transpose else (((1,), (1,)), ((), ()))
  prec = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
  # W is decoded in its bytes' stored K order: the activations meet it in that order
  # (cheaper than moving W), and dy @ W comes out in it
  lhs = x if transpose else k_order.to_stored_order(x, state.layout)
  acc = jax.lax.dot_general(lhs, wt, dims, precision=prec, preferred_element_type=jnp.float32)
  if transpose:
    acc = k_order.to_real_order(acc, state.layout)
  if bias is not None:
    acc = acc + bias.astype(jnp.float32)[None, :]
  return acc.astype(x.dtype)


def zero_cotangent(a):
  """The zero cotangent of a frozen input (float0 for integer arrays such as the packed bytes)."""
  if jnp.issubdtype(a.dtype, jnp.inexact):
    return jnp.zeros_like(a)
  return np.zeros(a.shape, jax.dtypes.float0)
