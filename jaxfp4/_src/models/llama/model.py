"""A Flax NNX Llama that reproduces transformers' ``LlamaForCausalLM``.

Attribute paths mirror Hugging Face's parameter names: the checkpoint key
``model.layers.3.self_attn.q_proj.weight`` is the kernel (transposed: Flax
kernels are ``[in, out]``) of ``model.layers[3].self_attn.q_proj``. Every linear
layer is built by a ``linear(path, in_features, out_features, use_bias)`` factory,
so 4-bit layers can replace ``nnx.Linear`` by HF path.

Numerics follow transformers' ``modeling_llama.py``: RMSNorm and the RoPE
tables in float32, attention scores and softmax in float32 (in the order of the
default SDPA kernel, see :class:`LlamaAttention`), everything else in the
activation dtype.

The KV cache holds equal-length sequences only: all rows of a batch share one
fill ``length`` (no left padding).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxfp4._src.flax.nnx_dense import apply_shared_input
from jaxfp4._src.models.llama.config import LlamaConfig

LinearFactory = Callable[[str, int, int, bool], nnx.Module]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """Keys and values of every layer, written at slot ``length`` onwards.

  Attributes:
    k, v: ``[layers, batch, max_len, kv_heads, head_dim]``.
    length: int32 scalar, the number of filled slots (shared by all rows).

  Size it for the prompt plus every generated token: ``dynamic_update_slice``
  clamps a write past ``max_len`` onto the last slots instead of failing.
  """

  k: jax.Array
  v: jax.Array
  length: jax.Array

  @property
  def max_len(self) -> int:
    return self.k.shape[2]


def init_cache(config: LlamaConfig, batch: int, max_len: int, dtype: Any = jnp.float32) -> KVCache:
  """An empty :class:`KVCache` for ``batch`` rows of up to ``max_len`` tokens.

  Args:
    config: the model's config.
    batch: rows.
    max_len: slots per row (prompt plus generated tokens).
    dtype: storage dtype of the keys and values.

  Returns:
    The zero-filled cache with ``length == 0``.
  """
  for name, v in (("batch", batch), ("max_len", max_len)):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
      raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
  shape = (config.num_hidden_layers, batch, max_len, config.num_key_value_heads, config.head_dim)
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
  """RoPE inverse frequencies ``[head_dim // 2]`` in float32, llama3 scaling applied.

  Computed in NumPy float32 like transformers' ``_compute_default_rope_parameters``
  and ``_compute_llama3_parameters`` (torch float32 arithmetic).
  """
  d = config.head_dim
  exponent = np.arange(0, d, 2).astype(np.float32) / np.float32(d)
  inv_freq = np.float32(1.0) / (np.float32(config.rope_theta) ** exponent)
  if config.rope_scaling is None:
    return inv_freq
  s = config.rope_scaling
  factor = np.float32(s["factor"])
  low, high = np.float32(s["low_freq_factor"]), np.float32(s["high_freq_factor"])
  old = np.float32(s["original_max_position_embeddings"])
  low_freq_wavelen, high_freq_wavelen = old / low, old / high
  wavelen = np.float32(2 * math.pi) / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
  smooth = (old / wavelen - low) / (high - low)
  smoothed = (np.float32(1) - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(config: LlamaConfig, positions: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
  """``cos, sin [B, T, head_dim]`` of ``positions [B, T]``: float32, cast to ``dtype``."""
  inv_freq = jnp.asarray(rope_inv_freq(config))
  freqs = positions.astype(jnp.float32)[:, :, None] * inv_freq[None, None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  # transformers' llama3 and default RoPE have attention_scaling 1.0.
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates ``x [B, T, heads, head_dim]`` by ``cos, sin [B, T, head_dim]``."""
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  return x * cos + rotate_half(x) * sin


class LlamaRMSNorm(nnx.Module):
  """transformers' ``LlamaRMSNorm``: normalize in float32, cast back, scale by ``weight``."""

  def __init__(self, hidden_size: int, *, eps: float, dtype: Any, param_dtype: Any):
    self.weight = nnx.Param(jnp.ones((hidden_size,), param_dtype))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(x.dtype)
    w = self.weight[...].astype(self.dtype)
    return w.reshape((1,) * (x.ndim - 1) + (-1,)) * y.astype(self.dtype)


class LlamaAttention(nnx.Module):
  """Grouped-query self-attention with RoPE and an optional KV cache."""

  def __init__(self, config: LlamaConfig, prefix: str, *, linear: LinearFactory, dtype: Any):
    c = config
    self.config = c
    self.dtype = dtype
    h, kv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    b = c.attention_bias
    self.q_proj = linear(f"{prefix}.q_proj", c.hidden_size, h * d, b)
    self.k_proj = linear(f"{prefix}.k_proj", c.hidden_size, kv * d, b)
    self.v_proj = linear(f"{prefix}.v_proj", c.hidden_size, kv * d, b)
    self.o_proj = linear(f"{prefix}.o_proj", h * d, c.hidden_size, b)

  def __call__(
      self,
      x: jax.Array,
      cos: jax.Array,
      sin: jax.Array,
      *,
      mask: jax.Array,
      cache_kv: tuple[jax.Array, jax.Array] | None = None,
      layer: int = 0,
      start: jax.Array | None = None,
  ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Attends ``x [B, T, hidden]``; ``mask [T, S]`` is True where a query may see a key.

    With ``cache_kv = (k, v)``, the whole cache's ``[layers, B, max_len,
    kv_heads, head_dim]`` arrays, this layer's new keys and values are written
    at ``[layer, :, start]`` and all ``max_len`` slots are attended (``mask``
    hides the unfilled ones); returns the updated pair. Updating the stacked
    arrays in place (not per-layer copies) keeps a decode step from copying
    the cache.
    """
    c = self.config
    bsz, t, _ = x.shape
    h, kv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    dtype = self.dtype
    # One 4-bit launch for the three projections at decode batch sizes.
    q, k, v = apply_shared_input((self.q_proj, self.k_proj, self.v_proj), x)
    q = q.astype(dtype).reshape(bsz, t, h, d)
    k = k.astype(dtype).reshape(bsz, t, kv, d)
    v = v.astype(dtype).reshape(bsz, t, kv, d)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache_kv is not None:
      ck, cv = cache_kv
      zero = jnp.zeros((), jnp.int32)
      idx = (jnp.asarray(layer, jnp.int32), zero, start.astype(jnp.int32), zero, zero)
      ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype)[None], idx)
      cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype)[None], idx)
      k, v = ck[layer].astype(dtype), cv[layer].astype(dtype)
      cache_kv = (ck, cv)
    # Query head j uses kv head j // groups (transformers' repeat_kv); grouping
    # the query heads gives the same dot products without copying k and v.
    g = h // kv
    qg = q.reshape(bsz, t, kv, g, d)
    # The softmax follows the fused kernel transformers runs by default (SDPA,
    # flash on GPU): float32 scores, unnormalized float32 probabilities cast to
    # the activation dtype for the product with v, division by their float32
    # sum afterwards. In bfloat16 this matches transformers' logits about 4x
    # closer than the eager order (round scores, normalize, then cast); in
    # float32 the two agree to rounding.
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * d**-0.5
    scores = jnp.where(mask[None, None, None], scores, jnp.finfo(jnp.float32).min)
    p = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    denom = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bkgts,bskd->bkgtd", p.astype(dtype), v, preferred_element_type=jnp.float32) / denom
    out = jnp.transpose(out.astype(dtype), (0, 3, 1, 2, 4)).reshape(bsz, t, h * d)
    return self.o_proj(out).astype(dtype), cache_kv


class LlamaMLP(nnx.Module):
  """``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

  def __init__(self, config: LlamaConfig, prefix: str, *, linear: LinearFactory, dtype: Any):
    c = config
    self.dtype = dtype
    self.gate_proj = linear(f"{prefix}.gate_proj", c.hidden_size, c.intermediate_size, c.mlp_bias)
    self.up_proj = linear(f"{prefix}.up_proj", c.hidden_size, c.intermediate_size, c.mlp_bias)
    self.down_proj = linear(f"{prefix}.down_proj", c.intermediate_size, c.hidden_size, c.mlp_bias)

  def __call__(self, x: jax.Array) -> jax.Array:
    gate, up = apply_shared_input((self.gate_proj, self.up_proj), x)
    gate = gate.astype(self.dtype)
    # torch's silu evaluates in float32 internally and rounds once.
    act = jax.nn.silu(gate.astype(jnp.float32)).astype(self.dtype)
    return self.down_proj(act * up.astype(self.dtype)).astype(self.dtype)


class LlamaDecoderLayer(nnx.Module):
  """Pre-norm attention and MLP blocks with residuals."""

  def __init__(self, config: LlamaConfig, prefix: str, *, linear: LinearFactory, dtype: Any, param_dtype: Any):
    self.self_attn = LlamaAttention(config, f"{prefix}.self_attn", linear=linear, dtype=dtype)
    self.mlp = LlamaMLP(config, f"{prefix}.mlp", linear=linear, dtype=dtype)
    norm = dict(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
    self.input_layernorm = LlamaRMSNorm(config.hidden_size, **norm)
    self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, **norm)

  def __call__(self, x, cos, sin, *, mask, cache_kv=None, layer=0, start=None):
    h, cache_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask=mask, cache_kv=cache_kv,
                                 layer=layer, start=start)
    x = x + h
    x = x + self.mlp(self.post_attention_layernorm(x))
    return x, cache_kv


