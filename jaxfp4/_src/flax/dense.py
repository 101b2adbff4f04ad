"""The computation shared by the NNX and Linen ``Dense4bit`` layers.

Both layers call :func:`dense_4bit` on the same arrays, so for the same packed
weight they give bit-identical outputs. Kernels follow Flax's ``[in, out]``
convention; the packed weight follows bitsandbytes' ``Linear4bit``, which
quantizes ``W[out, in]`` (bnb_format.md §6), so checkpoints move between the
two without re-packing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxfp4._src import formats
from jaxfp4._src.matmul import matmul_4bit
from jaxfp4._src.matmul_group import matmul_4bit_group
from jaxfp4._src.outlier_columns import OutlierColumns, dequantize_4bit_with_outliers, quantize_4bit_with_outliers
from jaxfp4._src.quantize import dequantize_4bit, quantize_4bit
from jaxfp4._src.repack import repack_4bit
from jaxfp4._src.state import QuantState


def check_features(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
  return value


def check_lora(lora_rank, lora_alpha, lora_dropout) -> float:
  """Validates the LoRA options and returns the adapter scale ``alpha / rank``."""
  if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 0:
    raise ValueError(f"`lora_rank` must be an int >= 0 (0 disables LoRA), got {lora_rank!r}.")
  if not 0.0 <= float(lora_dropout) < 1.0:
    raise ValueError(f"`lora_dropout` must be in [0, 1), got {lora_dropout!r}.")
  if lora_rank == 0:
    return 0.0
  alpha = float(lora_rank if lora_alpha is None else lora_alpha)
  if not alpha > 0:
    raise ValueError(f"`lora_alpha` must be > 0, got {lora_alpha!r}.")
  # Hu et al. 2021 (LoRA) scale the update by alpha / r.
  return alpha / lora_rank


def quantize_kernel(
    kernel: jax.Array,
    *,
    quant_type: str,
    blocksize: int | None,
    compress_statistics: bool,
    quant_storage,
    outlier_columns: int = 0,
    calibration: jax.Array | None = None,
) -> tuple[jax.Array, QuantState, OutlierColumns | None]:
  """Quantizes a Flax ``[in, out]`` kernel as bitsandbytes' ``W[out, in]``.

  With ``outlier_columns > 0`` that many input columns stay in the kernel's
  dtype (chosen by weight magnitude, or by ``calibration`` inputs).
  """
  if jnp.ndim(kernel) != 2:
    raise ValueError(f"`kernel` must be 2-D [in_features, out_features], got shape {jnp.shape(kernel)}.")
  opts = dict(quant_type=quant_type, blocksize=blocksize, compress_statistics=compress_statistics,
              quant_storage=quant_storage)
  if outlier_columns:
    return quantize_4bit_with_outliers(jnp.asarray(kernel).T, num_columns=outlier_columns,
                                       activations=calibration, **opts)
  if calibration is not None:
    raise ValueError("`calibration` inputs are only used to choose outlier columns; set `outlier_columns`.")
  packed, state = quantize_4bit(jnp.asarray(kernel).T, **opts)
  return packed, state, None


def check_quantized(packed: jax.Array, state: QuantState, in_features: int, out_features: int):
  if not isinstance(state, QuantState):
    raise ValueError(f"`state` must be a jaxfp4.QuantState, got {type(state).__name__}.")
  if tuple(state.shape) != (out_features, in_features):
    raise ValueError(f"The quantized weight has shape {tuple(state.shape)} [out, in], but the layer "
                     f"needs ({out_features}, {in_features}).")


def compute_dtype(x: jax.Array, state: QuantState, dtype, *others) -> jnp.dtype:
  """``dtype`` if given, else the promotion of the input and the weights' dtypes
  (what ``nnx.Linear`` and ``nn.Dense`` do with ``dtype=None``)."""
  if dtype is not None:
    return jnp.dtype(dtype)
  return jnp.result_type(x.dtype, state.dtype, *[o.dtype for o in others if o is not None])


def dense_4bit(
    x: jax.Array,
    packed: jax.Array,
    state: QuantState,
    *,
    bias: jax.Array | None,
    lora_a: jax.Array | None,
    lora_b: jax.Array | None,
    lora_scale: float,
    dropout: Callable[[jax.Array], jax.Array] | None,
    dtype,
    implementation: str | None,
    outliers: OutlierColumns | None = None,
    sharding=None,
) -> jax.Array:
  """``x @ W.T + bias + scale * dropout(x) @ A @ B`` in the compute dtype."""
  x = _checked_input(x, state)
  dt = _checked_dtype(compute_dtype(x, state, dtype, bias, lora_a))
  x = x.astype(dt)
  y = matmul_4bit(x, packed, state, bias=None if bias is None else bias.astype(dt),
                  outliers=outliers, implementation=implementation, sharding=sharding)
  return _plus_lora(y, x, lora_a, lora_b, lora_scale, dropout)


def _checked_input(x, state: QuantState) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[-1] != state.shape[1]:
    raise ValueError(f"Input `x` must have last dim {state.shape[1]} (in_features), got shape {x.shape}.")
  return x


def _checked_dtype(dt: jnp.dtype) -> jnp.dtype:
  if not jnp.issubdtype(dt, jnp.floating) or dt.name not in formats.INPUT_DTYPES:
    raise ValueError(f"The compute `dtype` must be one of {formats.INPUT_DTYPES}, got {dt}.")
  return dt


def _plus_lora(y, x, lora_a, lora_b, lora_scale, dropout) -> jax.Array:
  """``y + scale * dropout(x) @ A @ B`` in ``x``'s (the compute) dtype."""
  if lora_a is None:
    return y
  dt = x.dtype
  h = x if dropout is None else dropout(x)
  delta = (h @ lora_a.astype(dt)) @ lora_b.astype(dt)
  return y + (delta * jnp.asarray(lora_scale, dt)).astype(dt)


