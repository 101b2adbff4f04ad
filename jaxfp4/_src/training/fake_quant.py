"""``fake_quantize``: 4-bit quantize-dequantize with a chosen backward pass.

Quantization-aware training keeps high-precision master weights and runs the
forward pass on their 4-bit image. The forward here is the library's own
quantizer (``quantize_4bit`` then ``dequantize_4bit``), so a model trained with
it sees exactly the values a later ``quantize_4bit`` export stores. Blocks run
along one axis of the tensor (the reduction axis of the matmul the tensor feeds,
as MX/NVFP4 GEMMs require; shared/docs/fp4_training.md §1.2-1.3), and a row
whose length is not a multiple of the blocksize is zero-padded, so no block
straddles two rows. Zeros do not change a block's max |x| or NVFP4's tensor max.

The backward pass is either the straight-through estimator (identity) or the
Differentiable Gradient Estimator of Wang et al. 2025 (arXiv 2501.17116 §3.1,
Eq. 7-8, App. C; fp4_training.md §2a).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxfp4._src import formats
from jaxfp4._src import quantize as quantize_lib
from jaxfp4._src import rounding as rounding_lib

ESTIMATORS = ("ste", "dge")


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static options, hashable so that they can be a ``custom_vjp`` nondiff arg."""

  quant_type: str
  blocksize: int
  axis: int  # non-negative
  rounding: str
  estimator: str
  dge_k: float
  dge_cap: float


def dge_grid(quant_type: str) -> tuple[np.ndarray, bool]:
  """``(sorted float32 grid, signed?)`` on which the DGE intervals are taken.

  Sign-magnitude codes (bitsandbytes fp4, E2M1) are symmetric, so the grid is
  their 8 non-negative magnitudes and the derivative is evaluated at ``|u|``.
  NF4 is not symmetric (7 negative, 8 positive values; QLoRA §3), so it uses
  its 16 signed values and ``u`` itself.
  """
  fmt = formats.get_format(quant_type)
  if fmt.name == "nf4":
    return np.sort(formats.NF4_CODE), True
  if fmt.name == "fp4":
    return np.sort(formats.FP4_CODE[:8]), False
  return formats.E2M1_VALUES[:8].copy(), False  # 0, .5, 1, 1.5, 2, 3, 4, 6


def dge_derivative(u: jax.Array, *, quant_type: str, k: float = 5.0,
                   cap: float = 3.0) -> jax.Array:
  """DGE slope ``f'(u)`` at scaled values ``u`` (code units), float32.

  Wang et al. 2025 Eq. 8: inside the quantization interval ``[c_i, c_{i+1}]``
  of width ``delta``, ``f'(u) = (1/k) |2 (u - c_i) / delta - 1|^(1/k - 1)``,
  capped at ``cap`` (App. C.3; the paper uses k = 5 and cap 3.0). The slope is
  1/k at every code point and grows to the cap at the interval's midpoint. For
  the E2M1 grid the widths are 0.5 on [0, 2), 1 on [2, 4) and 2 on [4, 6]: the
  intervals of MS-AMP's ``differentiable_quantize_derivative``
  (Azure/MS-AMP ``msamp/operators/fp4_quantize/quantize.cu``).

  Values outside the grid (MXFP4's power-of-two scale leaves u in (6, 8), which
  saturates to 6; NVFP4's E4M3-rounded scale lets u reach 6.375) are clamped to
  the end code, so they get the end point's slope 1/k. (MS-AMP returns 0 there, but its scale maps
  the max exactly to 6, so it never reaches that branch for finite inputs.)

  Args:
    u: scaled values: x / absmax for nf4/fp4, x / block scale in E2M1 units
      ([-6, 6]) for e2m1, mxfp4 and nvfp4.
    quant_type: one of ``jaxfp4.QUANT_TYPES``.
    k: the estimator's sharpness, > 0.
    cap: the largest slope returned, > 0.

  Returns:
    float32 array of ``u``'s shape.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxfp4._src.training.fake_quant import dge_derivative
    >>> dge_derivative(jnp.array([0.0, 0.25, 5.0]), quant_type="e2m1").tolist()
    [0.20000000298023224, 3.0, 3.0]
  """
  grid, signed = dge_grid(quant_type)
  u = jnp.asarray(u, jnp.float32)
  v = u if signed else jnp.abs(u)
  v = jnp.clip(v, float(grid[0]), float(grid[-1]))
  # index i of the interval [c_i, c_{i+1}] holding v: #{interior codes <= v}
  inner = jnp.asarray(grid[1:-1]).reshape((1,) * v.ndim + (-1,))
  i = jnp.sum(v[..., None] >= inner, axis=-1)
  lo = jnp.asarray(grid[:-1])[i]
  delta = jnp.asarray(np.diff(grid))[i]
  t = jnp.abs(2.0 * (v - lo) / delta - 1.0)
  # t = 0 (a midpoint) gives 0**negative = inf, which the cap turns into cap.
  return jnp.minimum((1.0 / k) * jnp.power(t, 1.0 / k - 1.0), cap)