class LlamaModel(nnx.Module):
  """Embedding, decoder layers and the final norm (transformers' ``LlamaModel``)."""

  def __init__(self, config: LlamaConfig, *, linear: LinearFactory, dtype: Any, param_dtype: Any, rngs: nnx.Rngs,
               remat: bool = False):
    self.config = config
    self.dtype = dtype
    self.remat = remat
    self.embed_tokens = nnx.Embed(
        config.vocab_size, config.hidden_size, dtype=dtype, param_dtype=param_dtype,
        embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.layers = nnx.List([
        LlamaDecoderLayer(config, f"model.layers.{i}", linear=linear, dtype=dtype, param_dtype=param_dtype)
        for i in range(config.num_hidden_layers)])
    self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)

  def __call__(
      self,
      input_ids: jax.Array,
      *,
      positions: jax.Array | None = None,
      cache: KVCache | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """Returns the final hidden states ``[B, T, hidden]`` and the updated cache."""
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise ValueError(f"`input_ids` must be an int array [batch, seq], got {input_ids.dtype}{list(input_ids.shape)}.")
    bsz, t = input_ids.shape
    start = jnp.zeros((), jnp.int32) if cache is None else cache.length
    if positions is None:
      positions = start + jnp.arange(t, dtype=jnp.int32)
    positions = jnp.asarray(positions)
    if positions.ndim == 1:
      positions = positions[None, :]
    positions = jnp.broadcast_to(positions, (bsz, t))
    # Causal mask over cache slots: query t sits at slot start + t and sees slots
    # <= its own, which also hides the unfilled tail of the cache.
    q_slot = start + jnp.arange(t, dtype=jnp.int32)
    n_keys = t if cache is None else cache.max_len
    if cache is not None and cache.k.shape[1] != bsz:
      raise ValueError(f"`cache` holds {cache.k.shape[1]} rows but `input_ids` has {bsz}.")
    mask = jnp.arange(n_keys, dtype=jnp.int32)[None, :] <= q_slot[:, None]
    x = self.embed_tokens(input_ids).astype(self.dtype)
    cos, sin = rope_cos_sin(self.config, positions, self.dtype)
    cache_kv = None if cache is None else (cache.k, cache.v)
    for i, layer in enumerate(self.layers):
      if self.remat and cache is None:
        # Gradient checkpointing: keep only each layer's input for the backward
        # pass and recompute the rest (Chen et al. 2016), as QLoRA training does.
        def run(layer, x, i=i):
          return layer(x, cos, sin, mask=mask, cache_kv=None, layer=i, start=start)[0]
        x = nnx.remat(run)(layer, x)
      else:
        x, cache_kv = layer(x, cos, sin, mask=mask, cache_kv=cache_kv, layer=i, start=start)
    x = self.norm(x)
    if cache is not None:
      cache = KVCache(cache_kv[0], cache_kv[1], cache.length + t)
    return x, cache


class LlamaForCausalLM(nnx.Module):
  """transformers' ``LlamaForCausalLM`` in Flax NNX.

  Args:
    config: the model's shapes.
    dtype: activation (compute) dtype.
    param_dtype: dtype of the embedding, the norms and the default linears.
    linear: ``linear(path, in_features, out_features, use_bias)`` (called
      positionally) returning a module mapping ``[..., in] -> [..., out]``;
      ``path`` is the HF module path, e.g. ``"model.layers.0.self_attn.q_proj"``
      or ``"lm_head"``. None builds ``nnx.Linear`` layers.
    rngs: random streams for the initial parameters.
    remat: recompute each decoder layer in the backward pass (gradient
      checkpointing) instead of keeping its activations; cached decoding is
      unaffected.
  """

  def __init__(
      self,
      config: LlamaConfig,
      *,
      dtype: Any = jnp.float32,
      param_dtype: Any = jnp.float32,
      linear: LinearFactory | None = None,
      rngs: nnx.Rngs,
      remat: bool = False,
  ):
    if not isinstance(config, LlamaConfig):
      raise ValueError(f"`config` must be a LlamaConfig, got {type(config).__name__}.")
    if dtype is None or param_dtype is None:
      raise ValueError("`dtype` and `param_dtype` must be dtypes, got None.")
    if linear is None:
      def linear(path: str, in_features: int, out_features: int, use_bias: bool) -> nnx.Module:
        del path
        return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)
    self.config = config
    self.dtype = jnp.dtype(dtype)
    self.model = LlamaModel(config, linear=linear, dtype=self.dtype, param_dtype=param_dtype, rngs=rngs,
                            remat=remat)
    self.lm_head = (None if config.tie_word_embeddings
                    else linear("lm_head", config.hidden_size, config.vocab_size, False))

  def logits(self, hidden: jax.Array) -> jax.Array:
    """Maps final hidden states ``[..., hidden]`` to logits ``[..., vocab]``."""
    if self.lm_head is None:
      return self.model.embed_tokens.attend(hidden)
    return self.lm_head(hidden)

  def __call__(
      self,
      input_ids: jax.Array,
      *,
      positions: jax.Array | None = None,
      cache: KVCache | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """Runs the model on ``input_ids [B, T]``.

    Args:
      input_ids: int token ids.
      positions: RoPE positions ``[B, T]`` or ``[T]``; None means
        ``cache.length + arange(T)`` (``arange(T)`` without a cache).
      cache: a :class:`KVCache` to append to (from :func:`init_cache`), or None
        for a plain causal forward.

    Returns:
      ``(logits [B, T, vocab], cache)``: logits in the lm_head's output dtype and
      the cache with ``T`` more slots filled (None when none was given).
    """
    hidden, cache = self.model(input_ids, positions=positions, cache=cache)
    return self.logits(hidden), cache
