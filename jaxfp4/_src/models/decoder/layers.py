"""The blocks of a decoder layer: RMSNorm, attention, MLP, and the layer itself.

Attribute paths mirror Hugging Face's parameter names
(``model.layers.0.self_attn.q_proj``), so 4-bit layers replace ``nnx.Linear``
by HF path. The family switches (``families.Family``) pick the variant:
Gemma's ``1 + w`` norm, Qwen3/Gemma 3's q/k norm, Phi-3's fused projections,
Gemma 2/3's extra norms around attention and MLP.

Numerics follow transformers: norms and RoPE tables in float32, attention
scores and softmax in float32 (in the order of the default SDPA kernel, see
:class:`Attention`), activations evaluated in float32 and rounded once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxfp4._src.flax.nnx_dense import apply_shared_input
from jaxfp4._src.models.decoder.config import DecoderConfig
from jaxfp4._src.models.decoder.rope import apply_rope

LinearFactory = Callable[[str, int, int, bool], nnx.Module]


class RMSNorm(nnx.Module):
  """transformers' RMSNorm: normalize in float32, then scale.

  ``offset=False`` (Llama and most): cast back, multiply by ``weight`` in the
  activation dtype. ``offset=True`` (Gemma): multiply by ``1 + weight`` in
  float32, then cast; the weight starts at zero.
  """

  def __init__(self, size: int, *, eps: float, dtype: Any, param_dtype: Any, offset: bool = False):
    self.weight = nnx.Param((jnp.zeros if offset else jnp.ones)((size,), param_dtype))
    self.eps = eps
    self.dtype = dtype
    self.offset = offset

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.eps)
    w = self.weight[...].reshape((1,) * (x.ndim - 1) + (-1,))
    if self.offset:
      return (y * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    return w.astype(self.dtype) * y.astype(x.dtype).astype(self.dtype)


def activation(name: str, x: jax.Array) -> jax.Array:
  """``name`` (transformers' ACT2FN key) evaluated in float32 and rounded once, as torch does."""
  x32 = x.astype(jnp.float32)
  if name == "silu":
    y = jax.nn.silu(x32)
  elif name in ("gelu_pytorch_tanh", "gelu_new"):
    y = jax.nn.gelu(x32, approximate=True)
  else:
    y = jax.nn.gelu(x32, approximate=False)
  return y.astype(x.dtype)


class Attention(nnx.Module):
  """Grouped-query self-attention with RoPE and an optional KV cache."""

  def __init__(self, config: DecoderConfig, prefix: str, *, linear: LinearFactory, dtype: Any,
               param_dtype: Any = jnp.float32):
    c, fam = config, config.family
    self.config = c
    self.dtype = dtype
    h, kv, d = c.heads()
    qkv_bias = c.attention_bias or fam.qkv_bias
    if fam.fused:
      self.qkv_proj = linear(f"{prefix}.qkv_proj", c.hidden_size, (h + 2 * kv) * d, qkv_bias)
    else:
      self.q_proj = linear(f"{prefix}.q_proj", c.hidden_size, h * d, qkv_bias)
      self.k_proj = linear(f"{prefix}.k_proj", c.hidden_size, kv * d, qkv_bias)
      self.v_proj = linear(f"{prefix}.v_proj", c.hidden_size, kv * d, qkv_bias)
    self.o_proj = linear(f"{prefix}.o_proj", h * d, c.hidden_size, c.attention_bias)
    if fam.qk_norm:
      norm = dict(eps=c.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, offset=fam.norm_offset)
      self.q_norm = RMSNorm(d, **norm)
      self.k_norm = RMSNorm(d, **norm)

  def _qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    c = self.config
    if c.family.fused:  # Phi-3: [q | k | v] along the output features
      qkv = self.qkv_proj(x)
      h, kv, d = c.heads()
      nq, nkv = h * d, kv * d
      return qkv[..., :nq], qkv[..., nq:nq + nkv], qkv[..., nq + nkv:]
    # One 4-bit launch for the three projections at decode batch sizes.
    q, k, v = apply_shared_input((self.q_proj, self.k_proj, self.v_proj), x)
    return q, k, v

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
    h, kv, d = c.heads()
    dtype = self.dtype
    q, k, v = self._qkv(x)
    q = q.astype(dtype).reshape(bsz, t, h, d)
    k = k.astype(dtype).reshape(bsz, t, kv, d)
    v = v.astype(dtype).reshape(bsz, t, kv, d)
    if c.family.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache_kv is not None:
      if start is None:
        raise ValueError("`start` (the first cache slot to write) is required with `cache_kv`.")
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
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * c.attention_scale
    if c.attn_logit_softcapping is not None:  # Gemma 2: cap * tanh(scores / cap), before the mask
      cap = c.attn_logit_softcapping
      scores = jnp.tanh(scores / cap) * cap
    scores = jnp.where(mask[None, None, None], scores, jnp.finfo(jnp.float32).min)
    p = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    denom = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bkgts,bskd->bkgtd", p.astype(dtype), v, preferred_element_type=jnp.float32) / denom
    out = jnp.transpose(out.astype(dtype), (0, 3, 1, 2, 4)).reshape(bsz, t, h * d)
    return self.o_proj(out).astype(dtype), cache_kv


class MLP(nnx.Module):
  """``down_proj(act(gate_proj(x)) * up_proj(x))``; Phi-3 computes gate and up as one product."""

  def __init__(self, config: DecoderConfig, prefix: str, *, linear: LinearFactory, dtype: Any):
    c = config
    self.dtype = dtype
    assert c.hidden_act is not None  # DecoderConfig.__post_init__ resolves the family default
    self.act: str = c.hidden_act
    self.fused = c.family.fused
    if self.fused:
      self.gate_up_proj = linear(f"{prefix}.gate_up_proj", c.hidden_size, 2 * c.intermediate_size, c.mlp_bias)
    else:
      self.gate_proj = linear(f"{prefix}.gate_proj", c.hidden_size, c.intermediate_size, c.mlp_bias)
      self.up_proj = linear(f"{prefix}.up_proj", c.hidden_size, c.intermediate_size, c.mlp_bias)
    self.down_proj = linear(f"{prefix}.down_proj", c.intermediate_size, c.hidden_size, c.mlp_bias)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.fused:  # modeling_phi3.py: gate is the first half of gate_up_proj's output
      gate, up = jnp.split(self.gate_up_proj(x), 2, axis=-1)
    else:
      gate, up = apply_shared_input((self.gate_proj, self.up_proj), x)
    act = activation(self.act, gate.astype(self.dtype))
    return self.down_proj(act * up.astype(self.dtype)).astype(self.dtype)


class DecoderLayer(nnx.Module):
  """Pre-norm attention and MLP blocks with residuals (Gemma 2/3: norms after them too)."""

  def __init__(self, config: DecoderConfig, prefix: str, *, linear: LinearFactory, dtype: Any, param_dtype: Any):
    fam = config.family
    self.sandwich = fam.sandwich_norm
    self.self_attn = Attention(config, f"{prefix}.self_attn", linear=linear, dtype=dtype, param_dtype=param_dtype)
    self.mlp = MLP(config, f"{prefix}.mlp", linear=linear, dtype=dtype)
    norm = dict(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, offset=fam.norm_offset)
    self.input_layernorm = RMSNorm(config.hidden_size, **norm)
    self.post_attention_layernorm = RMSNorm(config.hidden_size, **norm)
    if self.sandwich:
      self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, **norm)
      self.post_feedforward_layernorm = RMSNorm(config.hidden_size, **norm)

  def __call__(self, x, cos, sin, *, mask, cache_kv=None, layer=0, start=None):
    h, cache_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask=mask, cache_kv=cache_kv,
                                 layer=layer, start=start)
    if self.sandwich:  # modeling_gemma2.py: post_attention_layernorm normalizes the attention output
      x = x + self.post_attention_layernorm(h)
      return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x))), cache_kv
    x = x + h
    return x + self.mlp(self.post_attention_layernorm(x)), cache_kv
