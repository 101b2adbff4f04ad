"""``quantize_model``: replace every ``nnx.Linear`` of a model by ``Dense4bit``.

The seeds advise keeping sensitive layers (embeddings, the output head) in high
precision; ``skip`` selects them by path pattern or predicate.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxfp4._src.flax.nnx_dense import Dense4bit

SkipFn = Callable[[str, nnx.Module], bool]


@dataclasses.dataclass(frozen=True)
class LayerReport:
  """One ``nnx.Linear`` that ``quantize_model`` saw."""

  path: str
  in_features: int
  out_features: int
  quantized: bool
  bytes_before: int
  bytes_after: int


@dataclasses.dataclass(frozen=True)
class QuantizeReport:
  """Parameters and bytes of a model before and after ``quantize_model``.

  ``bytes_*`` count every array in the model's state (weights, biases,
  embeddings, norms, adapters, quantization state).
  """

  layers: tuple[LayerReport, ...]
  params: int
  bytes_before: int
  bytes_after: int

  @property
  def num_quantized(self) -> int:
    return sum(l.quantized for l in self.layers)

  @property
  def ratio(self) -> float:
    return self.bytes_after / self.bytes_before if self.bytes_before else 1.0

  def __str__(self) -> str:
    w = max([len(l.path) for l in self.layers] + [5])
    rows = [f"{'layer':<{w}}  {'shape [in, out]':>16}  {'format':>8}  {'bytes before':>13}  {'bytes after':>12}"]
    for l in self.layers:
      shape = f"[{l.in_features}, {l.out_features}]"
      rows.append(f"{l.path:<{w}}  {shape:>16}  {'4-bit' if l.quantized else 'kept':>8}  "
                  f"{l.bytes_before:>13,}  {l.bytes_after:>12,}")
    rows.append(f"{self.num_quantized} of {len(self.layers)} linear layers quantized; "
                f"{self.params:,} parameters; model {self.bytes_before:,} -> {self.bytes_after:,} bytes "
                f"({self.ratio:.3f}x)")
    return "\n".join(rows)


def _nbytes(leaf) -> int:
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # nnx.Rngs / Dropout keys
    leaf = jax.random.key_data(leaf)
  return math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize


def state_nbytes(module: nnx.Module) -> int:
  """Bytes of every array in a module's state."""
  return int(sum(_nbytes(l) for l in jax.tree_util.tree_leaves(nnx.state(module))))


def _matcher(skip) -> SkipFn:
  if skip is None:
    return lambda path, m: False
  if callable(skip):
    return skip
  if isinstance(skip, str):
    skip = (skip,)
  try:
    patterns = tuple(skip)
  except TypeError:  # not iterable (skip=3): the ValueError below names it
    patterns = (skip,)
  if not all(isinstance(p, str) for p in patterns):
    raise ValueError(f"`skip` must be a pattern, a sequence of patterns or a callable, got {skip!r}.")

  def match(path: str, module) -> bool:
    parts = path.split(".")
    # A bare name matches any path component ("lm_head", "q_proj"); anything
    # else is a glob on the dotted path ("layers.0.*").
    return any(p in parts or fnmatch.fnmatchcase(path, p) for p in patterns)
  return match


def _get(node, key):
  return getattr(node, key) if isinstance(key, str) and hasattr(node, key) else node[key]


def _set(node, key, value):
  if isinstance(node, nnx.Module) and isinstance(key, str):
    setattr(node, key, value)
  else:
    node[key] = value


def quantize_model(
    model: nnx.Module,
    *,
    quant_type: str = "nf4",
    blocksize: int | None = None,
    compress_statistics: bool = False,
    quant_storage: Any = jnp.uint8,
    skip: str | Sequence[str] | SkipFn | None = None,
    lora_rank: int = 0,
    lora_alpha: float | None = None,
    lora_dropout: float = 0.0,
    outlier_columns: int = 0,
    rngs: nnx.Rngs | None = None,
) -> QuantizeReport:
  """Replaces every ``nnx.Linear`` in ``model`` by a ``Dense4bit``, in place.

  Args:
    model: any NNX module.
    quant_type, blocksize, compress_statistics, quant_storage: as for ``quantize_4bit``.
    skip: layers to keep in high precision: names matched against any component
      of the dotted path (``"lm_head"``), globs on the whole path
      (``"layers.0.*"``), or a predicate ``(path, layer) -> bool``.
    lora_rank, lora_alpha, lora_dropout: adapters for every quantized layer.
    outlier_columns: input columns per layer kept in high precision
      (by weight magnitude; ``Dense4bit.from_linear`` also takes calibration inputs).
    rngs: random streams for the adapters (required when ``lora_rank > 0``).

  Returns:
    A :class:`QuantizeReport` (``print`` it for a table).

  Example:
    >>> from flax import nnx
    >>> import jaxfp4.nnx
    >>> model = nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0)), nnx.Linear(64, 8, rngs=nnx.Rngs(1)))
    >>> report = jaxfp4.nnx.quantize_model(model, quant_type="nf4", skip="layers.1")
    >>> report.num_quantized
    1
  """
  if not isinstance(model, nnx.Module):
    raise ValueError(f"`model` must be an nnx.Module, got {type(model).__name__}.")
  match = _matcher(skip)
  bytes_before = state_nbytes(model)
  params = sum(math.prod(l.shape) for l in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))

  def make(name: str, linear: nnx.Linear):
    if match(name, linear):
      return None
    return Dense4bit.from_linear(
        linear, quant_type=quant_type, blocksize=blocksize,
        compress_statistics=compress_statistics, quant_storage=quant_storage,
        lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        outlier_columns=outlier_columns, rngs=rngs)

  rows = [LayerReport(name, linear.in_features, linear.out_features, new is not None,
                      state_nbytes(linear), state_nbytes(linear if new is None else new))
          for name, linear, new in replace_linears(model, make)]
  return QuantizeReport(tuple(rows), int(params), bytes_before, state_nbytes(model))


def replace_linears(model: nnx.Module, make: Callable[[str, nnx.Linear], nnx.Module | None]):
  """Replaces each ``nnx.Linear`` of ``model`` by ``make(path, layer)`` (None keeps it), in place.

  Returns:
    ``[(path, old layer, new layer or None)]`` in traversal order.
  """
  found: dict[int, tuple[list, nnx.Linear]] = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Linear) and path:
      found.setdefault(id(node), ([], node))[0].append(path)
  out, replaced = [], {}
  for paths, linear in found.values():
    name = ".".join(str(k) for k in paths[0])
    new = make(name, linear)
    if new is not None:
      for path in paths:
        _replace(model, path, new)
      replaced[id(linear)] = new
    out.append((name, linear, new))
  # A layer shared at several paths stays shared. iter_graph yields a shared
  # node at its first path only; the next reference shows up once that one is
  # replaced. (`found` keeps every old layer alive, so the ids stay unique.)
  while rest := [(p, n) for p, n in nnx.iter_graph(model)
                 if isinstance(n, nnx.Linear) and id(n) in replaced]:
    for path, linear in rest:
      _replace(model, path, replaced[id(linear)])
  return out


def _replace(model, path, new) -> None:
  parent = model
  for k in path[:-1]:
    parent = _get(parent, k)
  _set(parent, path[-1], new)
