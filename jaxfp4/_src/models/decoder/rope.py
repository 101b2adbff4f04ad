"""Rotary position embeddings as transformers computes them (default, linear, llama3).

The inverse frequencies are computed in NumPy float32 like transformers'
``_compute_default_rope_parameters``, ``_compute_linear_scaling_rope_parameters``
and ``_compute_llama3_parameters`` (torch float32 arithmetic); the three have an
attention scaling of 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def inv_freq(head_dim: int, theta: float, scaling: Mapping[str, Any] | None = None) -> np.ndarray:
  """RoPE inverse frequencies ``[head_dim // 2]`` in float32, scaling applied.

  Example:
    >>> inv_freq(4, 10000.0).tolist()
    [1.0, 0.009999999776482582]
  """
  d = head_dim
  exponent = np.arange(0, d, 2).astype(np.float32) / np.float32(d)
  freq = np.float32(1.0) / (np.float32(theta) ** exponent)
  if scaling is None:
    return freq
  if scaling["rope_type"] == "linear":
    return (freq / np.float32(scaling["factor"])).astype(np.float32)
  factor = np.float32(scaling["factor"])
  low, high = np.float32(scaling["low_freq_factor"]), np.float32(scaling["high_freq_factor"])
  old = np.float32(scaling["original_max_position_embeddings"])
  low_freq_wavelen, high_freq_wavelen = old / low, old / high
  wavelen = np.float32(2 * math.pi) / freq
  scaled = np.where(wavelen > low_freq_wavelen, freq / factor, freq)
  smooth = (old / wavelen - low) / (high - low)
  smoothed = (np.float32(1) - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def cos_sin(freq: np.ndarray, positions: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
  """``cos, sin [B, T, head_dim]`` of ``positions [B, T]``: float32, cast to ``dtype``."""
  freqs = positions.astype(jnp.float32)[:, :, None] * jnp.asarray(freq)[None, None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates ``x [B, T, heads, head_dim]`` by ``cos, sin [B, T, head_dim]``."""
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  return x * cos + rotate_half(x) * sin
