"""Candidate formats for one linear layer: how to store it, what it costs, what it decodes to.

A candidate is a spec string: a base format, optionally with modifiers joined
by ``+``:

* bases ``nf4``, ``fp4``, ``e2m1`` (float32 absmax per block), ``mxfp4``,
  ``nvfp4`` (native blocks of 32 / 16), ``bf16`` (the weight rounded to
  bfloat16), ``fp32`` (left as it is);
* ``+dq``: double-quantized absmax (bitsandbytes' ``compress_statistics``);
* ``+outliers``: 1% of the input columns (at least one) kept in bf16, ranked by
  ``||W[:, c]|| * rms(x_c)`` on the calibration inputs (AWQ's saliency);
* ``+clip``: absmax scaled per output row by the ratio that minimizes the
  layer's output error (``clipping.search_clip``).

Bits per weight are measured from the bytes actually stored (packed nibbles,
the QuantState's arrays, kept columns and their indices), bias excluded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxfp4._src.calibration import clipping
from jaxfp4._src.flax.nnx_dense import Dense4bit
from jaxfp4._src.outlier_columns import OutlierColumns, dequantize_4bit_with_outliers, select_outlier_columns
from jaxfp4._src.quantize import dequantize_4bit, quantize_4bit

BASES = ("nf4", "fp4", "e2m1", "mxfp4", "nvfp4", "bf16", "fp32")
MODIFIERS = ("dq", "outliers", "clip")
NATIVE_BLOCKSIZE = {"mxfp4": 32, "nvfp4": 16}
DEFAULT_CANDIDATES = ("nf4", "nf4+dq", "fp4", "e2m1", "mxfp4", "nvfp4", "nf4+outliers", "bf16")
OUTLIER_FRACTION = 0.01
# Jitted once per shape and format: eager decoding would compile every primitive separately.
_decode = jax.jit(dequantize_4bit)
_decode_with_outliers = jax.jit(dequantize_4bit_with_outliers)


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A parsed candidate spec with its block size (None for bf16/fp32)."""

  base: str
  blocksize: int | None
  dq: bool = False
  outliers: bool = False
  clip: bool = False

  @property
  def spec(self) -> str:
    return "+".join([self.base] + [m for m in MODIFIERS if getattr(self, m)])

  @property
  def key(self) -> str:
    """The name in reports and plans: ``spec@blocksize`` for choosable block sizes."""
    if self.blocksize is None or self.base in NATIVE_BLOCKSIZE:
      return self.spec
    return f"{self.spec}@{self.blocksize}"

  @property
  def quantized(self) -> bool:
    return self.base not in ("bf16", "fp32")


def parse(spec: str, blocksize: int | None = 64) -> Candidate:
  """Parses ``"nf4+dq"``, ``"nf4+clip@128"`` ...; raises a ValueError naming the allowed parts."""
  if not isinstance(spec, str) or not spec:
    raise ValueError(f"a candidate must be a string such as 'nf4+dq', got {spec!r}.")
  if "@" in spec:
    spec, bs = spec.split("@", 1)
    if not bs.isdigit():
      raise ValueError(f"candidate block size must be an int after '@', got {bs!r}.")
    blocksize = int(bs)
  base, *mods = spec.split("+")
  if base not in BASES:
    raise ValueError(f"`formats`: candidate base must be one of {BASES}, got {base!r} in {spec!r}.")
  bad = [m for m in mods if m not in MODIFIERS]
  if bad or len(set(mods)) != len(mods):
    raise ValueError(f"`formats`: candidate modifiers must be distinct ones of {MODIFIERS}, got {mods} in {spec!r}.")
  if mods and base in ("bf16", "fp32"):
    raise ValueError(f"`formats`: {base} takes no modifiers, got {spec!r}.")
  if base in NATIVE_BLOCKSIZE and ({"dq", "clip"} & set(mods)):
    raise ValueError(f"`formats`: {base} has 8-bit block scales; '+dq' and '+clip' apply to nf4, fp4 and e2m1 "
                     f"only, got {spec!r}.")
  if base in ("bf16", "fp32"):
    blocksize = None
  elif base in NATIVE_BLOCKSIZE:
    blocksize = NATIVE_BLOCKSIZE[base]
  return Candidate(base, blocksize, dq="dq" in mods, outliers="outliers" in mods, clip="clip" in mods)


