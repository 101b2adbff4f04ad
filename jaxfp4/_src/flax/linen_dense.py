"""``jaxfp4.linen.Dense4bit``: the Linen twin of the NNX layer.

The packed weight and its state live in the ``"quantized"`` collection, not in
``"params"``, so ``jax.grad`` over ``variables["params"]`` and any optax
optimizer over the params tree leave them alone. LoRA adapters (``lora_a``,
``lora_b``) are ordinary params; train only them with ``optax.partition``.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxfp4._src import repack as repack_lib
from jaxfp4._src.flax import dense
from jaxfp4._src.sharding.layout import shard_4bit
from jaxfp4._src.state import QuantState

QUANTIZED = "quantized"


class Dense4bit(nn.Module):
  """A 4-bit ``nn.Dense`` (bitsandbytes layout) with optional LoRA adapters.

  Attributes:
    features: output features.
    use_bias, dtype, param_dtype, kernel_init, bias_init: as for ``nn.Dense``.
    quant_type, blocksize, compress_statistics, quant_storage: as for
      ``jaxfp4.quantize_4bit``.
    lora_rank, lora_alpha, lora_dropout: LoRA adapters (rank 0 disables them);
      dropout needs a ``"dropout"`` rng unless ``deterministic=True``.
    implementation: ``matmul_4bit``'s implementation.
    sharding: a :class:`jaxfp4.sharding.WeightSharding`: ``init`` places the
      4-bit weight with :func:`jaxfp4.sharding.shard_4bit` and the product runs
      per shard (weights converted with :meth:`quantize_variables` must be
      placed the same way).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxfp4.linen
    >>> layer = jaxfp4.linen.Dense4bit(32, quant_type="nf4")
    >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 64)))
    >>> sorted(variables)
    ['params', 'quantized']
  """

  features: int
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  quant_type: str = "nf4"
  blocksize: int | None = None
  compress_statistics: bool = False
  quant_storage: Any = jnp.uint8
  lora_rank: int = 0
  lora_alpha: float | None = None
  lora_dropout: float = 0.0
  implementation: str | None = None
  sharding: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Applies the layer; ``deterministic=False`` turns LoRA dropout on."""
    dense.check_features("features", self.features)
    scale = dense.check_lora(self.lora_rank, self.lora_alpha, self.lora_dropout)
    in_features = jnp.shape(x)[-1]
    if self.has_variable(QUANTIZED, "weight"):
      packed: Any = self.get_variable(QUANTIZED, "weight")
      state: Any = self.get_variable(QUANTIZED, "quant_state")
      if isinstance(state, QuantState) and in_features != state.shape[1]:
        raise ValueError(f"Input `x` must have last dim {state.shape[1]} (in_features), got shape "
                         f"{jnp.shape(x)}.")
    else:
      kernel = self.kernel_init(self.make_rng("params"), (in_features, self.features), self.param_dtype)
      packed, state, _ = dense.quantize_kernel(
          kernel, quant_type=self.quant_type, blocksize=self.blocksize,
          compress_statistics=self.compress_statistics, quant_storage=self.quant_storage)
      if self.sharding is not None:
        packed, state = shard_4bit(packed, state, self.sharding)
      self.put_variable(QUANTIZED, "weight", packed)
      self.put_variable(QUANTIZED, "quant_state", state)
    dense.check_quantized(packed, state, in_features, self.features)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    lora_a = lora_b = dropout = None
    if self.lora_rank:
      lora_a = self.param("lora_a", nn.initializers.he_uniform(), (in_features, self.lora_rank),
                          self.param_dtype)
      lora_b = self.param("lora_b", nn.initializers.zeros_init(), (self.lora_rank, self.features),
                          self.param_dtype)
      if self.lora_dropout:
        layer = nn.Dropout(self.lora_dropout)
        dropout = lambda h: layer(h, deterministic=deterministic)  # noqa: E731
    return dense.dense_4bit(x, packed, state, bias=bias, lora_a=lora_a, lora_b=lora_b,
                            lora_scale=scale, dropout=dropout, dtype=self.dtype,
                            implementation=self.implementation, sharding=self.sharding)

  @staticmethod
  def quantize_variables(
      params: Mapping[str, Any],
      *,
      quant_type: str = "nf4",
      blocksize: int | None = None,
      compress_statistics: bool = False,
      quant_storage: Any = jnp.uint8,
  ) -> dict[str, Any]:
    """Converts an ``nn.Dense``'s params (``{"kernel", "bias"}``) into this layer's variables.

    Returns:
      ``{"params": {"bias"?}, "quantized": {"weight", "quant_state"}}``; LoRA
      params, if the layer has them, are created by ``init`` and merged in by
      the caller.
    """
    if "kernel" not in params:
      raise ValueError(f"`params` must hold an nn.Dense `kernel`, got keys {sorted(params)}.")
    extra = set(params) - {"kernel", "bias"}
    if extra:
      raise ValueError(f"Unexpected keys in `params`: {sorted(extra)}; allowed: kernel, bias.")
    packed, state, _ = dense.quantize_kernel(
        params["kernel"], quant_type=quant_type, blocksize=blocksize,
        compress_statistics=compress_statistics, quant_storage=quant_storage)
    out: dict[str, Any] = {"params": {}, QUANTIZED: {"weight": packed, "quant_state": state}}
    if "bias" in params:
      out["params"]["bias"] = params["bias"]
    return out


def repack_variables(variables: Mapping[str, Any], *, layout: str = "wgmma") -> dict[str, Any]:
  """``variables`` with every ``Dense4bit`` weight's bytes in K order ``layout`` (load time).

  The Linen form of :func:`jaxfp4.nnx.repack_model`: each ``{"weight", "quant_state"}``
  pair of the ``"quantized"`` collection goes through :func:`jaxfp4.repack_4bit`; weights
  whose format cannot take the order (scale blocks under 64, a float ``quant_storage``)
  keep theirs. Pure: returns a new tree.

  Example:
    >>> import jax, jax.numpy as jnp, jaxfp4.linen
    >>> layer = jaxfp4.linen.Dense4bit(64)
    >>> v = layer.init(jax.random.key(0), jnp.ones((1, 128)))
    >>> v2 = jaxfp4.linen.repack_variables(v)
    >>> v2["quantized"]["quant_state"].layout
    'wgmma'
  """
  if layout not in repack_lib.LAYOUTS:
    raise ValueError(f"`layout` must be one of {repack_lib.LAYOUTS}, got {layout!r}.")

  def walk(node):
    if not isinstance(node, Mapping):
      return node
    out = {k: walk(v) for k, v in node.items()}
    state = out.get("quant_state")
    if (isinstance(state, QuantState) and "weight" in out
        and repack_lib.can_repack(out["weight"], state, layout)):
      out["weight"], out["quant_state"] = repack_lib.repack_4bit(out["weight"], state,
                                                                 layout=layout)
    return out

  if QUANTIZED not in variables:
    raise ValueError(f"`variables` has no {QUANTIZED!r} collection (keys {sorted(variables)}).")
  return {**variables, QUANTIZED: walk(variables[QUANTIZED])}
