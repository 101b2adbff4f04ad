"""Calibration-free block scales: an HQQ-style robust fit of each block's absmax.

HQQ (Badri & Shaji 2023, "Half-Quadratic Quantization of Large Machine
Learning Models", mobiusml.github.io/hqq_blog) fits the quantization
parameters to the weight alone by minimizing a sparsity-promoting ``l_p`` norm
(``p < 1``) of the weight error, ``sum |W - W_hat|^p``, with a half-quadratic
splitting: an auxiliary error ``E`` takes the ``l_p`` proximal step
(generalized soft thresholding) and the parameters take a closed-form least
squares step against ``W - E``, with the penalty ``beta`` growing each round.

bitsandbytes stores one float32 absmax per block and no zero point, so here the
only parameter is the block's scale ``s`` (decode ``code[n] * s``). Each round:
nibbles by bnb's own encoder at scale ``s``; ``E = shrink_p(W - W_hat, beta)``;
``s = <W - E, c> / <c, c>`` per block (``c``: the decoded code values); the best
``s`` seen per block (by the ``l_p`` error, plain absmax included) is kept, so
the result never has a larger ``l_p`` error than round-to-nearest.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxfp4._src import codec
from jaxfp4._src import formats
from jaxfp4._src import packing
from jaxfp4._src.gptq import _decoded_absmax, _pack, check_weight, make_state
from jaxfp4._src.state import QuantState


def _blocks(w: jax.Array, blocksize: int) -> jax.Array:
  n = math.prod(w.shape)
  nb = -(-n // blocksize)
  return jnp.pad(w.reshape(-1).astype(jnp.float32), (0, nb * blocksize - n)).reshape(nb, blocksize)


_blocks_jit = jax.jit(_blocks, static_argnames=("blocksize",))


def shrink_lp(x: jax.Array, beta: jax.Array, p: float) -> jax.Array:
  """Generalized soft thresholding, the ``l_p`` proximal step HQQ uses:
  ``sign(x) * relu(|x| - |x|^(p-1) / beta)``."""
  ax = jnp.abs(x)
  return jnp.sign(x) * jax.nn.relu(ax - jnp.power(jnp.maximum(ax, 1e-30), p - 1.0) / beta)


def lp_error(blocks, scale, *, quant_type, p) -> jax.Array:
  """``sum |w - code[n] s|^p`` per block, ``n`` from bitsandbytes' encoder at absmax ``s``."""
  c = codec.codec_for(quant_type)
  lut = jnp.asarray(formats.get_format(quant_type).decode_lut, jnp.float32)
  _, mult = c.scale(scale, codec.default_reciprocal)
  wq = jnp.take(lut, c.encode(blocks, mult[:, None])) * scale[:, None]
  return jnp.sum(jnp.power(jnp.abs(blocks - wq) + 1e-30, p), axis=1)


@functools.partial(jax.jit, static_argnames=("quant_type", "p", "iters"))
def fit_scales(blocks, *, quant_type, p, iters, beta0, kappa):
  """The HQQ-style loop over ``[blocks, blocksize]``; returns the best scale per block."""
  c = codec.codec_for(quant_type)
  lut = jnp.asarray(formats.get_format(quant_type).decode_lut, jnp.float32)
  amax = c.amax([blocks])
  err0 = lp_error(blocks, amax, quant_type=quant_type, p=p)

  def step(_, carry):
    s, best_s, best_e, beta = carry
    _, mult = c.scale(s, codec.default_reciprocal)
    code_vals = jnp.take(lut, c.encode(blocks, mult[:, None]))
    e = shrink_lp(blocks - code_vals * s[:, None], beta, p)
    target = blocks - e
    num = jnp.sum(target * code_vals, axis=1)
    den = jnp.sum(code_vals * code_vals, axis=1)
    s_new = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), s)
    # A scale is an absmax: positive, and never far below the block's spread.
    s_new = jnp.clip(s_new, 0.25 * amax, 2.0 * amax)
    err = lp_error(blocks, s_new, quant_type=quant_type, p=p)
    better = err < best_e
    return s_new, jnp.where(better, s_new, best_s), jnp.where(better, err, best_e), beta * kappa

  init = (amax, amax, err0, jnp.float32(beta0))
  _, best, _, _ = jax.lax.fori_loop(0, iters, step, init)
  return jnp.where(amax > 0, best, amax)


def quantize_4bit_hqq(
    w: jax.typing.ArrayLike,
    *,
    quant_type: str = "nf4",
    blocksize: int | None = None,
    compress_statistics: bool = False,
    p: float = 0.7,
    iters: int = 20,
    beta: float = 10.0,
    kappa: float = 1.01,
    quant_storage: jax.typing.DTypeLike = jnp.uint8,
) -> tuple[jax.Array, QuantState]:
  """Quantizes ``w`` to bitsandbytes bytes with each block's absmax fitted by an HQQ-style solver.

  Needs no calibration data. The fitted absmax minimizes (over the iterates,
  plain absmax included) ``sum |w - w_hat|^p`` of each block.

  Args:
    w: a 2-D weight (any layout: blocks run along the flattened row-major array).
    quant_type: ``"nf4"``, ``"fp4"`` or ``"e2m1"``.
    blocksize: elements per block (None: 64).
    compress_statistics: double-quantize the fitted absmax (nibbles are then
      chosen against the decoded absmax).
    p: the norm's exponent, in (0, 1] (HQQ's default 0.7).
    iters: solver rounds; beta, kappa: initial penalty and its growth per round.
    quant_storage: dtype the packed bytes are viewed as.

  Returns:
    ``(packed, state)`` as :func:`jaxfp4.quantize_4bit` returns them.

  Example:
    >>> import jax, jaxfp4
    >>> w = jax.random.t(jax.random.key(0), 3.0, (32, 128))
    >>> packed, state = jaxfp4.quantize_4bit_hqq(w, quant_type="nf4")
    >>> jaxfp4.dequantize_4bit(packed, state).shape
    (32, 128)
  """
  w, bs = check_weight(w, quant_type, blocksize)
  if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
    raise ValueError(f"`p` must be a float in (0, 1] (the robust norm's exponent), got {p!r}.")
  if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
    raise ValueError(f"`iters` must be an int >= 0, got {iters!r}.")
  for name, v, lo in (("beta", beta, 0.0), ("kappa", kappa, 1.0)):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > lo:
      raise ValueError(f"`{name}` must be a float > {lo:g}, got {v!r}.")
  if compress_statistics not in (True, False):
    raise ValueError(f"`compress_statistics` must be True or False, got {compress_statistics!r}.")
  storage = packing.storage_dtype(quant_storage)
  blocks = _blocks_jit(w, blocksize=bs)
  scale = fit_scales(blocks, quant_type=quant_type, p=float(p), iters=iters, beta0=float(beta), kappa=float(kappa))
  absmax_eff, stored, offset, absmax2 = _decoded_absmax(scale, compress_statistics=compress_statistics)
  packed = _pack(w, absmax_eff, quant_type=quant_type, blocksize=bs)
  state = make_state(w, stored, offset, absmax2, quant_type=quant_type, blocksize=bs)
  return packing.to_storage(packed, storage), state