def dense_4bit_group(x: jax.Array, layers: Sequence[dict], *, dtype,
                     implementation: str | None) -> tuple[jax.Array, ...]:
  """:func:`dense_4bit` for layers that read the same ``x`` (each a dict of its
  keyword arguments plus ``packed`` and ``state``): the 4-bit products share
  one launch where :func:`matmul_4bit_group` can, the adapters run per layer."""
  for layer in layers:
    x = _checked_input(x, layer["state"])
  dts = {compute_dtype(x, d["state"], dtype, d["bias"], d["lora_a"]) for d in layers}
  if len(dts) != 1:  # no common compute dtype: each layer on its own
    return tuple(dense_4bit(x, d["packed"], d["state"], dtype=dtype,
                            implementation=implementation,
                            **{k: v for k, v in d.items() if k not in ("packed", "state")})
                 for d in layers)
  dt = _checked_dtype(dts.pop())
  x = x.astype(dt)
  ys = matmul_4bit_group(x, [(d["packed"], d["state"]) for d in layers],
                         biases=[None if d["bias"] is None else d["bias"].astype(dt)
                                 for d in layers], implementation=implementation)
  return tuple(_plus_lora(y, x, d["lora_a"], d["lora_b"], d["lora_scale"], d["dropout"])
               for y, d in zip(ys, layers))


def merged_weight(packed: jax.Array, state: QuantState, lora_a, lora_b, lora_scale: float,
                  outliers: OutlierColumns | None = None) -> jax.Array:
  """float32 ``W[out, in] + scale * (A @ B).T``: the dense weight a merge re-quantizes."""
  w = (dequantize_4bit(packed, state) if outliers is None
       else dequantize_4bit_with_outliers(packed, state, outliers)).astype(jnp.float32)
  delta = jnp.matmul(lora_a.astype(jnp.float32), lora_b.astype(jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
  return w + lora_scale * delta.T


def requantize_like(w: jax.Array, state: QuantState, packed: jax.Array,
                    outliers: OutlierColumns | None = None):
  """Quantizes ``w`` with the same format, block size, nesting, storage, K order (and kept
  columns)."""
  w = w.astype(state.dtype)
  opts: dict[str, Any] = dict(quant_type=state.quant_type, blocksize=state.blocksize,
                              compress_statistics=state.nested, quant_storage=packed.dtype)
  kept = None
  if outliers is not None:
    kept = OutlierColumns(index=outliers.index,
                          values=w[:, outliers.index].astype(outliers.values.dtype))
    w = w.at[:, outliers.index].set(jnp.zeros((), w.dtype))
  new_packed, new_state = quantize_4bit(w, **opts)
  if state.layout != "bnb":
    new_packed, new_state = repack_4bit(new_packed, new_state, layout=state.layout)
  return new_packed, new_state, kept
