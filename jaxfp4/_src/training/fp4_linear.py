"""FP4 training GEMMs: ``y = x @ W`` with the forward and backward GEMMs on FP4 operands.

Four named recipes, each from its paper (fp4_training.md §2a, §2b):

- ``"nvfp4"``: NVIDIA, "Pretraining LLMs with NVFP4" (arXiv 2509.25149, §4). Every
  GEMM has NVFP4 operands: E2M1 values, E4M3 scales per 16 elements plus an FP32
  tensor scale. Weights use 2D 16×16 blocks, so the forward and the input
  gradient see the same quantized weight. Activations and gradients use 1×16
  blocks along the GEMM's reduction axis. Gradients are rounded stochastically.
  The weight-gradient GEMM's inputs pass through a 16-point random Hadamard
  transform, with one fixed sign vector for the whole run. Stochastic rounding
  scales the block by 15/16 after its scale is chosen (and back after). A
  nearest-rounded E4M3 scale can put the block maximum up to 6·(1 + 2⁻⁴), which
  E2M1 would clip, biasing the estimate.
- ``"mxfp4"``: the MXFP4 setup the same paper compares against (§5): the same
  GEMMs with OCP MXFP4 (E8M0 scales per 32) and a 32-point RHT. Stochastic
  rounding scales the operand by 3/4 first and by 4/3 after, so the E8M0 block
  maximum cannot clip and the estimate stays unbiased (Tseng et al. 2025,
  arXiv 2502.20586, "dither_scale").
- ``"dge"``: Wang et al. 2025 (arXiv 2501.17116). Only the forward GEMM is FP4:
  activations are E2M1 per token, after outlier clamping at the 0.99 quantile,
  with the clamped residual added back in high precision. Weights are E2M1 per
  output channel. The weight gradient is scaled by the DGE slope (k = 5, capped
  at 3). The backward GEMMs stay in the compute dtype; the paper ran them in FP8.
- ``"ste"``: the baseline Wang et al. compare DGE and OCC against (their Fig. 1
  and ablations: FP4 cast directly, gradients straight through): the same FP4
  forward as ``"dge"`` (E2M1 per token and per output channel) without outlier
  clamping, and a plain straight-through estimator. The backward GEMMs stay in
  the compute dtype.

The quantizers are simulated (quantize, then dequantize, then a float32-accumulated
dot), as in the papers' own code; no FP4 tensor cores are used.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxfp4._src import rounding as rounding_lib
from jaxfp4._src.training.fake_quant import dge_derivative, fake_quantize
from jaxfp4._src.training.hadamard import random_hadamard_transform
from jaxfp4._src.training.outliers import clamp_outliers

_E2M1_MAX = 6.0
_E4M3_MAX = 448.0


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How each GEMM of an FP4 linear layer is quantized."""

  name: str
  fmt: str                  # element/scale format of the quantized operands
  forward: bool             # quantize the forward GEMM's operands
  backward: bool            # quantize both backward GEMMs' operands
  weight_tile: int          # 2D weight blocks (tile × tile), 0 for 1D blocks
  per_channel: bool         # one scale per token / output channel (a block spanning K)
  rht: int                  # RHT block on the weight-gradient inputs, 0 for none
  rht_seed: int             # the fixed sign vector's seed
  stochastic_grads: bool    # stochastic rounding on gradients
  sr_prescale: float        # scale before stochastic rounding (undone after)
  dge: bool                 # DGE slope on the weight gradient
  outlier_quantile: float | None  # OCC on the forward activations
  source: str


RECIPES: dict[str, Recipe] = {
    "nvfp4": Recipe("nvfp4", "nvfp4", forward=True, backward=True, weight_tile=16, per_channel=False, rht=16,
                    rht_seed=0, stochastic_grads=True, sr_prescale=0.9375, dge=False, outlier_quantile=None,
                    source="NVIDIA, arXiv 2509.25149 §4"),
    "mxfp4": Recipe("mxfp4", "mxfp4", forward=True, backward=True, weight_tile=0, per_channel=False, rht=32,
                    rht_seed=0, stochastic_grads=True, sr_prescale=0.75, dge=False, outlier_quantile=None,
                    source="NVIDIA, arXiv 2509.25149 §5; Tseng et al., arXiv 2502.20586"),
    "dge": Recipe("dge", "e2m1", forward=True, backward=False, weight_tile=0, per_channel=True, rht=0,
                  rht_seed=0, stochastic_grads=False, sr_prescale=1.0, dge=True, outlier_quantile=0.99,
                  source="Wang et al., arXiv 2501.17116 §3"),
    "ste": Recipe("ste", "e2m1", forward=True, backward=False, weight_tile=0, per_channel=True, rht=0,
                  rht_seed=0, stochastic_grads=False, sr_prescale=1.0, dge=False, outlier_quantile=None,
                  source="Wang et al., arXiv 2501.17116 (direct-cast STE baseline)"),
}


