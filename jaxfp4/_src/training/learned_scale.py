"""Learned per-block scales for quantization-aware training (LSQ).

Learned Step Size Quantization (Esser et al. 2020, "Learned Step Size
Quantization", ICLR 2020, arXiv 1902.08153) makes the quantizer's step a
trainable parameter. Here the step is each block's absmax ``s`` of a float
absmax format (nf4, fp4, e2m1); with ``d = s * m`` the decode multiplier
(``m = 1``, or ``1/6`` for e2m1 whose absmax maps to the code value 6) and
``v = w / d``, the forward pass is bitsandbytes' own rounding,

    w_hat = d * code[encode(v)],

exactly what ``dequantize_4bit`` returns for a state whose stored absmax is
``s`` (values beyond ``s`` saturate to the code's end ``q_max``). The backward
pass is LSQ's (its Eq. 3 and 5, with the rounding's derivative taken as 1):

* ``d w_hat / d w = 1`` where ``|v| <= q_max``, else 0 (straight-through inside
  the range, nothing for clipped values);
* ``d w_hat / d s = m * (q - v)`` inside, ``m * sign(v) * q_max`` outside,
  where ``q = code[encode(v)]``.

LSQ also scales the step's gradient by ``g = 1 / sqrt(N * Q_P)`` (its §2.2;
``N`` the weights sharing a step, here the block size, ``Q_P`` the number of
positive levels) so that the step and the weights learn at matching rates;
``grad_scale="lsq"`` applies it with ``Q_P`` = the code's positive values
(8 for nf4, 7 for fp4 and e2m1), the analogue of LSQ's integer ``Q_P`` for a
non-uniform code. The learned absmax stays a valid bitsandbytes scale:
:func:`quantize_4bit_learned` stores it as one.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxfp4._src import formats
from jaxfp4._src import packing
from jaxfp4._src.calibration.clipping import CLIP_QUANT_TYPES, encode_with_absmax
from jaxfp4._src.state import NestedState, QuantState
from jaxfp4._src.codec import codec_for, default_reciprocal


def _check(quant_type: str, blocksize: int | None, w: jax.Array, scale: jax.Array | None = None) -> int:
  if quant_type not in CLIP_QUANT_TYPES:
    raise ValueError(f"`quant_type` must be one of {CLIP_QUANT_TYPES} (float absmax scales), got {quant_type!r}.")
  bs = formats.resolve_blocksize(formats.get_format(quant_type), blocksize)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise ValueError(f"`w` must be a float array, got {w.dtype}.")
  if w.size % bs:
    raise ValueError(f"`w` has {w.size} elements, not a multiple of `blocksize`={bs}.")
  if scale is not None and tuple(scale.shape) != (w.size // bs,):
    raise ValueError(f"`scale` must have shape ({w.size // bs},) (one per block of {bs}), got {tuple(scale.shape)}.")
  return bs


def _decode_multiplier(quant_type: str) -> float:
  return 1.0 / formats.E2M1_MAX if quant_type == "e2m1" else 1.0


def _q_positive(quant_type: str) -> int:
  return int(np.sum(np.asarray(formats.get_format(quant_type).decode_lut) > 0))


def init_learned_scales(w: jax.typing.ArrayLike, *, quant_type: str = "nf4", blocksize: int | None = None) -> jax.Array:
  """Each block's absmax (float32 ``[num_blocks]``): plain quantization, the usual LSQ start.

  Example:
    >>> import jax.numpy as jnp, jaxfp4.training
    >>> jaxfp4.training.init_learned_scales(jnp.ones((4, 64))).shape
    (4,)
  """
  w = jnp.asarray(w)
  bs = _check(quant_type, blocksize, w)
  return jnp.max(jnp.abs(w.reshape(-1, bs).astype(jnp.float32)), axis=1)


def _forward(w, scale, quant_type, bs):
  blocks = w.reshape(-1, bs).astype(jnp.float32)
  c = codec_for(quant_type)
  _, mult = c.scale(scale, default_reciprocal)  # as quantize_4bit_learned encodes
  nibbles = c.encode(blocks, mult[:, None])
  lut = jnp.asarray(formats.get_format(quant_type).decode_lut, jnp.float32)
  q = lut[nibbles]
  d = scale * jnp.float32(_decode_multiplier(quant_type))
  return q, d, blocks


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _lsq(w, scale, quant_type, bs, g):
  q, d, _ = _forward(w, scale, quant_type, bs)
  return (q * d[:, None]).reshape(w.shape).astype(w.dtype)


def _lsq_fwd(w, scale, quant_type, bs, g):
  q, d, blocks = _forward(w, scale, quant_type, bs)
  return (q * d[:, None]).reshape(w.shape).astype(w.dtype), (q, d, blocks, w)


def _lsq_bwd(quant_type, bs, g, res, ct):
  q, d, blocks, w = res
  m = jnp.float32(_decode_multiplier(quant_type))
  qmax = jnp.float32(max(formats.get_format(quant_type).decode_lut))
  ct = ct.reshape(q.shape).astype(jnp.float32)
  v = blocks / d[:, None]
  inside = jnp.abs(v) <= qmax
  dw = jnp.where(inside, ct, 0.0)
  ds = jnp.where(inside, q - v, jnp.sign(v) * qmax) * m
  return dw.reshape(w.shape).astype(w.dtype), jnp.sum(ct * ds, axis=1) * jnp.float32(g)


_lsq.defvjp(_lsq_fwd, _lsq_bwd)


def fake_quantize_learned(
    w: jax.Array,
    scale: jax.Array,
    *,
    quant_type: str = "nf4",
    blocksize: int | None = None,
    grad_scale: str | float | None = None,
) -> jax.Array:
  """Quantize-dequantize ``w`` with trainable per-block absmax ``scale`` (LSQ gradients).

  Blocks run over the row-major flattened ``w``, as bitsandbytes stores a
  ``W[out, in]``. See the module docstring for the gradients.

  Args:
    w: float weights, ``w.size`` a multiple of the block size.
    scale: float32 ``[w.size // blocksize]``, positive; start from
      :func:`init_learned_scales`.
    quant_type: ``"nf4"``, ``"fp4"`` or ``"e2m1"``.
    blocksize: elements per block (None: 64).
    grad_scale: None (1), ``"lsq"`` (``1 / sqrt(blocksize * Q_P)``) or a float
      multiplying the scale's gradient.

  Returns:
    ``w_hat``, shape and dtype of ``w``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxfp4.training as T
    >>> w = jax.random.normal(jax.random.key(0), (8, 64))
    >>> s = T.init_learned_scales(w)
    >>> g = jax.grad(lambda s: jnp.sum(T.fake_quantize_learned(w, s) ** 2))(s)
    >>> g.shape
    (8,)
  """
  w = jnp.asarray(w)
  scale = jnp.asarray(scale)
  bs = _check(quant_type, blocksize, w, scale)
  if scale.dtype != jnp.float32:
    raise ValueError(f"`scale` must be float32, got {scale.dtype}.")
  if grad_scale is None:
    g = 1.0
  elif grad_scale == "lsq":
    g = 1.0 / math.sqrt(bs * _q_positive(quant_type))
  elif isinstance(grad_scale, (int, float)) and not isinstance(grad_scale, bool) and grad_scale > 0:
    g = float(grad_scale)
  else:
    raise ValueError(f"`grad_scale` must be None, 'lsq' or a positive float, got {grad_scale!r}.")
  return _lsq(w, scale, quant_type, bs, g)


def quantize_4bit_learned(
    w: jax.typing.ArrayLike,
    scale: jax.typing.ArrayLike,
    *,
    quant_type: str = "nf4",
    blocksize: int | None = None,
    compress_statistics: bool = False,
) -> tuple[jax.Array, QuantState]:
  """Stores ``w`` with the learned ``scale`` as its absmax: a bitsandbytes ``(packed, state)``.

  ``dequantize_4bit`` of the result equals :func:`fake_quantize_learned`'s
  forward (without double quantization; with it, up to the absmax's 8-bit rounding).
  """
  w = jnp.asarray(w)
  scale = jnp.asarray(scale, jnp.float32)
  bs = _check(quant_type, blocksize, w, scale)
  if not bool(jnp.all(scale > 0)):
    raise ValueError("`scale` must be positive.")
  packed, absmax, offset, absmax2 = encode_with_absmax(
      w, scale, quant_type=quant_type, blocksize=bs, compress_statistics=compress_statistics)
  fmt = formats.get_format(quant_type)
  state = QuantState(absmax=absmax, shape=tuple(w.shape), dtype=jnp.dtype(w.dtype), blocksize=bs,
                     quant_type=fmt.name, code=fmt.code, offset=offset,
                     state2=None if absmax2 is None else NestedState(absmax=absmax2))
  return packing.to_storage(packed, packing.storage_dtype(jnp.uint8)), state
