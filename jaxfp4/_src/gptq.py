"""Error-compensating (GPTQ) quantization to the bitsandbytes NF4/FP4 grids.

GPTQ (Frantar et al. 2022, arXiv 2210.17323, Algorithm 1): the input columns
of ``W[out, in]`` are quantized one at a time; the error of column ``j`` is
spread over the columns not yet quantized through the upper Cholesky factor of
``H^-1`` (``H = sum x^T x`` of the layer's calibration inputs, damped), which
minimizes the layer's output error ``||X (W - W_hat)^T||_F^2`` greedily. The
"lazy batch" form updates only a block of ``lazy_block`` columns per step and
the rest of the matrix once per block (one matrix product).

bitsandbytes geometry: absmax blocks run along the flattened row-major weight.
For ``blocksize | in`` a block is ``blocksize`` consecutive input columns of one
output row; otherwise a block may end in one row and start in the next. Either
way every element ``(r, j)`` has exactly one block, so the scale of each element
is fixed before the column loop (the absmax is chosen first: plain absmax or
clipped, ``clip``), stored as an ``[out, in]`` map and read column by column.
The algorithm never needs a block to lie within a row. (This is GPTQ with
"static groups": bitsandbytes has no group index, so scales cannot follow the
processing order.)

Activation order (``act_order``): columns are processed in order of decreasing
``diag(H)`` (the GPTQ reference's ``--act-order``). Because the absmax of every
block was fixed from the unpermuted weight, permuting only changes the order
in which columns are rounded and compensated; the bytes are written back in the
original column order, so the checkpoint is an ordinary bitsandbytes one with
no ``g_idx``.

The output is ordinary packed bytes and a :class:`QuantState`; with
``compress_statistics`` the absmax is double-quantized first and the columns are
rounded against the absmax the decoder will actually use.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxfp4._src import codec
from jaxfp4._src import double_quant
from jaxfp4._src import formats
from jaxfp4._src import packing
from jaxfp4._src.state import NestedState, QuantState

GPTQ_QUANT_TYPES = ("nf4", "fp4", "e2m1")  # float32 absmax formats
HIGHEST = jax.lax.Precision.HIGHEST


def check_weight(w, quant_type, blocksize) -> tuple[jax.Array, int]:
  """``w`` as a 2-D float array and the resolved block size (ValueError naming the argument)."""
  if quant_type not in GPTQ_QUANT_TYPES:
    raise ValueError(f"`quant_type` must be one of {GPTQ_QUANT_TYPES}, got {quant_type!r}.")
  bs = formats.resolve_blocksize(formats.get_format(quant_type), blocksize)
  w = jnp.asarray(w)
  if w.ndim != 2:
    raise ValueError(f"`w` must be a 2-D weight [out, in], got shape {tuple(w.shape)}.")
  if w.dtype.name not in formats.INPUT_DTYPES:
    raise ValueError(f"`w` must have a dtype in {formats.INPUT_DTYPES}, got {w.dtype.name}.")
  if not bool(jnp.all(jnp.isfinite(w))):
    raise ValueError("`w` has NaN/Inf values; GPTQ needs a finite weight.")
  return w, bs


def block_absmax(w: jax.Array, blocksize: int, clip=None) -> jax.Array:
  """float32 max |w| per bitsandbytes block of the flattened ``w``, times ``clip`` (scalar or [blocks])."""
  nb = -(-math.prod(w.shape) // blocksize)
  if clip is not None:
    clip = jnp.asarray(clip, jnp.float32)
    if clip.ndim not in (0, 1) or (clip.ndim == 1 and clip.shape[0] != nb):
      raise ValueError(f"`clip` must be a scalar or an array [{nb}] (one ratio per block), got shape {clip.shape}.")
    if not bool(jnp.all((clip > 0) & (clip <= 1))):
      raise ValueError("`clip` ratios must be in (0, 1].")
  amax = _amax(w, blocksize=blocksize)
  return amax if clip is None else amax * clip


@functools.partial(jax.jit, static_argnames=("blocksize",))
def _amax(w, *, blocksize):
  n = math.prod(w.shape)
  nb = -(-n // blocksize)
  flat = jnp.pad(w.reshape(-1).astype(jnp.float32), (0, nb * blocksize - n)).reshape(nb, blocksize)
  return codec.block_amax([flat], "propagate")


def decoded_absmax(absmax: jax.Array, compress_statistics: bool):
  """``(absmax the decoder uses, stored absmax or codes, offset, nested absmax)``."""
  if not compress_statistics:
    return absmax, absmax, None, None
  codes, offset, absmax2 = double_quant.compress_absmax(absmax)
  eff = double_quant.decompress_absmax(codes, offset, absmax2, code=formats.DYNAMIC_MAP_8BIT,
                                       blocksize=formats.NESTED_BLOCKSIZE)
  # 8-bit rounding can put a tiny absmax a hair below 0; such a block decodes to ~0 anyway.
  return jnp.maximum(eff, 0.0), codes, offset, absmax2


def element_map(per_block: jax.Array, shape: tuple[int, int], blocksize: int) -> jax.Array:
  """A per-block vector as an ``[out, in]`` map: element ``(r, j)`` lies in block ``(r * in + j) // blocksize``."""
  out, k = shape
  idx = (jnp.arange(out)[:, None] * k + jnp.arange(k)[None, :]) // blocksize
  return per_block[idx]


