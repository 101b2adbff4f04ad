"""``quantize_model``: replace every ``nnx.Linear`` of a model by ``Dense4bit``.

The seeds advise keeping sensitive layers (embeddings, the output head) in high
precision; ``skip`` selects them by path pattern or predicate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import math
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxfp4._src.flax.nnx_dense import Dense4bit, target_matcher

SkipFn = Callable[[str, nnx.Module], bool]


@dataclasses.dataclass(frozen=True)
class LayerReport:
  """One linear layer that ``quantize_model`` saw; ``kept_because`` says why an
  ``nnx.LinearGeneral`` / ``nnx.Einsum`` was left in high precision."""

  path: str
  in_features: int
  out_features: int
  quantized: bool
  bytes_before: int
  bytes_after: int
  kept_because: str = ""
  format: str = ""  # e.g. "nf4+dq@64" (quant type, nested absmax, block size), "bfloat16", "kept"


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
    names = [l.format or ("4-bit" if l.quantized else "kept") for l in self.layers]
    fw = max([len(n) for n in names] + [6])
    rows = [f"{'layer':<{w}}  {'shape [in, out]':>16}  {'format':<{fw}}  {'bytes before':>13}  {'bytes after':>12}"]
    for l, name in zip(self.layers, names):
      shape = f"[{l.in_features}, {l.out_features}]"
      rows.append(f"{l.path:<{w}}  {shape:>16}  {name:<{fw}}  "
                  f"{l.bytes_before:>13,}  {l.bytes_after:>12,}")
    rows += [f"kept {l.path}: {l.kept_because}" for l in self.layers if l.kept_because]
    rows.append(f"{self.num_quantized} of {len(self.layers)} linear layers quantized; "
                f"{self.params:,} parameters; model {self.bytes_before:,} -> {self.bytes_after:,} bytes "
                f"({self.ratio:.3f}x)")
    return "\n".join(rows)


def _format_name(new: nnx.Module | None) -> str:
  """How a replaced layer stores its weight, e.g. ``"nf4+dq@64"`` or ``"bfloat16"``."""
  if new is None:
    return "kept"
  if isinstance(new, Dense4bit):
    state = new.quant_state.get_value()
    name = f"{state.quant_type}{'+dq' if state.nested else ''}@{state.blocksize}"
    return name + ("+outliers" if new.outliers is not None else "")
  kernel = getattr(new, "kernel", None)
  return jnp.dtype(kernel.get_value().dtype).name if kernel is not None else type(new).__name__


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


def _warn_unmatched(model: nnx.Module, skip) -> None:
  """Warns for each ``skip`` pattern that names no linear layer (a typo would
  otherwise quantize the layer it meant to keep, without a word)."""
  if skip is None or callable(skip):
    return
  patterns = (skip,) if isinstance(skip, str) else tuple(skip)
  paths = list(linear_layers(model))
  for p in patterns:
    if not any(p in path.split(".") or fnmatch.fnmatchcase(path, p) for path in paths):
      warnings.warn(f"`skip` pattern {p!r} matches no linear layer of the model; its linear layers are "
                    f"{paths[:6]}{' ...' if len(paths) > 6 else ''}.", UserWarning, stacklevel=3)


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
    target_modules: str | Sequence[str] | None = None,
    outlier_columns: int | Callable[[str, nnx.Linear], int] = 0,
    calibration: Mapping[str, jax.typing.ArrayLike] | None = None,
    plan: Any = None,
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
    target_modules: with ``lora_rank``, only these quantized layers get
      adapters (PEFT's rules: names such as ``["q_proj", "v_proj"]`` match a
      path ending in them, a string is a regex on the whole path).
    outlier_columns: input columns per layer kept in high precision, or a
      function ``(path, layer) -> int`` giving each layer its own count (for
      example 1% of ``layer.in_features``).
    calibration: per-layer inputs ``{path: [..., in_features]}`` that rank the
      outlier columns of the named layers by the output they produce
      (``jaxfp4.select_outlier_columns``); other layers rank by weight
      magnitude. :func:`record_linear_inputs` collects them.
    plan: a :class:`jaxfp4.PrecisionPlan` giving each layer its own format
      (``jaxfp4.plan_precision``); the format options above are then not used.
      Every linear layer not skipped must be in the plan, and every plan layer
      in the model. ``bf16`` layers stay ``nnx.Linear`` with a bfloat16 kernel
      (computed in their former dtype), ``fp32`` ones are left as they are.
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
  _warn_unmatched(model, skip)
  targeted = target_matcher(target_modules)
  if target_modules is not None and not lora_rank:
    raise ValueError("`target_modules` picks the layers that get LoRA adapters; it needs `lora_rank` > 0 "
                     "(use `skip` to keep layers unquantized).")
  calibration = _check_calibration(model, calibration)
  if plan is not None:
    make_planned = _planned(model, plan, match, lora_rank=lora_rank, outlier_columns=outlier_columns,
                            calibration=calibration)
  bytes_before = state_nbytes(model)
  params = sum(math.prod(l.shape) for l in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))

  def make(name: str, linear: nnx.Linear):
    if match(name, linear):
      return None
    if plan is not None:
      return make_planned(name, linear)
    columns = outlier_columns(name, linear) if callable(outlier_columns) else outlier_columns
    return Dense4bit.from_linear(
        linear, quant_type=quant_type, blocksize=blocksize,
        compress_statistics=compress_statistics, quant_storage=quant_storage,
        lora_rank=lora_rank if targeted(name) else 0, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        outlier_columns=columns, calibration=calibration.get(name), rngs=rngs)

  # A plan's bf16 layers are replaced too, but by an nnx.Linear: not 4-bit.
  rows = [LayerReport(name, linear.in_features, linear.out_features, isinstance(new, Dense4bit),
                      state_nbytes(linear), state_nbytes(linear if new is None else new),
                      format=_format_name(new))
          for name, linear, new in replace_linears(model, make)]
  rows += _kept_general(model, match)
  return QuantizeReport(tuple(rows), int(params), bytes_before, state_nbytes(model))


# Layers quantize_model sees but does not convert, and why (reported, never silent).
_KEPT: dict[type, str] = {
    nnx.LinearGeneral: "nnx.LinearGeneral is kept in high precision: its multi-axis kernel is not converted "
                       "(reshape it to an nnx.Linear to quantize it)",
    nnx.Einsum: "nnx.Einsum is kept in high precision: an arbitrary einsum contraction has no 2-D "
                "Dense4bit equivalent (write it as an nnx.Linear to quantize it)",
}


def _kept_general(model: nnx.Module, match: SkipFn) -> list[LayerReport]:
  """Report rows for the ``nnx.LinearGeneral`` / ``nnx.Einsum`` layers left as they are."""
  rows, seen = [], set()
  for path, node in nnx.iter_graph(model):
    why = _KEPT.get(type(node))
    if why is None or id(node) in seen or not path:
      continue
    seen.add(id(node))
    name = ".".join(str(k) for k in path)
    shape = node.kernel.shape
    n = state_nbytes(node)
    rows.append(LayerReport(name, math.prod(shape[:-1]), shape[-1], False, n, n,
                            "matched by `skip`" if match(name, node) else why))
  return rows


def _planned(model: nnx.Module, plan, match: SkipFn, *, lora_rank, outlier_columns, calibration):
  """``make(path, linear)`` for ``quantize_model(plan=...)``, after checking the plan against the model."""
  from jaxfp4._src.calibration import candidates as cands  # calibration imports this module
  from jaxfp4._src.calibration.plan import PrecisionPlan
  if not isinstance(plan, PrecisionPlan):
    raise ValueError(f"`plan` must be a jaxfp4.PrecisionPlan, got {type(plan).__name__}.")
  if lora_rank or outlier_columns or calibration:
    raise ValueError("`plan` sets each layer's format; it does not combine with `lora_rank`, "
                     "`outlier_columns` or `calibration` (add adapters afterwards with jaxfp4.nnx.add_lora).")
  entries = {e.path: e for e in plan.entries}
  layers = linear_layers(model)
  missing = [p for p, l in layers.items() if p not in entries and not match(p, l)]
  if missing:
    raise ValueError(f"`plan` has no format for {len(missing)} linear layer(s) of the model: {missing[:8]}"
                     f"{' ...' if len(missing) > 8 else ''}; add them to the plan or `skip` them.")
  unknown = sorted(set(entries) - set(layers))
  if unknown:
    raise ValueError(f"`plan` names {len(unknown)} layer(s) the model does not have as nnx.Linear: "
                     f"{unknown[:8]}; the model's linear layers are {list(layers)[:4]} ...")
  for p, e in entries.items():
    if e.params != layers[p].in_features * layers[p].out_features:
      raise ValueError(f"`plan` was made for {p} with {e.params} weights; the model's has "
                       f"{layers[p].in_features * layers[p].out_features}.")

  def make(name: str, linear: nnx.Linear):
    e = entries[name]
    cand = cands.parse(e.candidate)
    stored = cands.store(cand, linear.kernel.get_value(),
                         input_rms=None if e.input_rms is None else np.asarray(e.input_rms, np.float32),
                         clip=None if e.clip is None else np.asarray(e.clip, np.float32))
    return cands.module_for(linear, stored)
  return make


def linear_layers(model: nnx.Module) -> dict[str, nnx.Linear]:
  """Every ``nnx.Linear`` of ``model`` by dotted path (a shared layer under its first path)."""
  return {".".join(str(k) for k in p): n for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Linear) and p}


def _check_calibration(model: nnx.Module, calibration) -> dict[str, Any]:
  if calibration is None:
    return {}
  if not isinstance(calibration, Mapping):
    raise ValueError(f"`calibration` must map layer paths to input arrays, got {type(calibration).__name__}.")
  paths = list(linear_layers(model))
  unknown = sorted(set(calibration) - set(paths))
  if unknown:
    raise ValueError(f"`calibration` names layers the model does not have as nnx.Linear: {unknown[:4]}; "
                     f"its linear layers are {paths[:4]}{' ...' if len(paths) > 4 else ''}.")
  return dict(calibration)


class _Recorder(nnx.Module):
  """Stands in for an ``nnx.Linear``: hands each input to ``record``, then applies the layer."""

  def __init__(self, linear: nnx.Linear, record: Callable[[jax.Array], None]):
    self.linear = linear
    self.record = record  # a plain function: static, not state

  def __call__(self, x: jax.Array) -> jax.Array:
    self.record(x)
    return self.linear(x)


@contextlib.contextmanager
def record_linear_inputs(model: nnx.Module) -> Iterator[dict[str, list[jax.Array]]]:
  """Collects the inputs of every ``nnx.Linear`` of ``model`` while the context is open.

  The layers are swapped for recording stand-ins in place and put back on exit.
  Run the model eagerly (not under ``jit``: recorded tracers would outlive their
  trace). The inputs are recorded as the layers see them, padding positions
  included; select the rows to keep before passing them to
  ``quantize_model(calibration=...)``.

  Args:
    model: any NNX module.

  Yields:
    ``{path: [input, ...]}``, one list per linear layer (by the paths
    ``quantize_model`` reports), filled as the model runs.

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> import jaxfp4.nnx
    >>> model = nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0)), nnx.Linear(64, 8, rngs=nnx.Rngs(1)))
    >>> with jaxfp4.nnx.record_linear_inputs(model) as inputs:
    ...   _ = model(jnp.ones((4, 64)))
    >>> calibration = {k: jnp.concatenate(v) for k, v in inputs.items()}
    >>> _ = jaxfp4.nnx.quantize_model(model, outlier_columns=2, calibration=calibration)
  """
  if not isinstance(model, nnx.Module):
    raise ValueError(f"`model` must be an nnx.Module, got {type(model).__name__}.")
  inputs: dict[str, list[jax.Array]] = {}
  recorders: dict[int, _Recorder] = {}
  swapped: list[tuple[tuple, nnx.Linear]] = []

  def recorder(name: str, linear: nnx.Linear) -> _Recorder:
    sink = inputs.setdefault(name, [])

    def record(x: jax.Array) -> None:
      if isinstance(x, jax.core.Tracer):
        raise ValueError(f"record_linear_inputs: layer {name!r} was called under a JAX transformation "
                         "(jit, grad, vmap); call the model eagerly inside the context.")
      sink.append(x)
    return _Recorder(linear, record)

  try:
    # Find every path of every layer first, with plain placeholders (which graph
    # traversal does not enter): iter_graph yields a shared layer at its first
    # path only, and its next path shows up once that one is swapped.
    while rest := [(p, n) for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Linear) and p]:
      for path, linear in rest:
        if id(linear) not in recorders:
          recorders[id(linear)] = recorder(".".join(str(k) for k in path), linear)
        _replace(model, path, _PLACEHOLDER)
        swapped.append((path, linear))
    for path, linear in swapped:  # a shared layer gets one shared recorder
      _replace(model, path, recorders[id(linear)])
    yield inputs
  finally:
    for path, linear in reversed(swapped):
      _replace(model, path, linear)


_PLACEHOLDER = object()


def replace_linears(model: nnx.Module, make: Callable[[str, nnx.Linear], nnx.Module | None]):
  """Replaces each ``nnx.Linear`` of ``model`` by ``make(path, layer)`` (None keeps it), in place.

  Returns:
    ``[(path, old layer, new layer or None)]`` in traversal order.
  """
  found: dict[int, tuple[list, nnx.Linear]] = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Linear) and path:
      found.setdefault(id(node), ([], node))[0].append(path)
  # Every new layer is built before the first is put in: a layer that fails
  # (too many outlier columns, a bad format) leaves the model untouched.
  made = [(paths, linear, make(".".join(str(k) for k in paths[0]), linear))
          for paths, linear in found.values()]
  out, replaced = [], {}
  for paths, linear, new in made:
    name = ".".join(str(k) for k in paths[0])
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