def _to_rows(x: jax.Array, axis: int, blocksize: int) -> jax.Array:
  """``x`` with ``axis`` moved last and zero-padded to a multiple of ``blocksize``."""
  rows = jnp.moveaxis(x, axis, -1)
  pad = -rows.shape[-1] % blocksize
  if pad:
    rows = jnp.pad(rows, [(0, 0)] * (rows.ndim - 1) + [(0, pad)])
  return rows


def _from_rows(rows: jax.Array, axis: int, length: int) -> jax.Array:
  return jnp.moveaxis(rows[..., :length], -1, axis)


def _forward(x: jax.Array, key: jax.Array | None, cfg: _Config):
  rows = _to_rows(x, cfg.axis, cfg.blocksize)
  packed, state = quantize_lib.quantize_4bit(
      rows, blocksize=cfg.blocksize, quant_type=cfg.quant_type, rounding=cfg.rounding,
      key=key)
  y = quantize_lib.dequantize_4bit(packed, state)
  return _from_rows(y, cfg.axis, x.shape[cfg.axis]), state


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fake_quant(x: jax.Array, key: jax.Array | None, cfg: _Config) -> jax.Array:
  return _forward(x, key, cfg)[0]


def _fake_quant_fwd(x, key, cfg: _Config):
  y, state = _forward(x, key, cfg)
  if cfg.estimator == "ste":
    return y, None
  # x (the caller usually holds it anyway) and one float32 per block: the
  # scaled values are rebuilt in the backward instead of stored.
  return y, (x, quantize_lib.block_scales(state))


def _fake_quant_bwd(cfg: _Config, res, g):
  if cfg.estimator == "ste":
    return g, None
  x, scales = res
  rows = _to_rows(x, cfg.axis, cfg.blocksize).astype(jnp.float32)
  blocks = rows.reshape(-1, cfg.blocksize)
  s = scales[:, None]
  # Wang et al. 2025 Eq. 6 / App. C.2: the block scale cancels in the chain
  # rule, so f' is evaluated on the scaled value u = x / scale. A zero scale
  # (all-zero block, or an NVFP4 scale that underflowed) decodes every element
  # to 0, the code point 0: u = 0 there.
  u = jnp.where(s == 0, 0.0, blocks / jnp.where(s == 0, 1.0, s))
  slope = dge_derivative(u, quant_type=cfg.quant_type, k=cfg.dge_k, cap=cfg.dge_cap)
  slope = _from_rows(slope.reshape(rows.shape), cfg.axis, x.shape[cfg.axis])
  return (g.astype(jnp.float32) * slope).astype(g.dtype), None


_fake_quant.defvjp(_fake_quant_fwd, _fake_quant_bwd)
# One compiled program per (shape, dtype, options): called eagerly, the quantizer
# would dispatch (and compile) op by op, measured 2.2 s against 0.13 s on the CPU
# for a new shape. Inside a caller's jit this is inlined.
_fake_quant_jit = jax.jit(_fake_quant, static_argnums=(2,))


