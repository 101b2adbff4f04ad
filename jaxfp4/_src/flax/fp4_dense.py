"""``jaxfp4.nnx.FP4Dense``: a linear layer trained with FP4 GEMMs, and model conversion.

The kernel stays a float32 (``param_dtype``) master weight that the optimizer
updates. Each call quantizes the GEMM operands according to the recipe
(``jaxfp4.training.fp4_matmul``). The papers keep the most sensitive layers in
high precision: NVIDIA keeps the first 2 and last 8 blocks of its 12B model.
:func:`convert_to_fp4` has ``keep_first`` and ``keep_last`` for that.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxfp4._src.flax import dense
from jaxfp4._src.flax.quantize_model import _matcher, replace_linears
from jaxfp4._src.training.fp4_linear import Recipe, fp4_matmul, get_recipe

default_kernel_init = nnx.initializers.lecun_normal()
default_bias_init = nnx.initializers.zeros_init()


class FP4Dense(nnx.Module):
  """``nnx.Linear`` whose forward and backward GEMMs run on FP4-quantized operands.

  Args:
    in_features, out_features, use_bias, dtype, param_dtype, kernel_init,
      bias_init: as for ``nnx.Linear``.
    recipe: ``"nvfp4"``, ``"mxfp4"``, ``"dge"`` or ``"ste"`` (see
      ``jaxfp4.training.fp4_matmul``), or a ``jaxfp4.training.Recipe``.
    rngs: random streams: ``params`` for the initial weights, ``quant`` (or the
      default stream) for the stochastic rounding of gradients, one key per call.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxfp4.nnx
    >>> layer = jaxfp4.nnx.FP4Dense(64, 32, recipe="nvfp4", rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((16, 64))).shape
    (16, 32)
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      *,
      recipe: str | Recipe = "nvfp4",
      use_bias: bool = True,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      kernel_init: Any = default_kernel_init,
      bias_init: Any = default_bias_init,
      rngs: nnx.Rngs,
  ):
    self.in_features = dense.check_features("in_features", in_features)
    self.out_features = dense.check_features("out_features", out_features)
    self.recipe = get_recipe(recipe)
    self.use_bias, self.dtype, self.param_dtype = use_bias, dtype, param_dtype
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype))
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias else None
    self.rngs = rngs

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    kernel = self.kernel[...]
    dt = jnp.dtype(self.dtype) if self.dtype is not None else jnp.result_type(x.dtype, kernel.dtype)
    needs_key = self.recipe.backward and self.recipe.stochastic_grads
    key = self.rngs.quant() if needs_key else None
    y = fp4_matmul(x.astype(dt), kernel.astype(dt), recipe=self.recipe, key=key)
    if self.bias is not None:
      y = y + self.bias[...].astype(dt)
    return y

  @classmethod
  def from_linear(cls, linear: nnx.Linear, *, recipe: str | Recipe = "nvfp4",
                  rngs: nnx.Rngs) -> "FP4Dense":
    """An FP4Dense with ``linear``'s kernel and bias."""
    if not isinstance(linear, nnx.Linear):
      raise ValueError(f"`linear` must be an nnx.Linear, got {type(linear).__name__}.")
    kernel = linear.kernel[...]
    bias = None if linear.bias is None else linear.bias[...]
    layer = cls(linear.in_features, linear.out_features, recipe=recipe, use_bias=bias is not None,
                dtype=linear.dtype, param_dtype=kernel.dtype, kernel_init=lambda *_: kernel,
                bias_init=lambda *_: bias, rngs=nnx.Rngs(0))  # the initializers draw nothing
    layer.rngs = rngs
    return layer


_BLOCK = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def convert_to_fp4(
    model: nnx.Module,
    *,
    recipe: str | Recipe = "nvfp4",
    skip: str | Sequence[str] | None = ("lm_head",),
    keep_first: int = 0,
    keep_last: int = 0,
    rngs: nnx.Rngs,
) -> list[str]:
  """Replaces ``model``'s ``nnx.Linear`` layers by :class:`FP4Dense`, in place.

  Args:
    model: any NNX module.
    recipe: the FP4 training recipe (as for :class:`FP4Dense`).
    skip: names or globs kept in high precision (the output head by default,
      as every FP4 recipe does).
    keep_first, keep_last: keep the linear layers of the first/last blocks in
      high precision; a block is the first integer in a layer's path
      (``model.layers.3.mlp.up_proj`` is block 3).
    rngs: random streams for stochastic rounding.

  Returns:
    The paths of the converted layers.
  """
  if not isinstance(model, nnx.Module):
    raise ValueError(f"`model` must be an nnx.Module, got {type(model).__name__}.")
  for name, v in (("keep_first", keep_first), ("keep_last", keep_last)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise ValueError(f"`{name}` must be an int >= 0, got {v!r}.")
  get_recipe(recipe)
  match = _matcher(skip)
  paths = [".".join(map(str, p)) for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Linear) and p]
  blocks = [int(m.group(1)) for p in paths if (m := _BLOCK.search(p))]
  num_blocks = max(blocks) + 1 if blocks else 0

  def make(name, linear):
    m = _BLOCK.search(name)
    if match(name, linear) or (m and (int(m.group(1)) < keep_first
                                      or int(m.group(1)) >= num_blocks - keep_last)):
      return None
    return FP4Dense.from_linear(linear, recipe=recipe, rngs=rngs)

  return [name for name, _, new in replace_linears(model, make) if new is not None]