def get_recipe(recipe: str | Recipe) -> Recipe:
  if isinstance(recipe, Recipe):
    return recipe
  if recipe not in RECIPES:
    raise ValueError(f"`recipe` must be one of {tuple(RECIPES)} or a Recipe, got {recipe!r}.")
  return RECIPES[recipe]


def nvfp4_2d(w: jax.Array, tile: int = 16) -> jax.Array:
  """NVFP4 quantize-dequantize of ``w`` with one E4M3 scale per ``tile × tile`` block.

  Scales follow arXiv 2509.25149 §2: a float32 tensor scale
  ``amax / (6 · 448)`` and per-block E4M3 scales ``amax_block / 6`` relative to
  it; values round to nearest even on the E2M1 grid.
  """
  k, n = w.shape
  pk, pn = -k % tile, -n % tile
  w32 = jnp.pad(w.astype(jnp.float32), ((0, pk), (0, pn)))
  tiles = w32.reshape((k + pk) // tile, tile, (n + pn) // tile, tile)
  amax_t = jnp.max(jnp.abs(w32))
  glob = amax_t / (_E2M1_MAX * _E4M3_MAX)
  amax_b = jnp.max(jnp.abs(tiles), axis=(1, 3), keepdims=True)
  safe_glob = jnp.where(glob > 0, glob, 1.0)
  block = jnp.clip(amax_b / _E2M1_MAX / safe_glob, 0.0, _E4M3_MAX)
  scale = block.astype(jnp.float8_e4m3fn).astype(jnp.float32) * glob
  safe = jnp.where(scale > 0, scale, 1.0)
  q = jnp.clip(tiles / safe, -_E2M1_MAX, _E2M1_MAX).astype(jnp.float4_e2m1fn).astype(jnp.float32)
  out = jnp.where(scale > 0, q * scale, 0.0).reshape(k + pk, n + pn)[:k, :n]
  return out.astype(w.dtype)


def _block_scales(a: jax.Array, fmt: str) -> jax.Array:
  """Decode scales of blocks (rows of ``a``): NVFP4 E4M3 over an FP32 tensor scale, or MX E8M0."""
  amax = jnp.max(jnp.abs(a), axis=-1, keepdims=True)
  if fmt == "nvfp4":
    glob = jnp.max(amax) / (_E2M1_MAX * _E4M3_MAX)
    block = jnp.clip(amax / _E2M1_MAX / jnp.where(glob > 0, glob, 1.0), 0.0, _E4M3_MAX)
    return block.astype(jnp.float8_e4m3fn).astype(jnp.float32) * glob
  # OCP MX v1.0 §6.3: shared exponent floor(log2(amax)) - emax(E2M1) = - 2
  e = jnp.floor(jnp.log2(jnp.where(amax > 0, amax, 1.0))) - 2.0
  return jnp.where(amax > 0, jnp.exp2(e), 0.0)


def _stochastic(v: jax.Array, r: Recipe, axis: int, key) -> jax.Array:
  """Unbiased stochastic rounding of ``v`` to ``r.fmt`` in 1D blocks along ``axis``.

  The block scale comes from the unscaled block, then the values are scaled by
  ``r.sr_prescale`` so the block maximum cannot exceed 6 and clip: 15/16 for
  NVFP4 (nearest E4M3 scales allow up to 6·(1 + 2⁻⁴)), 3/4 for MXFP4 (E8M0
  scales put the maximum in [4, 8); Tseng et al.'s "dither_scale").
  """
  bs = 16 if r.fmt == "nvfp4" else 32
  a = jnp.moveaxis(v.astype(jnp.float32), axis, -1)
  shape = a.shape
  pad = -shape[-1] % bs
  a = jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)]).reshape(-1, bs)
  scale = _block_scales(a, r.fmt)
  u = jnp.abs(a) * jnp.where(scale > 0, r.sr_prescale / jnp.where(scale > 0, scale, 1.0), 0.0)
  grid = jnp.asarray([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], jnp.float32)
  u = jnp.minimum(u, _E2M1_MAX)
  i = jnp.clip(jnp.sum(u[..., None] >= grid[None, None, :], axis=-1) - 1, 0, 6)
  lo, hi = grid[i], grid[i + 1]
  up = jax.random.uniform(key, u.shape) < (u - lo) / (hi - lo)
  q = jnp.where(up, hi, lo) * jnp.sign(a) * (scale / r.sr_prescale)
  q = q.reshape(*shape[:-1], shape[-1] + pad)[..., :shape[-1]]
  return jnp.moveaxis(q, -1, axis).astype(v.dtype)


def _quantize(v, r: Recipe, axis: int, key=None):
  """1D blocks along ``axis``: round to nearest, or stochastic when ``key`` is given."""
  if key is None:
    return fake_quantize(v, quant_type=r.fmt, axis=axis)
  return _stochastic(v, r, axis, key)


def _pow2_at_least(n: int) -> int:
  return max(32, 1 << (n - 1).bit_length())


def _quantize_weight(w, r: Recipe):
  if r.weight_tile:
    return nvfp4_2d(w, r.weight_tile)
  if r.per_channel:  # per output channel: one block spanning K (Wang et al. §2.2)
    return fake_quantize(w, quant_type=r.fmt, axis=0, blocksize=_pow2_at_least(w.shape[0]))
  return fake_quantize(w, quant_type=r.fmt, axis=0)