def outlier_count(in_features: int) -> int:
  return min(in_features - 1, max(1, round(OUTLIER_FRACTION * in_features)))


@dataclasses.dataclass(frozen=True)
class Stored:
  """A layer stored in one candidate: its 4-bit parts (if any) and its decoded kernel."""

  kernel_hat: jax.Array  # float32 [in, out]
  nbytes: int
  packed: jax.Array | None = None
  state: Any = None
  outliers: OutlierColumns | None = None
  clip: np.ndarray | None = None


def store(cand: Candidate, kernel: jax.Array, *, input_rms: np.ndarray | None = None,
          gram: jax.Array | None = None, clip: np.ndarray | None = None) -> Stored:
  """Quantizes a Flax kernel ``[in, out]`` as ``cand`` would store it.

  ``input_rms`` ``[in]`` ranks outlier columns; ``gram`` ``[in, in]`` drives the
  clipping search, or ``clip`` ``[out]`` gives the ratios found before.
  """
  kernel = jnp.asarray(kernel)
  w = kernel.T  # bitsandbytes' W[out, in]
  if cand.base == "fp32":
    return Stored(kernel.astype(jnp.float32), int(kernel.size * kernel.dtype.itemsize))
  if cand.base == "bf16":
    return Stored(kernel.astype(jnp.bfloat16).astype(jnp.float32), int(kernel.size * 2))
  opts: dict[str, Any] = dict(quant_type=cand.base, blocksize=cand.blocksize, compress_statistics=cand.dq)
  cols = None
  if cand.outliers:
    index = select_outlier_columns(
        w, num_columns=outlier_count(w.shape[1]),
        # A single row whose rms per column is the calibration rms: the ranking
        # select_outlier_columns computes from all the recorded inputs.
        activations=None if input_rms is None else jnp.asarray(input_rms, jnp.float32)[None])
    cols = OutlierColumns(index=index, values=w[:, index].astype(jnp.bfloat16))
    w = w.at[:, index].set(jnp.zeros((), w.dtype))
  if cand.clip:
    if clip is None:
      if gram is None:
        raise ValueError(f"candidate {cand.spec!r} needs calibration data (a Gram matrix) or saved clip ratios.")
      clip = clipping.search_clip(w, gram, **opts)
    packed, state = clipping.quantize_rows_clipped(w, clip, **opts)
  else:
    packed, state = quantize_4bit(w, **opts)
  w_hat = _decode(packed, state) if cols is None else _decode_with_outliers(packed, state, cols)
  nbytes = int(packed.size * packed.dtype.itemsize) + state.nbytes() + (0 if cols is None else cols.nbytes())
  return Stored(w_hat.T.astype(jnp.float32), nbytes, packed, state, cols,
                None if clip is None else np.asarray(clip, np.float32))


def module_for(linear: nnx.Linear, stored: Stored) -> nnx.Module | None:
  """The layer that replaces ``linear`` (None: keep it as it is)."""
  if stored.packed is not None:
    bias = None if linear.bias is None else linear.bias.get_value()
    kernel = linear.kernel.get_value()
    quantized = (stored.packed, stored.state) if stored.outliers is None else (
        stored.packed, stored.state, stored.outliers)
    return Dense4bit(linear.in_features, linear.out_features, use_bias=bias is not None,
                     dtype=linear.dtype, param_dtype=kernel.dtype, bias_init=lambda *_: bias,
                     quantized=quantized, rngs=nnx.Rngs(0))
  kernel = linear.kernel.get_value()
  if stored.nbytes == kernel.size * kernel.dtype.itemsize:
    return None  # fp32 (or an already bf16 kernel): unchanged
  # bf16 storage, computed in the layer's former dtype: the kernel is upcast per call.
  new = nnx.Linear(linear.in_features, linear.out_features, use_bias=linear.bias is not None,
                   dtype=linear.dtype or kernel.dtype, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  new.kernel.set_value(kernel.astype(jnp.bfloat16))
  if linear.bias is not None and new.bias is not None:
    new.bias.set_value(linear.bias.get_value())
  return new