def encode_decode(x, mult, absmax, c, lut):
  """Nibbles of ``x`` at multiplier ``mult`` (the bnb encoder) and their float32 values ``lut[n] * absmax``."""
  nib = c.encode(x, mult)
  return nib, jnp.take(lut, nib) * absmax


def check_hessian(h, k: int) -> jax.Array:
  """``h`` as float32 ``[k, k]``; ValueError unless finite, symmetric, with a non-negative diagonal.

  Positive semidefiniteness is checked where it costs nothing: the Cholesky
  factorization of the damped ``H`` fails for an indefinite one (see
  :func:`quantize_4bit_gptq`), with no O(k^3) eigendecomposition up front.
  """
  h = jnp.asarray(h, jnp.float32)
  if h.shape != (k, k):
    raise ValueError(f"`h` must be the input Gram matrix [{k}, {k}] (in features of `w`), got shape {tuple(h.shape)}.")
  hn = np.asarray(h)
  if not np.all(np.isfinite(hn)):
    raise ValueError("`h` has NaN/Inf values.")
  scale = max(float(np.max(np.abs(hn))), 1e-30)
  if np.max(np.abs(hn - hn.T)) > 1e-4 * scale:
    raise ValueError("`h` must be symmetric (a Gram matrix sum x^T x).")
  if np.min(np.diagonal(hn)) < 0:
    raise ValueError("`h` must be positive semidefinite (a Gram matrix sum x^T x); it has a negative diagonal entry.")
  return h


def inverse_cholesky(h: jax.Array, percdamp: float) -> jax.Array:
  """Upper Cholesky factor ``U`` of ``(H + damp I)^-1`` (``U^T U``), with GPTQ's dead-column rule.

  A column with ``H_jj = 0`` (an input never nonzero) gets ``H_jj = 1``: its
  weight does not affect the output, it is rounded plainly and nothing is
  spread from it. ``damp = percdamp * mean(diag H)`` as in the GPTQ reference.
  """
  h = h.astype(jnp.float64) if jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64 else h  # x64 on
  d = jnp.diagonal(h)
  dead = d == 0
  h = jnp.where(jnp.diag(dead), 1.0, h)
  mean = jnp.mean(jnp.diagonal(h))
  h = h + jnp.eye(h.shape[0], dtype=h.dtype) * (percdamp * mean)
  # One Cholesky instead of two: with J the reversal, chol(J H J) = L gives H = R R^T for the upper
  # triangular R = J L J, so H^-1 = R^-T R^-1 and U = R^-1 = J L^-1 J (upper, positive diagonal).
  lower = jnp.linalg.cholesky(h[::-1, ::-1])
  linv = jax.scipy.linalg.solve_triangular(lower, jnp.eye(h.shape[0], dtype=h.dtype), lower=True)
  u = linv[::-1, ::-1]
  return u.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("quant_type", "lazy_block"))