def _dot(a, b):
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def _rht_rows(v, r: Recipe, key):
  """RHT along the token axis (the weight-gradient GEMM's reduction axis), zero-padded."""
  pad = -v.shape[0] % r.rht
  v = jnp.pad(v, ((0, pad), (0, 0)))
  return random_hadamard_transform(v, key=key, block_size=r.rht, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fp4_matmul(x, w, key, r: Recipe):
  return _forward(x, w, key, r)[0]


def _forward(x, w, key, r: Recipe):
  resid = None
  if r.outlier_quantile is not None:
    x_c, resid = clamp_outliers(x, quantile=r.outlier_quantile, axis=-1)
  else:
    x_c = x
  if r.forward:
    xq = (fake_quantize(x_c, quant_type=r.fmt, axis=-1, blocksize=_pow2_at_least(x.shape[-1]))
          if r.per_channel else _quantize(x_c, r, axis=-1))
    wq = _quantize_weight(w, r)
  else:
    xq, wq = x_c, w
  y = _dot(xq, wq)
  if resid is not None:  # OCC: the clamped-off part, in float32
    y = y + _dot(resid, wq.astype(jnp.float32))
    xq = (xq.astype(jnp.float32) + resid).astype(x.dtype)
  return y.astype(x.dtype), (x, w, xq, wq, key)


def _fwd(x, w, key, r: Recipe):
  return _forward(x, w, key, r)


def _bwd(r: Recipe, res, g):
  x, w, xq, wq, key = res
  g = g.astype(x.dtype)
  if not r.backward:
    dx = _dot(g, wq.T)
    dw = _dot(xq.T, g)
  else:
    k_dgrad, k_wgrad = jax.random.split(jax.random.wrap_key_data(key))
    g_d = _quantize(g, r, axis=-1, key=k_dgrad if r.stochastic_grads else None)
    dx = _dot(g_d, wq.T)
    x_w, g_w = x, g
    if r.rht:
      sign_key = jax.random.key(r.rht_seed)  # one fixed sign vector for the whole run
      x_w, g_w = _rht_rows(x, r, sign_key), _rht_rows(g, r, sign_key)
    x_w = _quantize(x_w, r, axis=0)
    g_w = _quantize(g_w, r, axis=0, key=k_wgrad if r.stochastic_grads else None)
    dw = _dot(x_w.T, g_w)
  if r.dge:
    # Wang et al. Eq. 6-8: scale cancels, the slope is taken at the scaled weight.
    amax = jnp.max(jnp.abs(w.astype(jnp.float32)), axis=0, keepdims=True)
    u = w.astype(jnp.float32) * jnp.where(amax > 0, _E2M1_MAX / jnp.where(amax > 0, amax, 1.0), 0.0)
    dw = dw * dge_derivative(u, quant_type="e2m1")
  return dx.astype(x.dtype), dw.astype(w.dtype), None


_fp4_matmul.defvjp(_fwd, _bwd)


def fp4_matmul(
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    *,
    recipe: str | Recipe = "nvfp4",
    key: jax.Array | None = None,
) -> jax.Array:
  """``x @ w`` with FP4-quantized GEMM operands in the forward and backward passes.

  Args:
    x: ``[..., K]`` activations (float32, bfloat16 or float16).
    w: ``[K, N]`` weight (Flax's kernel layout), same float dtype as ``x``.
    recipe: ``"nvfp4"``, ``"mxfp4"``, ``"dge"``, ``"ste"`` or a :class:`Recipe`.
    key: PRNG key for the stochastic rounding of gradients (required by
      ``"nvfp4"`` and ``"mxfp4"``; use a fresh key per step).

  Returns:
    ``[..., N]`` in ``x.dtype``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxfp4.training import fp4_matmul
    >>> x, w = jnp.ones((32, 64)), jnp.ones((64, 16))
    >>> fp4_matmul(x, w, recipe="nvfp4", key=jax.random.key(0)).shape
    (32, 16)
  """
  r = get_recipe(recipe)
  x, w = jnp.asarray(x), jnp.asarray(w)
  if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
    raise ValueError(f"`x` [..., K] and `w` [K, N] must agree on K, got {x.shape} and {w.shape}.")
  if x.dtype != w.dtype or jnp.dtype(x.dtype).name not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"`x` and `w` must share one float dtype (float32, bfloat16, float16), got "
                     f"{x.dtype} and {w.dtype}.")
  needs_key = r.backward and r.stochastic_grads
  if needs_key and key is None:
    raise ValueError(f"recipe {r.name!r} rounds gradients stochastically: pass `key`.")
  if key is not None:
    rounding_lib.check_key(key)
  raw = jax.random.key_data(key if key is not None else jax.random.key(0))
  lead = x.shape[:-1]
  y = _fp4_matmul(x.reshape(-1, x.shape[-1]), w, raw, r)
  return y.reshape(*lead, w.shape[1])
