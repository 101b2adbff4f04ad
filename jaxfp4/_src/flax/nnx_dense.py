"""``jaxfp4.nnx.Dense4bit``: a drop-in 4-bit ``nnx.Linear`` with optional LoRA.

The packed weight and its ``QuantState`` live in :class:`QuantizedWeight`, a
variable type that is not an ``nnx.Param``: ``nnx.grad`` (which differentiates
``nnx.Param`` by default) and ``nnx.Optimizer(..., wrt=nnx.LoRAParam)`` never see
them, so the integer bytes can't reach a float optimizer (jax_ecosystem.md §C).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxfp4._src import repack as repack_lib
from jaxfp4._src.flax import dense
from jaxfp4._src.outlier_columns import check_outliers

default_kernel_init = nnx.initializers.lecun_normal()
# LoRA: A random, B zero, so a fresh adapter leaves the layer unchanged
# (Hu et al. 2021, §4.1); he_uniform for A follows nnx.LoRA.
default_lora_a_init = nnx.initializers.he_uniform()
default_bias_init = nnx.initializers.zeros_init()


class QuantizedWeight(nnx.Variable):
  """A frozen 4-bit weight: the packed bytes or their :class:`jaxfp4.QuantState`."""


class Dense4bit(nnx.Module):
  """A linear layer whose weight is stored in 4 bits (bitsandbytes layout).

  Takes ``nnx.Linear``'s arguments plus the quantization options; the kernel is
  drawn with ``kernel_init`` and quantized at construction.

  Args:
    in_features: input features.
    out_features: output features.
    use_bias: add a trainable ``nnx.Param`` bias.
    dtype: compute dtype; None promotes the input and the weight dtype.
    param_dtype: dtype of the initial kernel, the bias, the adapters, and of the
      dequantized weight (``QuantState.dtype``).
    kernel_init, bias_init: initializers, as for ``nnx.Linear``.
    quant_type: ``"nf4"``, ``"fp4"``, ``"e2m1"``, ``"mxfp4"`` or ``"nvfp4"``.
    blocksize: elements per scale block (None: the format's default).
    compress_statistics: double-quantize the absmax (bitsandbytes "nested").
    quant_storage: dtype the packed bytes are viewed as (bitsandbytes'
      ``quant_storage``).
    lora_rank: rank of the LoRA adapters; 0 disables them.
    lora_alpha: LoRA scale numerator (scale = alpha / rank); None means rank.
    lora_dropout: dropout rate on the adapter input (off in ``eval()`` mode).
    lora_param_type: variable type of the adapters.
    outlier_columns: input columns kept in ``param_dtype`` beside the 4-bit
      weight (the largest by magnitude; see ``jaxfp4.quantize_4bit_with_outliers``).
    quantized: ``(packed, state)`` or ``(packed, state, outliers)`` of an
      already quantized ``W[out, in]``; when given, ``kernel_init`` is not called.
    implementation: ``matmul_4bit``'s implementation (None, "xla", "pallas").
    rngs: random streams (``params``; ``dropout`` when ``lora_dropout > 0``).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxfp4.nnx
    >>> layer = jaxfp4.nnx.Dense4bit(64, 32, quant_type="nf4", lora_rank=4, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 64))).shape
    (2, 32)
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      *,
      use_bias: bool = True,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      kernel_init: Any = default_kernel_init,
      bias_init: Any = default_bias_init,
      quant_type: str = "nf4",
      blocksize: int | None = None,
      compress_statistics: bool = False,
      quant_storage: Any = jnp.uint8,
      lora_rank: int = 0,
      lora_alpha: float | None = None,
      lora_dropout: float = 0.0,
      lora_param_type: type[nnx.Variable] = nnx.LoRAParam,
      outlier_columns: int = 0,
      quantized: tuple | None = None,
      implementation: str | None = None,
      rngs: nnx.Rngs,
  ):
    self.in_features = dense.check_features("in_features", in_features)
    self.out_features = dense.check_features("out_features", out_features)
    self.use_bias = use_bias
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.implementation = implementation
    # A jaxfp4.sharding.WeightSharding once jaxfp4.sharding.shard_model places the layer.
    self.sharding = None
    if quantized is None:
      kernel = kernel_init(rngs.params(), (in_features, out_features), param_dtype)
      packed, state, outliers = dense.quantize_kernel(
          kernel, quant_type=quant_type, blocksize=blocksize,
          compress_statistics=compress_statistics, quant_storage=quant_storage,
          outlier_columns=outlier_columns)
    else:
      if not isinstance(quantized, (tuple, list)) or len(quantized) not in (2, 3):
        raise ValueError("`quantized` must be (packed, state) or (packed, state, outliers), got "
                         f"{type(quantized).__name__}"
                         f"{f' of {len(quantized)}' if isinstance(quantized, (tuple, list)) else ''}.")
      packed, state, outliers = (*quantized, None) if len(quantized) == 2 else quantized
      dense.check_quantized(packed, state, in_features, out_features)
      if outliers is not None:
        check_outliers(outliers, state)
    self.weight = QuantizedWeight(packed)
    self.quant_state = QuantizedWeight(state)
    self.outliers = QuantizedWeight(outliers) if outliers is not None else None
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias else None
    self.lora_rank, self.lora_scale, self.use_rslora = 0, 0.0, False
    self.lora_alpha: float | None = None
    self.lora_a: nnx.Variable | None = nnx.data(None)
    self.lora_b: nnx.Variable | None = nnx.data(None)
    self.lora_dropout: nnx.Dropout | None = nnx.data(None)
    self.set_lora(lora_rank, alpha=lora_alpha, dropout=lora_dropout,
                  param_type=lora_param_type, rngs=rngs)

  def set_lora(self, rank: int, *, alpha: float | None = None, dropout: float = 0.0,
               param_type: type[nnx.Variable] = nnx.LoRAParam, rngs: nnx.Rngs | None = None,
               use_rslora: bool = False) -> None:
    """Replaces the layer's adapters by fresh ones (rank 0 removes them).

    ``A`` is drawn from ``rngs.params()`` and ``B`` is zero, so the output does
    not change until the adapters are trained. The update is scaled by
    ``alpha / rank``, or ``alpha / sqrt(rank)`` with ``use_rslora`` (rank-stabilized
    LoRA, Kalajdzievski 2023, as PEFT's ``use_rslora``).
    """
    scale = dense.check_lora(rank, alpha, dropout)
    if use_rslora and rank:
      scale = scale * rank / rank**0.5
    dt = self.param_dtype
    self.lora_a = self.lora_b = self.lora_dropout = None
    if rank:
      if rngs is None:
        raise ValueError("`rngs` is required to initialize LoRA adapters (rank > 0).")
      self.lora_a = param_type(default_lora_a_init(rngs.params(), (self.in_features, rank), dt))
      self.lora_b = param_type(jnp.zeros((rank, self.out_features), dt))
      self.lora_dropout = nnx.Dropout(dropout, rngs=rngs) if dropout else None
    self.lora_rank, self.lora_alpha, self.lora_scale = rank, (alpha if rank else None), scale
    self.use_rslora = bool(use_rslora and rank)

  def _arrays(self) -> dict:
    """The arguments of :func:`dense.dense_4bit` this layer holds."""
    return dict(
        packed=self.weight.get_value(), state=self.quant_state.get_value(),
        bias=None if self.bias is None else self.bias.get_value(),
        lora_a=None if self.lora_a is None else self.lora_a.get_value(),
        lora_b=None if self.lora_b is None else self.lora_b.get_value(),
        lora_scale=self.lora_scale, dropout=self.lora_dropout)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the layer to ``x[..., in_features]``."""
    a = self._arrays()
    return dense.dense_4bit(
        x, a.pop("packed"), a.pop("state"), **a, dtype=self.dtype,
        implementation=self.implementation,
        outliers=None if self.outliers is None else self.outliers.get_value(),
        sharding=self.sharding)

  @classmethod
  def from_linear(
      cls,
      linear: nnx.Linear,
      *,
      quant_type: str = "nf4",
      blocksize: int | None = None,
      compress_statistics: bool = False,
      quant_storage: Any = jnp.uint8,
      lora_rank: int = 0,
      lora_alpha: float | None = None,
      lora_dropout: float = 0.0,
      outlier_columns: int = 0,
      calibration: jax.Array | None = None,
      implementation: str | None = None,
      rngs: nnx.Rngs | None = None,
  ) -> "Dense4bit":
    """Quantizes an ``nnx.Linear`` (its kernel and bias are kept as they are).

    ``rngs`` is needed only for LoRA adapters. With ``outlier_columns``, that
    many input columns stay in high precision, ranked by weight magnitude or,
    given ``calibration`` inputs ``[..., in]``, by the output they produce.

    Example:
      >>> from flax import nnx
      >>> import jaxfp4.nnx
      >>> q = jaxfp4.nnx.Dense4bit.from_linear(nnx.Linear(64, 8, rngs=nnx.Rngs(0)))
    """
    if not isinstance(linear, nnx.Linear):
      raise ValueError(f"`linear` must be an nnx.Linear, got {type(linear).__name__}.")
    if lora_rank and rngs is None:
      raise ValueError("`rngs` is required to initialize LoRA adapters (lora_rank > 0).")
    kernel = linear.kernel.get_value()
    quantized = dense.quantize_kernel(
        kernel, quant_type=quant_type, blocksize=blocksize,
        compress_statistics=compress_statistics, quant_storage=quant_storage,
        outlier_columns=outlier_columns, calibration=calibration)
    bias = None if linear.bias is None else linear.bias.get_value()
    return cls(linear.in_features, linear.out_features, use_bias=bias is not None,
               dtype=linear.dtype, param_dtype=kernel.dtype,
               bias_init=(lambda *_: bias), quantized=quantized,
               lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
               implementation=implementation, rngs=rngs or nnx.Rngs(0))

  def nbytes(self) -> int:
    """Bytes of the stored 4-bit weight, its state and kept columns (bias and adapters excluded)."""
    w = self.weight.get_value()
    extra = 0 if self.outliers is None else self.outliers.get_value().nbytes()
    return int(w.size * w.dtype.itemsize) + self.quant_state.get_value().nbytes() + extra


def apply_shared_input(layers: Sequence[nnx.Module], x: jax.Array) -> tuple[jax.Array, ...]:
  """``tuple(layer(x) for layer in layers)``, with one 4-bit launch where it pays.

  For the projections of a decoder layer that read the same input (q/k/v,
  gate/up): when every layer is a :class:`Dense4bit` with the same compute
  ``dtype`` and ``implementation`` and no outlier columns or sharding, their
  4-bit products go through :func:`jaxfp4.matmul_4bit_group` (one GEMV
  launch at decode batch sizes; each layer's own product up to the order of
  float32 sums). Any other
  layers, ``nnx.Linear`` included, are called one by one.

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp, jaxfp4.nnx
    >>> q = jaxfp4.nnx.Dense4bit(64, 32, rngs=nnx.Rngs(0))
    >>> k = jaxfp4.nnx.Dense4bit(64, 16, rngs=nnx.Rngs(1))
    >>> [y.shape for y in jaxfp4.nnx.apply_shared_input((q, k), jnp.ones((1, 64)))]
    [(1, 32), (1, 16)]
  """
  layers = tuple(layers)
  group = [layer for layer in layers if isinstance(layer, Dense4bit)]
  first = group[0] if group else None
  if first is None or len(layers) < 2 or len(group) != len(layers) or not all(
      layer.outliers is None and layer.sharding is None
      and layer.dtype == first.dtype and layer.implementation == first.implementation
      for layer in group):
    return tuple(layer(x) for layer in layers)
  return dense.dense_4bit_group(x, [layer._arrays() for layer in group], dtype=first.dtype,
                                implementation=first.implementation)


def merge_lora(module: nnx.Module) -> nnx.Module:
  """Folds every ``Dense4bit``'s LoRA adapters into a re-quantized weight, in place.

  ``W' = quantize(dequantize(W) + alpha/r * (A @ B).T)`` with the layer's own
  format, block size, nesting and storage; the adapters are then removed.

  Args:
    module: any NNX module (the layers are found by graph traversal).

  Returns:
    ``module``, for chaining.

  Example:
    >>> from flax import nnx
    >>> import jaxfp4.nnx
    >>> layer = jaxfp4.nnx.Dense4bit(64, 8, lora_rank=2, rngs=nnx.Rngs(0))
    >>> _ = jaxfp4.nnx.merge_lora(layer)
    >>> layer.lora_rank
    0
  """
  if not isinstance(module, nnx.Module):
    raise ValueError(f"`module` must be an nnx.Module, got {type(module).__name__}.")
  layers = [node for _, node in nnx.iter_graph(module) if isinstance(node, Dense4bit)]
  for layer in {id(l): l for l in layers}.values():
    lora_a, lora_b = layer.lora_a, layer.lora_b
    if not layer.lora_rank or lora_a is None or lora_b is None:
      continue
    packed, state = layer.weight.get_value(), layer.quant_state.get_value()
    outliers = None if layer.outliers is None else layer.outliers.get_value()
    w = dense.merged_weight(packed, state, lora_a.get_value(), lora_b.get_value(),
                            layer.lora_scale, outliers)
    packed, state, outliers = dense.requantize_like(w, state, packed, outliers)
    if layer.sharding is not None:
      from jaxfp4._src.sharding.layout import shard_4bit  # one-way: sharding imports this module
      packed, state = shard_4bit(packed, state, layer.sharding)
    layer.weight.set_value(packed)
    layer.quant_state.set_value(state)
    if outliers is not None and layer.outliers is not None:
      layer.outliers.set_value(outliers)
    layer.set_lora(0)
  return module


def repack_model(module: nnx.Module, *, layout: str = "wgmma") -> list[str]:
  """Rewrites every ``Dense4bit``'s bytes in K order ``layout``, in place (load time).

  ``"wgmma"`` is the Mosaic GPU kernel's own order: its decode steps then run without a
  permutation of the activations per product (:func:`jaxfp4.repack_4bit`). Layers whose
  format cannot take it (scale blocks under 64, K not a multiple of 64, a float
  ``quant_storage``) keep theirs. Checkpoints written afterwards still hold bitsandbytes'
  bytes.

  Args:
    module: any NNX module (the layers are found by graph traversal).
    layout: ``"wgmma"``, or ``"bnb"`` to undo.

  Returns:
    The dotted paths of the layers now in ``layout``.

  Example:
    >>> from flax import nnx
    >>> import jaxfp4.nnx
    >>> layer = jaxfp4.nnx.Dense4bit(128, 64, rngs=nnx.Rngs(0))
    >>> len(jaxfp4.nnx.repack_model(layer))
    1
    >>> layer.quant_state.get_value().layout
    'wgmma'
  """
  if not isinstance(module, nnx.Module):
    raise ValueError(f"`module` must be an nnx.Module, got {type(module).__name__}.")
  if layout not in repack_lib.LAYOUTS:
    raise ValueError(f"`layout` must be one of {repack_lib.LAYOUTS}, got {layout!r}.")
  done, seen = [], set()
  for path, node in nnx.iter_graph(module):
    if not isinstance(node, Dense4bit) or id(node) in seen:
      continue
    seen.add(id(node))
    packed, state = node.weight.get_value(), node.quant_state.get_value()
    if not repack_lib.can_repack(packed, state, layout):
      continue
    packed, state = repack_lib.repack_4bit(packed, state, layout=layout)
    node.weight.set_value(packed)
    node.quant_state.set_value(state)
    done.append(".".join(str(p) for p in path))
  return done


def add_lora(
    module: nnx.Module,
    *,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    rngs: nnx.Rngs,
    skip: Callable[[str, Dense4bit], bool] | None = None,
    target_modules: str | Sequence[str] | None = None,
    use_rslora: bool = False,
) -> nnx.Module:
  """Gives every ``Dense4bit`` in ``module`` fresh LoRA adapters, in place.

  Use it after loading a 4-bit checkpoint to start QLoRA training.

  Args:
    module: any NNX module.
    rank, alpha, dropout: the adapters' rank, scale numerator and input dropout.
    rngs: random streams for ``A`` (and dropout).
    skip: ``(path, layer) -> bool`` for layers to leave without adapters.
    target_modules: only these layers get adapters, as PEFT's ``LoraConfig``
      says it: a list of names, each matching a path equal to it or ending in
      ``"." + name`` (``["q_proj", "v_proj"]``), or one regex that must match
      the whole dotted path. None: every layer.
    use_rslora: scale by ``alpha / sqrt(rank)`` (PEFT's ``use_rslora``).

  Returns:
    ``module``.

  Example:
    >>> from flax import nnx
    >>> import jaxfp4.nnx
    >>> layer = jaxfp4.nnx.Dense4bit(64, 8, rngs=nnx.Rngs(0))
    >>> _ = jaxfp4.nnx.add_lora(layer, rank=4, rngs=nnx.Rngs(1))
    >>> layer.lora_a.shape
    (64, 4)
  """
  if not isinstance(module, nnx.Module):
    raise ValueError(f"`module` must be an nnx.Module, got {type(module).__name__}.")
  dense.check_lora(rank, alpha, dropout)
  targeted = target_matcher(target_modules)
  seen = set()
  for path, node in list(nnx.iter_graph(module)):
    if isinstance(node, Dense4bit) and id(node) not in seen:
      seen.add(id(node))
      name = ".".join(str(p) for p in path)
      if (skip is None or not skip(name, node)) and targeted(name):
        node.set_lora(rank, alpha=alpha, dropout=dropout, rngs=rngs, use_rslora=use_rslora)
  if not seen:
    raise ValueError(f"`module` ({type(module).__name__}) has no Dense4bit layer to give adapters; "
                     "quantize it first (jaxfp4.nnx.quantize_model) or load a 4-bit checkpoint.")
  return module


def target_matcher(target_modules: str | Sequence[str] | None) -> Callable[[str], bool]:
  """``path -> bool`` with PEFT's ``target_modules`` rules (``check_target_module_exists``).

  A string is a regex matched against the whole dotted path; a list of names
  matches paths equal to a name or ending in ``"." + name``; None matches all.

  Example:
    >>> match = target_matcher(["q_proj", "v_proj"])
    >>> match("model.layers.0.self_attn.q_proj"), match("model.layers.0.mlp.up_proj")
    (True, False)
  """
  if target_modules is None:
    return lambda path: True
  if isinstance(target_modules, str):
    try:
      pattern = re.compile(target_modules)
    except re.error as e:
      raise ValueError(f"`target_modules` is not a valid regex ({e}): {target_modules!r}.") from None
    return lambda path: pattern.fullmatch(path) is not None
  names = tuple(target_modules) if isinstance(target_modules, (list, tuple, set, frozenset)) else None
  if not names or not all(isinstance(n, str) and n for n in names):
    raise ValueError("`target_modules` must be a regex string or a non-empty list of module names, "
                     f"got {target_modules!r}.")
  return lambda path: any(path == n or path.endswith("." + n) for n in names)