def gptq_columns(w, u, absmax_map, *, quant_type, lazy_block):
  """The column loop of GPTQ (lazy-batch form) for ``w [out, k]`` with ``k % lazy_block == 0``.

  Returns the float32 targets: each column's value just before it was rounded
  (the original weight plus the compensation it received). Encoding the
  targets with the same absmax gives the chosen nibbles.
  """
  c = codec.codec_for(quant_type)
  lut = jnp.asarray(formats.get_format(quant_type).decode_lut, jnp.float32)
  _, mult_map = c.scale(absmax_map, codec.default_reciprocal)
  out, k = w.shape
  nblocks = k // lazy_block
  cols = jnp.arange(k)

  def block(b, w):
    i1 = b * lazy_block
    w1 = jax.lax.dynamic_slice(w, (0, i1), (out, lazy_block))
    u11 = jax.lax.dynamic_slice(u, (i1, i1), (lazy_block, lazy_block))
    m1 = jax.lax.dynamic_slice(mult_map, (0, i1), (out, lazy_block))
    a1 = jax.lax.dynamic_slice(absmax_map, (0, i1), (out, lazy_block))

    def column(i, carry):
      w1, err1 = carry
      x = w1[:, i]
      _, q = encode_decode(x, m1[:, i], a1[:, i], c, lut)
      e = (x - q) / u11[i, i]
      # Columns after i in this block take the compensation now (GPTQ eq. 3 with
      # the Cholesky row of H^-1); earlier ones are masked by U's zero lower part.
      w1 = w1 - e[:, None] * jnp.where(jnp.arange(lazy_block) > i, u11[i], 0.0)[None, :]
      return w1, err1.at[:, i].set(e)

    w1, err1 = jax.lax.fori_loop(0, lazy_block, column, (w1, jnp.zeros_like(w1)))
    w = jax.lax.dynamic_update_slice(w, w1, (0, i1))
    # The lazy update: all later columns at once, ``W[:, i2:] -= Err1 @ U[i1:i2, i2:]``.
    u12 = jax.lax.dynamic_slice(u, (i1, 0), (lazy_block, k))
    u12 = jnp.where(cols[None, :] >= i1 + lazy_block, u12, 0.0)
    return w - jnp.matmul(err1, u12, precision=HIGHEST)

  return jax.lax.fori_loop(0, nblocks, block, w)


def pack_targets(targets, absmax_eff, *, quant_type, blocksize):
  """Packed nibbles of ``targets`` encoded against the per-block ``absmax_eff``."""
  c = codec.codec_for(quant_type)
  n = math.prod(targets.shape)
  nb = absmax_eff.shape[0]
  flat = jnp.pad(targets.reshape(-1).astype(jnp.float32), (0, nb * blocksize - n)).reshape(nb, blocksize)
  _, mult = c.scale(absmax_eff, codec.default_reciprocal)
  nibbles = c.encode(flat, mult[:, None])
  return packing.pack_nibbles(nibbles.reshape(-1)[: n + (n % 2)].astype(jnp.uint8))


def make_state(w, stored, offset, absmax2, *, quant_type, blocksize) -> QuantState:
  fmt = formats.get_format(quant_type)
  return QuantState(absmax=stored, shape=tuple(w.shape), dtype=jnp.dtype(w.dtype), blocksize=blocksize,
                    quant_type=fmt.name, code=fmt.code, offset=offset,
                    state2=None if absmax2 is None else NestedState(absmax=absmax2))