def _positive_number(name: str, value: Any) -> float:
  ok = (isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_)))
  if not ok or not math.isfinite(float(value)) or float(value) <= 0:
    raise ValueError(f"`{name}` must be a finite Python number > 0, got {value!r}.")
  return float(value)


def fake_quantize(
    x: jax.typing.ArrayLike,
    *,
    quant_type: str = "e2m1",
    blocksize: int | None = None,
    axis: int = -1,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    estimator: str = "ste",
    dge_k: float = 5.0,
    dge_cap: float = 3.0,
) -> jax.Array:
  """Quantizes ``x`` to 4 bits and back, with a straight-through or DGE gradient.

  Args:
    x: float32, bfloat16 or float16 array with at least one dimension.
    quant_type: one of ``jaxfp4.QUANT_TYPES``.
    blocksize: elements per block along ``axis``; None: the format's default
      (64 for nf4/fp4/e2m1, 32 for mxfp4, 16 for nvfp4).
    axis: the axis the blocks run along (the matmul's reduction axis).
    rounding: ``"nearest"`` or ``"stochastic"`` (unbiased, needs ``key``).
    key: PRNG key for ``rounding="stochastic"``; must be None for nearest.
    estimator: ``"ste"`` (the gradient passes unchanged) or ``"dge"`` (Wang et
      al. 2025's Differentiable Gradient Estimator, see :func:`dge_derivative`).
    dge_k: DGE sharpness k (the paper's 5; it ablates 3, 5, 10).
    dge_cap: DGE slope cap (the paper's 3.0).

  Returns:
    Array of ``x``'s shape and dtype holding the dequantized values.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxfp4._src.training.fake_quant import fake_quantize
    >>> x = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    >>> y = fake_quantize(x, quant_type="nvfp4", axis=0)
    >>> y.shape, y.dtype
    ((3, 4), dtype('float32'))
    >>> g = jax.grad(lambda w: fake_quantize(w, estimator="dge").sum())(x)
    >>> bool(((g >= 0.2 - 1e-6) & (g <= 3.0)).all())
    True
  """
  fmt = formats.get_format(quant_type)
  bs = formats.resolve_blocksize(fmt, blocksize)
  quantize_lib._check_choice("rounding", rounding, rounding_lib.ROUNDINGS)
  quantize_lib._check_choice("estimator", estimator, ESTIMATORS)
  k = _positive_number("dge_k", dge_k)
  cap = _positive_number("dge_cap", dge_cap)
  if rounding == "stochastic" and key is None:
    raise ValueError("`rounding='stochastic'` needs a PRNG `key`.")
  if rounding == "stochastic":
    rounding_lib.check_key(key)
  if rounding == "nearest" and key is not None:
    raise ValueError("`key` is only for rounding='stochastic'; pass key=None with "
                     "rounding='nearest'.")
  if not (isinstance(x, (np.ndarray, jax.Array)) or hasattr(x, "__jax_array__")):
    x = jnp.asarray(x)
  x = cast(jax.Array, x)  # an array or an object with __jax_array__ (it has a dtype)
  if jnp.dtype(x.dtype).name not in formats.INPUT_DTYPES:
    raise ValueError(f"`x` must have a dtype in {formats.INPUT_DTYPES}, got "
                     f"{jnp.dtype(x.dtype).name}.")
  x = jnp.asarray(x)
  if x.ndim == 0:
    raise ValueError("`x` must have at least one dimension (blocks run along `axis`), "
                     "got a scalar.")
  if (isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer))
      or not -x.ndim <= axis < x.ndim):
    raise ValueError(f"`axis` must be an int in [{-x.ndim}, {x.ndim}) for x.ndim="
                     f"{x.ndim}, got {axis!r}.")
  cfg = _Config(quant_type=fmt.name, blocksize=bs, axis=int(axis) % x.ndim,
                rounding=rounding, estimator=estimator, dge_k=k, dge_cap=cap)
  return _fake_quant_jit(x, key, cfg)
