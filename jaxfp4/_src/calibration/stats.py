"""Streaming per-layer input statistics: the Gram matrix and per-channel moments.

For a linear layer ``y = x K`` (Flax kernel ``K[in, out]``) and a change of its
kernel ``dK``, the squared output error summed over all calibration rows is

    ||X dK||_F^2 = tr(dK^T H dK),   H = X^T X = sum over batches of x_b^T x_b,

so ``H`` (``in x in`` float32) holds everything needed to score any candidate
format exactly, however many batches were seen (GPTQ uses the same ``H`` as its
layer-wise objective: Frantar et al. 2022, arXiv 2210.17323, §2). Memory is
``sum over layers of in^2`` floats plus ``3 in`` per layer, independent of the
number and size of the batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


@jax.jit
def _update(h, s1, mx, x):
  x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  h = h + jnp.matmul(x.T, x, precision=HIGHEST)
  return h, s1 + jnp.sum(jnp.abs(x), axis=0), jnp.maximum(mx, jnp.max(jnp.abs(x), axis=0, initial=0.0))


class LayerStats:
  """Accumulates one layer's input statistics over calibration batches.

  Attributes:
    rows: input rows seen (tokens).
    gram: float32 ``[in, in]``, ``sum x^T x``.
    sum_abs, max_abs: float32 ``[in]``, per input channel.
  """

  def __init__(self, in_features: int):
    self.rows = 0
    self.gram = jnp.zeros((in_features, in_features), jnp.float32)
    self.sum_abs = jnp.zeros((in_features,), jnp.float32)
    self.max_abs = jnp.zeros((in_features,), jnp.float32)

  def update(self, x: jax.Array) -> None:
    """Adds the rows of ``x[..., in]``."""
    x = jnp.asarray(x)
    if x.shape[-1] != self.gram.shape[0]:
      raise ValueError(f"inputs have {x.shape[-1]} features; the layer has {self.gram.shape[0]}.")
    self.gram, self.sum_abs, self.max_abs = _update(self.gram, self.sum_abs, self.max_abs, x)
    self.rows += x.size // x.shape[-1]

  @property
  def mean_abs(self) -> jax.Array:
    return self.sum_abs / max(self.rows, 1)

  @property
  def rms(self) -> jax.Array:
    """Per-channel root mean square, from the Gram matrix's diagonal."""
    return jnp.sqrt(jnp.diagonal(self.gram) / max(self.rows, 1))


@jax.jit
def output_energy(delta: jax.Array, gram: jax.Array) -> jax.Array:
  """``tr(dK^T H dK)`` for a kernel change ``dK[in, out]``."""
  delta = delta.astype(jnp.float32)
  return jnp.sum(delta * jnp.matmul(gram, delta, precision=HIGHEST))