def refit_absmax(w, targets_nib_values, absmax, h, *, blocksize) -> jax.Array:
  """The per-block scales that minimize each row's output error with the nibbles fixed.

  With codes fixed, row ``r`` of ``W_hat`` is ``sum_b s_b c_b`` (``c_b``: the
  block's decoded table values at unit scale), so ``(W_r - W_hat_r) H (...)^T``
  is quadratic in the row's scales: ``A s = g`` with ``A[b, b'] = c_b^T H c_b'``
  and ``g[b] = c_b^T H W_r``. Needs ``blocksize | in`` (blocks within rows).
  A scale that comes out negative or a row whose error does not drop keeps the
  old scales, so the result is never worse on the calibration data.
  """
  out, k = w.shape
  nb_row = k // blocksize
  unit = targets_nib_values  # lut[nibble], [out, k]
  w32 = w.astype(jnp.float32)
  hw = jnp.matmul(w32, h, precision=HIGHEST)  # [out, k]
  cb = unit.reshape(out, nb_row, blocksize)
  hb = h.reshape(k, nb_row, blocksize)
  chunk = max(1, min(out, (1 << 24) // max(nb_row * k, 1)))
  old = absmax.reshape(out, nb_row)
  new_rows = []
  for r0 in range(0, out, chunk):
    c = cb[r0:r0 + chunk]
    hc = jnp.einsum("kbj,rbj->rbk", hb, c, precision=HIGHEST)  # H[:, block b] c_b
    a = jnp.einsum("rai,rbai->rab", c, hc.reshape(c.shape[0], nb_row, nb_row, blocksize), precision=HIGHEST)
    g = jnp.einsum("rbi,rbi->rb", c, hw[r0:r0 + chunk].reshape(-1, nb_row, blocksize), precision=HIGHEST)
    ridge = 1e-6 * jnp.mean(jnp.abs(jnp.diagonal(a, axis1=1, axis2=2)), axis=1)[:, None, None] + 1e-30
    s = jnp.linalg.solve(a + ridge * jnp.eye(nb_row)[None], g[..., None])[..., 0]
    new_rows.append(s)
  s = jnp.concatenate(new_rows)

  def row_err(scales):
    d = w32 - (cb * scales[:, :, None]).reshape(out, k)
    return jnp.sum(d * jnp.matmul(d, h, precision=HIGHEST), axis=1)

  ok = jnp.all(s >= 0, axis=1) & jnp.all(jnp.isfinite(s), axis=1)
  s = jnp.where(ok[:, None], s, old)
  better = row_err(s) < row_err(old)
  return jnp.where(better[:, None], s, old).reshape(-1).astype(jnp.float32)


def quantize_4bit_gptq(
    w: jax.typing.ArrayLike,
    h: jax.typing.ArrayLike,
    *,
    quant_type: str = "nf4",
    blocksize: int | None = None,
    compress_statistics: bool = False,
    percdamp: float = 0.01,
    act_order: bool = False,
    lazy_block: int = 128,
    clip: jax.typing.ArrayLike | None = None,
    refit: bool = False,
    quant_storage: jax.typing.DTypeLike = jnp.uint8,
) -> tuple[jax.Array, QuantState]:
  """GPTQ-quantizes ``W[out, in]`` to bitsandbytes NF4/FP4 bytes (arXiv 2210.17323).

  Args:
    w: the weight in bitsandbytes layout ``[out, in]`` (the transpose of a Flax kernel).
    h: the input Gram matrix ``[in, in]``, ``sum x^T x`` over calibration rows.
    quant_type: ``"nf4"``, ``"fp4"`` (bitsandbytes) or ``"e2m1"``.
    blocksize: elements per absmax block (None: 64).
    compress_statistics: double-quantize the absmax; columns are rounded
      against the decoded absmax.
    percdamp: damping, a fraction of ``mean(diag H)`` added to the diagonal (> 0).
    act_order: process columns by decreasing ``diag(H)``; the stored bytes are
      in the original order (see the module docstring).
    lazy_block: columns per lazy-batch update.
    clip: per-block clipping ratios in (0, 1] (scalar or ``[blocks]``) applied
      to the absmax before the column loop; None: plain absmax.
    refit: after the loop, re-fit each block's absmax to the chosen nibbles
      (output-error least squares; needs ``blocksize | in``).
    quant_storage: dtype the packed bytes are viewed as.

  Returns:
    ``(packed, state)`` as :func:`jaxfp4.quantize_4bit` returns them. With
    ``H`` a multiple of the identity, no ``clip``, no double quantization and no
    refit, the bytes are exactly ``quantize_4bit``'s.

  Example:
    >>> import jax, jaxfp4
    >>> x = jax.random.normal(jax.random.key(0), (256, 64))
    >>> w = jax.random.normal(jax.random.key(1), (32, 64))
    >>> packed, state = jaxfp4.quantize_4bit_gptq(w, x.T @ x, quant_type="nf4")
    >>> jaxfp4.dequantize_4bit(packed, state).shape
    (32, 64)
  """
  w, bs = check_weight(w, quant_type, blocksize)
  out, k = w.shape
  h = check_hessian(h, k)
  if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not percdamp > 0:
    raise ValueError(f"`percdamp` must be a float > 0 (damping as a fraction of mean(diag H)), got {percdamp!r}.")
  if act_order not in (True, False):
    raise ValueError(f"`act_order` must be True or False, got {act_order!r}.")
  if refit not in (True, False):
    raise ValueError(f"`refit` must be True or False, got {refit!r}.")
  if compress_statistics not in (True, False):
    raise ValueError(f"`compress_statistics` must be True or False, got {compress_statistics!r}.")
  if isinstance(lazy_block, bool) or not isinstance(lazy_block, int) or lazy_block <= 0:
    raise ValueError(f"`lazy_block` must be a positive int, got {lazy_block!r}.")
  if refit and k % bs:
    raise ValueError(f"`refit=True` needs `blocksize` ({bs}) to divide the in features ({k}).")
  storage = packing.storage_dtype(quant_storage)
  absmax = block_absmax(w, bs, clip)
  absmax_eff, stored, offset, absmax2 = _decoded_absmax(absmax, compress_statistics=compress_statistics)
  # The order is an array argument, not a static option: act_order on or off runs one compiled program.
  perm = jnp.argsort(-jnp.diagonal(h), stable=True) if act_order else jnp.arange(k)
  targets, ok = _gptq_arrays(w, h, absmax_eff, perm, jnp.float32(percdamp), quant_type=quant_type,
                             blocksize=bs, lazy_block=min(lazy_block, k))
  if not bool(ok):
    raise ValueError(f"`h` is not positive semidefinite: the Cholesky factorization of H + {percdamp:g} * "
                     "mean(diag H) * I failed (a Gram matrix sum x^T x never fails; raise `percdamp` if H "
                     "is one with rounding errors).")
  if refit:
    absmax, targets = _refit(w, targets, absmax_eff, h, quant_type=quant_type, blocksize=bs)
    absmax_eff, stored, offset, absmax2 = _decoded_absmax(absmax, compress_statistics=compress_statistics)
  packed = _pack(targets, absmax_eff, quant_type=quant_type, blocksize=bs)
  state = make_state(w, stored, offset, absmax2, quant_type=quant_type, blocksize=bs)
  return packing.to_storage(packed, storage), state


_pack = jax.jit(pack_targets, static_argnames=("quant_type", "blocksize"))


_decoded_absmax = jax.jit(decoded_absmax, static_argnames=("compress_statistics",))


@functools.partial(jax.jit, static_argnames=("quant_type", "blocksize"))
def _refit(w, targets, absmax_eff, h, *, quant_type, blocksize):
  """Nibbles of ``targets`` kept, absmax re-fitted: ``(new absmax, targets that encode to the same nibbles)``."""
  out, k = w.shape
  c = codec.codec_for(quant_type)
  lut = jnp.asarray(formats.get_format(quant_type).decode_lut, jnp.float32)
  amap = element_map(absmax_eff, (out, k), blocksize)
  nib, _ = encode_decode(targets, c.scale(amap, codec.default_reciprocal)[1], amap, c, lut)
  unit = jnp.where(amap > 0, jnp.take(lut, nib), 0.0)
  absmax = refit_absmax(w, unit, absmax_eff, h, blocksize=blocksize)
  # lut[n] * s_new encodes back to n against the new absmax s_new: the same nibbles, new scales.
  return absmax, unit * element_map(absmax, (out, k), blocksize)


@functools.partial(jax.jit, static_argnames=("quant_type", "blocksize", "lazy_block"))
def _gptq_arrays(w, h, absmax_eff, perm, percdamp, *, quant_type, blocksize, lazy_block):
  """The column loop of :func:`quantize_4bit_gptq` in processing order ``perm``, undone at the end.

  Returns ``(targets [out, in] in the original column order, whether the Cholesky factorization succeeded)``.
  """
  out, k = w.shape
  amap = element_map(absmax_eff, (out, k), blocksize)[:, perm]
  w32 = w.astype(jnp.float32)[:, perm]
  u = inverse_cholesky(h[perm][:, perm], percdamp)
  ok = jnp.all(jnp.isfinite(u))
  lb = lazy_block
  pad = -k % lb
  if pad:  # padded columns: zero weight, no coupling (identity rows of U)
    w32 = jnp.pad(w32, ((0, 0), (0, pad)))
    amap = jnp.pad(amap, ((0, 0), (0, pad)), constant_values=1.0)
    u = jnp.pad(u, ((0, pad), (0, pad))).at[k:, k:].set(jnp.eye(pad))
  targets = gptq_columns(w32, u, amap, quant_type=quant_type, lazy_block=lb)[:, :k]
  return targets[:, jnp.argsort(perm)], ok
