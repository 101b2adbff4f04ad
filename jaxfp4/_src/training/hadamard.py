"""Blockwise random Hadamard transform (RHT) for FP4 training GEMMs.

A block ``v`` of ``d`` consecutive values along the reduction axis becomes
``H_d · diag(s) · v``: flip signs by a random ``s ∈ {±1}^d``, then apply the
orthonormal Sylvester Hadamard matrix ``H_d`` (entries ``±1/√d``). Signs come
first, as in NVIDIA's NVFP4 recipe (arXiv 2509.25149 §4: ``x′ = q(x·H)`` with
``H = S_d·H_d/√d`` on 16×16 tiles of the Wgrad GEMM inputs, one sign vector for
all layers and the whole run) and in Tseng et al. 2025 ("Training LLMs with
MXFP4", arXiv 2502.20586; blockwise on both Dgrad/Wgrad operands, block 64 by
default in amazon-science/mxfp4-llm).

Why it helps: the transform is orthogonal, so applying it to both operands of
a GEMM along the shared ``k`` axis leaves the product unchanged,
``(A·M)(Mᵀ·B) = A·B`` with ``M = blockdiag(diag(s)·Hᵀ)``; but it spreads a large
value over its whole block (a lone spike ``c`` becomes ``±c/√d`` everywhere),
which shrinks each block's max/RMS ratio and hence its quantization error, and
it bounds the variance of stochastic rounding (Tseng et al. Thm 3.2, known to
us from a secondary summary). The random signs make the spreading hold with
high probability for every input, including inputs aligned with a row of
``H``, which a fixed ``H`` would map to a spike.

Block sizes in the recipes: NVFP4 uses 16 (4×4 was worse, 128×128 gave a
"minor benefit", App. E.4); NVIDIA's MXFP4 comparison uses 32; Quartet uses the
MX group size 32 (arXiv 2505.14669, Alg. 1); Tseng et al. default to 64.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np

BLOCK_SIZES = tuple(2**i for i in range(1, 9))  # 2, 4, ..., 256


def _check_size(name: str, n: Any) -> int:
  if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n not in BLOCK_SIZES:
    raise ValueError(f"`{name}` must be a power of two in {BLOCK_SIZES}, got {n!r}.")
  return int(n)


@functools.cache
def _sylvester_signs(n: int) -> np.ndarray:
  """The ±1 Sylvester matrix ``H_1 = [1]``, ``H_2m = [[H_m, H_m], [H_m, -H_m]]``
  (``jax.scipy.linalg.hadamard``, the order of ``scipy.linalg.hadamard``), on the host."""
  # Concrete even when first called inside a jit trace, so it can be cached.
  with jax.ensure_compile_time_eval():
    h = np.asarray(jax.scipy.linalg.hadamard(n, dtype=jnp.int8))
  h.setflags(write=False)
  return h


def hadamard_matrix(n: int, *, dtype: Any = np.float32) -> np.ndarray:
  """The orthonormal Sylvester Hadamard matrix of size ``n``.

  Args:
    n: a power of two in 2..256.
    dtype: numpy float dtype of the result.

  Returns:
    ``[n, n]`` array with entries ``±1/√n``; symmetric, and ``H @ H.T = I``.
    Entry ``(i, j)`` is ``(-1)^popcount(i & j) / √n`` (Sylvester ordering).

  Example:
    >>> from jaxfp4._src.training.hadamard import hadamard_matrix
    >>> hadamard_matrix(4) * 2
    array([[ 1.,  1.,  1.,  1.],
           [ 1., -1.,  1., -1.],
           [ 1.,  1., -1., -1.],
           [ 1., -1., -1.,  1.]], dtype=float32)
  """
  n = _check_size("n", n)
  return (_sylvester_signs(n).astype(np.float64) / np.sqrt(n)).astype(dtype)


def _check_key(key: Any) -> jax.Array:
  if key is None:
    raise ValueError("`key` must be a PRNG key (jax.random.key(...) or jax.random.PRNGKey(...)), got None.")
  dt = getattr(key, "dtype", None)
  if dt is None or not jnp.issubdtype(dt, jax.dtypes.prng_key):
    try:
      key = jax.random.wrap_key_data(jnp.asarray(key))
    except (TypeError, ValueError) as e:
      raise ValueError("`key` must be a PRNG key (jax.random.key(...) or jax.random.PRNGKey(...)), "
                       f"got {type(key).__name__} {getattr(key, 'dtype', '')}"
                       f"{list(getattr(key, 'shape', ()))}.") from e
  if key.shape != ():
    raise ValueError(f"`key` must be a single PRNG key, got a key array of shape {key.shape}.")
  return key


def random_hadamard_transform(
    x: jax.typing.ArrayLike,
    *,
    key: jax.Array,
    block_size: int = 16,
    axis: int = -1,
    inverse: bool = False,
) -> jax.Array:
  """Blockwise random Hadamard transform of ``x`` along ``axis``.

  ``axis`` is split into consecutive blocks of ``block_size``; each block ``v``
  becomes ``H · diag(s) · v`` (``inverse=True``: ``diag(s) · Hᵀ · v``), with one
  sign vector ``s`` drawn from ``key`` and shared by all blocks, as in the NVFP4
  recipe. Transform both GEMM operands along their shared reduction axis with
  the same key and the product is unchanged (up to float32 rounding).

  Args:
    x: float array.
    key: PRNG key (typed or raw uint32) for the signs.
    block_size: power of two in 2..256 dividing ``x.shape[axis]``. The recipes
      use 16 (NVFP4), 32 (Quartet, NVIDIA's MXFP4 runs) and 64 (Tseng et al.).
    axis: the axis to transform (the GEMM's reduction axis).
    inverse: apply the inverse transform.

  Returns:
    An array of ``x``'s shape and dtype, computed in float32 (HIGHEST precision).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxfp4._src.training.hadamard import random_hadamard_transform
    >>> a = jax.random.normal(jax.random.key(1), (4, 32))
    >>> b = jax.random.normal(jax.random.key(2), (32, 8))
    >>> k = jax.random.key(0)
    >>> at = random_hadamard_transform(a, key=k, axis=-1)
    >>> bt = random_hadamard_transform(b, key=k, axis=0)
    >>> bool(jnp.allclose(at @ bt, a @ b, atol=1e-4))
    True
  """
  if not isinstance(x, jax.Array):
    x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"`x` must be a float array, got {x.dtype}{list(x.shape)}.")
  if x.ndim == 0:
    raise ValueError("`x` must have at least one axis, got a scalar.")
  if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)) \
      or not -x.ndim <= axis < x.ndim:
    raise ValueError(f"`axis` must be an int in [{-x.ndim}, {x.ndim}) for an array of "
                     f"rank {x.ndim}, got {axis!r}.")
  axis = operator.index(axis) % x.ndim
  bs = _check_size("block_size", block_size)
  length = x.shape[axis]
  if length % bs:
    raise ValueError(f"`block_size`={bs} must divide the length {length} of axis {axis}.")
  if inverse not in (True, False):
    raise ValueError(f"`inverse` must be True or False, got {inverse!r}.")
  key = _check_key(key)

  signs = jax.random.rademacher(key, (bs,), dtype=jnp.float32)
  h = jnp.asarray(hadamard_matrix(bs))
  moved = jnp.moveaxis(x, axis, -1).astype(jnp.float32)
  lead = moved.shape[:-1]
  blocks = moved.reshape(*lead, length // bs, bs)
  s = signs.reshape((1,) * (blocks.ndim - 1) + (bs,))
  hi = jax.lax.Precision.HIGHEST
  # Blocks are rows, so H·diag(s)·v is the row (v ⊙ s)·Hᵀ and diag(s)·Hᵀ·v is (v·H) ⊙ s.
  if inverse:
    out = jnp.matmul(blocks, h, precision=hi) * s
  else:
    out = jnp.matmul(blocks * s, h.T, precision=hi)
  return jnp.moveaxis(out.reshape(moved.shape), -1, axis).astype(x.dtype)
