"""``quantize_pretrained``: a whole decoder to bitsandbytes 4-bit, layer by layer, with GPTQ, clipping or HQQ.

The sequential order of GPTQ (Frantar et al. 2022, arXiv 2210.17323, §4 and the
reference ``llama.py``): the calibration tokens are embedded once; then for each
decoder layer in turn, its linear layers are quantized group by group in the
order the forward pass calls them (q/k/v, o, gate/up, down: a group is the
projections that read the same input), each group's Gram matrix
``H = sum x^T x`` taken with the groups before it already 4-bit ("true
sequential"); finally the calibration activations are pushed through the
quantized layer to become the next layer's inputs. One group's ``H`` is held
at a time, plus the calibration activations of one layer boundary.

The result is a :class:`DecoderForCausalLM` whose quantized layers are ordinary
``Dense4bit`` (bitsandbytes bytes + absmax), so ``save_pretrained`` writes a
checkpoint that transformers + bitsandbytes load unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxfp4._src.calibration.clipping import quantize_rows_clipped, row_clip_to_blocks, search_clip
from jaxfp4._src import formats
from jaxfp4._src import progress as progress_lib
from jaxfp4._src.flax.nnx_dense import Dense4bit
from jaxfp4._src.flax.quantize_model import _matcher, _replace, linear_layers
from jaxfp4._src.gptq import quantize_4bit_gptq
from jaxfp4._src.hqq import quantize_4bit_hqq
from jaxfp4._src.models.decoder.model import DecoderForCausalLM
from jaxfp4._src.quantize import dequantize_4bit, quantize_4bit

METHODS = ("gptq", "clip", "hqq", "rtn")
NEEDS_CALIBRATION = ("gptq", "clip")


@dataclasses.dataclass(frozen=True)
class LayerQuantization:
  """One quantized linear layer: relative output error on the calibration inputs
  (``tr(dW H dW^T) / tr(W H W^T)``) of round-to-nearest and of the method (None without calibration)."""

  path: str
  in_features: int
  out_features: int
  error_rtn: float | None
  error: float | None
  seconds: float


@dataclasses.dataclass(frozen=True)
class QuantizePretrainedReport:
  """What :func:`quantize_pretrained` did, layer by layer."""

  method: str
  layers: tuple[LayerQuantization, ...]
  calibration_tokens: int
  seconds: float

  def __str__(self) -> str:
    w = max([len(l.path) for l in self.layers] + [5])
    f = lambda v: "-" if v is None else f"{v:.3e}"
    rows = [f"{'layer':<{w}}  {'[out, in]':>12}  {'rtn error':>10}  {self.method + ' error':>12}  {'ratio':>6}"]
    for l in self.layers:
      ratio = "-" if l.error is None or not l.error_rtn else f"{l.error / l.error_rtn:.3f}"
      rows.append(f"{l.path:<{w}}  {f'[{l.out_features}, {l.in_features}]':>12}  {f(l.error_rtn):>10}  "
                  f"{f(l.error):>12}  {ratio:>6}")
    if self.calibration_tokens:
      rows.append(f"{len(self.layers)} layers quantized with {self.method} on {self.calibration_tokens:,} "
                  f"calibration tokens in {self.seconds:.1f} s (errors: relative output error on the "
                  "calibration inputs of each layer)")
    else:  # no calibration data: there are no inputs to measure an output error on
      rows.append(f"{len(self.layers)} layers quantized with {self.method} without calibration data in "
                  f"{self.seconds:.1f} s (no output errors: they need calibration inputs)")
    return "\n".join(rows)


class _Tap(nnx.Module):
  """Stands in for a linear layer: logs ``(path, input)`` in call order, then applies it."""

  def __init__(self, linear: nnx.Module, path: str, log: list):
    self.linear = linear
    self.path = path
    self.log = log  # a plain list: static, not state

  def __call__(self, x):
    self.log.append((self.path, x))
    return self.linear(x)


@contextlib.contextmanager
def _tapped(layer: nnx.Module, paths: Sequence[str]):
  log: list = []
  swapped = []
  try:
    for p in paths:
      key = tuple(int(k) if k.isdigit() else k for k in p.split("."))
      node: Any = layer
      for k in key:
        node = node[k] if isinstance(k, int) else getattr(node, k)
      _replace(layer, key, _Tap(node, p, log))
      swapped.append((key, node))
    yield log
  finally:
    for key, node in reversed(swapped):
      _replace(layer, key, node)


class _Stop(Exception):
  pass


class _Capture(nnx.Module):
  """Stands in for decoder layer ``i``: records its arguments and passes ``x`` through."""

  def __init__(self, sink: list, last: bool):
    self.sink = sink
    self.last = last

  def __call__(self, x, cos, sin, *, mask, cache_kv=None, layer=0, start=None):
    self.sink.append((x, cos, sin, mask))
    if self.last:
      raise _Stop
    return x, cache_kv


def _layer_arguments(model: DecoderForCausalLM, ids: jax.Array) -> list[tuple]:
  """``(x, cos, sin, mask)`` that each decoder layer receives for ``ids`` (x for layer 0 only is real)."""
  layers: Any = model.model.layers  # holds _Capture stand-ins while it runs
  saved = [layers[i] for i in range(len(layers))]
  sink: list = []
  try:
    for i in range(len(layers)):
      layers[i] = _Capture(sink, last=i == len(layers) - 1)
    try:
      model.model(ids)
    except _Stop:
      pass
  finally:
    for i, layer in enumerate(saved):
      layers[i] = layer
  return sink


def _check_batches(calibration) -> list[jax.Array]:
  if calibration is None:
    return []
  if isinstance(calibration, (np.ndarray, jax.Array)):
    calibration = [calibration[i:i + 8] for i in range(0, calibration.shape[0], 8)] if calibration.ndim == 2 \
        else [calibration]
  out = []
  for b in calibration:
    b = jnp.asarray(b)
    if b.ndim != 2 or not jnp.issubdtype(b.dtype, jnp.integer) or b.size == 0:
      raise ValueError(f"`calibration` must hold int token-id arrays [batch, seq], got {b.dtype}{list(b.shape)}.")
    out.append(b.astype(jnp.int32))
  return out


def _quantize_weight(w, h, method, opts, gptq_opts, hqq_opts):
  if method == "rtn":
    return quantize_4bit(w, **opts)
  if method == "hqq":
    return quantize_4bit_hqq(w, **opts, **hqq_opts)
  if method == "clip":
    clip = search_clip(w, h, **opts)
    return quantize_rows_clipped(w, clip, **opts)
  gptq_opts = dict(gptq_opts)
  if gptq_opts.pop("clip_search"):  # the absmax chosen first by the clipping search, then GPTQ
    rows = search_clip(w, h, **opts)
    gptq_opts["clip"] = row_clip_to_blocks(rows, tuple(w.shape), opts["blocksize"])
  return quantize_4bit_gptq(w, h, **opts, **gptq_opts)


@jax.jit
def _error_and_energy(packed, state, w, h):
  d = dequantize_4bit(packed, state).astype(jnp.float32) - w.astype(jnp.float32)
  w32 = w.astype(jnp.float32)
  hp = jax.lax.Precision.HIGHEST
  return jnp.sum(d * jnp.matmul(d, h, precision=hp)), jnp.sum(w32 * jnp.matmul(w32, h, precision=hp))


def _relative_error(packed, state, w, h) -> float:
  """``tr(dW H dW^T) / tr(W H W^T)``: the layer's relative output error on the calibration inputs."""
  err, energy = (float(v) for v in _error_and_energy(packed, state, w, h))
  return err / energy if energy > 0 else float(err > 0) * float("inf")


def _to_dense4bit(linear: nnx.Linear, packed, state) -> Dense4bit:
  bias = None if linear.bias is None else linear.bias.get_value()
  return Dense4bit(linear.in_features, linear.out_features, use_bias=bias is not None, dtype=linear.dtype,
                   param_dtype=linear.kernel.get_value().dtype, bias_init=(lambda *_: bias),
                   quantized=(packed, state), rngs=nnx.Rngs(0))


def quantize_pretrained(
    model_or_dir: DecoderForCausalLM | str | os.PathLike,
    *,
    calibration: Iterable[Any] | jax.Array | None = None,
    method: str = "gptq",
    quant_type: str = "nf4",
    blocksize: int = 64,
    compress_statistics: bool = False,
    percdamp: float = 0.01,
    act_order: bool = True,
    lazy_block: int = 128,
    refit: bool = False,
    clip_search: bool = False,
    hqq_p: float = 0.7,
    skip: Sequence[str] = ("lm_head",),
    progress: bool = False,
) -> tuple[DecoderForCausalLM, QuantizePretrainedReport]:
  """Quantizes every decoder-layer linear of a model to bitsandbytes 4-bit with ``method``.

  Args:
    model_or_dir: a :class:`DecoderForCausalLM` with ``nnx.Linear`` layers
      (changed in place), or a Hugging Face directory / Hub id of a dense
      checkpoint of any supported family (loaded with float32 activations).
    calibration: token ids: int arrays ``[batch, seq]`` (an iterable of them, or
      one array, split into batches of 8 rows). Required for ``gptq`` and
      ``clip``; with ``rtn``/``hqq`` it only feeds the report.
    method: ``"gptq"`` (error compensation, arXiv 2210.17323), ``"clip"`` (per-row
      absmax clipping search on ``H``), ``"hqq"`` (calibration-free l_p fit of
      the absmax) or ``"rtn"`` (bitsandbytes' round to nearest).
    quant_type, blocksize, compress_statistics: the bitsandbytes format.
    percdamp, act_order, lazy_block, refit: GPTQ options
      (:func:`jaxfp4.quantize_4bit_gptq`).
    clip_search: GPTQ: choose each row's absmax clipping ratio by the search of
      ``method="clip"`` before the column loop (else plain absmax).
    hqq_p: the HQQ norm's exponent.
    skip: module names or globs kept in high precision (``lm_head`` is outside
      the decoder layers and always stays dense).
    progress: show a progress bar over decoder layers.

  Returns:
    ``(model, report)``; ``jaxfp4.models.decoder.save_pretrained(model, dir)``
    writes the bitsandbytes checkpoint (its ``bnb_4bit_compute_dtype`` is the
    model's compute dtype: float32 for a model loaded here from a directory;
    ``jaxfp4 quantize`` records ``--compute-dtype`` instead).

  Example:
    >>> model, report = quantize_pretrained("Llama-3.2-1B", calibration=ids, method="gptq")  # doctest: +SKIP
    >>> print(report)                                                                     # doctest: +SKIP
    >>> decoder.save_pretrained(model, "llama-1b-gptq-nf4")                              # doctest: +SKIP
  """
  if method not in METHODS:
    raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
  if quant_type not in ("nf4", "fp4"):
    raise ValueError(f"`quant_type` must be 'nf4' or 'fp4' (the bitsandbytes formats), got {quant_type!r}.")
  blocksize = formats.resolve_blocksize(formats.get_format(quant_type), blocksize)
  batches = _check_batches(calibration)
  if method in NEEDS_CALIBRATION and not batches:
    raise ValueError(f"`calibration` token ids are required for method={method!r} (it uses H = sum x^T x).")
  if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not percdamp > 0:
    raise ValueError(f"`percdamp` must be a float > 0, got {percdamp!r}.")
  match = _matcher(tuple(skip) if not isinstance(skip, str) else (skip,))
  if isinstance(model_or_dir, DecoderForCausalLM):
    model = model_or_dir
  elif isinstance(model_or_dir, (str, os.PathLike)):
    from jaxfp4._src.models.decoder.loader import from_pretrained
    model = from_pretrained(model_or_dir, dtype=jnp.float32, progress=progress)
  else:
    raise ValueError(f"`model_or_dir` must be a DecoderForCausalLM or a model directory, got "
                     f"{type(model_or_dir).__name__}.")
  opts: dict[str, Any] = dict(quant_type=quant_type, blocksize=blocksize, compress_statistics=compress_statistics)
  if clip_search not in (True, False):
    raise ValueError(f"`clip_search` must be True or False, got {clip_search!r}.")
  gptq_opts = dict(percdamp=float(percdamp), act_order=act_order, lazy_block=lazy_block, refit=refit,
                   clip_search=clip_search)
  hqq_opts = dict(p=hqq_p)
  t0 = time.perf_counter()
  args = [_layer_arguments(model, ids) for ids in batches]
  xs = [a[0][0] for a in args]
  rows: list[LayerQuantization] = []
  layers = model.model.layers
  for i in progress_lib.bar(range(len(layers)), enabled=progress, desc=f"quantize ({method})", unit="layer"):
    layer = layers[i]
    prefix = f"model.layers.{i}"
    paths = [p for p, lin in linear_layers(layer).items() if not match(f"{prefix}.{p}", lin)]
    groups = _groups(layer, paths, xs, args, i) if batches else [[p] for p in paths]
    for group in groups:
      h = _gram(layer, group[0], xs, args, i) if batches else None
      for p in group:
        t = time.perf_counter()
        linear = _get_path(layer, p)
        w = jnp.asarray(linear.kernel.get_value()).T
        packed, state = _quantize_weight(w, h, method, opts, gptq_opts, hqq_opts)
        err = err_rtn = None
        if h is not None:
          err = _relative_error(packed, state, w, h)
          err_rtn = err if method == "rtn" else _relative_error(*quantize_4bit(w, **opts), w, h)
        _replace(layer, _key(p), _to_dense4bit(linear, packed, state))
        rows.append(LayerQuantization(f"{prefix}.{p}", linear.in_features, linear.out_features, err_rtn, err,
                                      time.perf_counter() - t))
    if batches:  # the next layer's inputs come through this now quantized layer
      start = jnp.zeros((), jnp.int32)
      xs = [layer(x, a[i][1], a[i][2], mask=a[i][3], layer=i, start=start)[0] for x, a in zip(xs, args)]
  tokens = int(sum(b.size for b in batches))
  return model, QuantizePretrainedReport(method, tuple(rows), tokens, time.perf_counter() - t0)


def _key(path: str) -> tuple:
  return tuple(int(k) if k.isdigit() else k for k in path.split("."))


def _get_path(node, path: str):
  for k in _key(path):
    node = node[k] if isinstance(k, int) else getattr(node, k)
  return node


def _run_layer(layer, paths, xs, args, i):
  """Runs the layer on every batch with ``paths`` tapped; yields each batch's log."""
  start = jnp.zeros((), jnp.int32)
  for x, a in zip(xs, args):
    with _tapped(layer, paths) as log:
      layer(x, a[i][1], a[i][2], mask=a[i][3], layer=i, start=start)
    yield log


def _groups(layer, paths, xs, args, i) -> list[list[str]]:
  """The layer's linears in call order, grouped by shared input (q/k/v; gate/up)."""
  log = next(_run_layer(layer, paths, xs[:1], args[:1], i))
  groups: list[list[str]] = []
  last = None
  for p, x in log:
    if groups and x is last:
      groups[-1].append(p)
    else:
      groups.append([p])
    last = x
  return groups


def _gram(layer, path, xs, args, i) -> jax.Array:
  """``sum x^T x`` of ``path``'s inputs over the calibration batches, with the layer as it is now."""
  h = None
  for log in _run_layer(layer, [path], xs, args, i):
    for _, x in log:
      x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
      g = jnp.matmul(x.T, x, precision=jax.lax.Precision.HIGHEST)
      h = g if h is None else h + g
  assert h is not None  # at least one calibration batch reached the layer
  return h


def write_quantized(in_dir: str | os.PathLike, out_dir: str | os.PathLike, *, compute_dtype: str = "bfloat16",
                    progress: bool = True, **kwargs: Any) -> QuantizePretrainedReport:
  """``quantize_pretrained(in_dir, **kwargs)`` written to ``out_dir`` as a bitsandbytes checkpoint.

  ``out_dir`` must be new or empty and lie outside ``in_dir``; it appears only
  when complete. Files of ``in_dir`` that are not weights or its config
  (tokenizer, generation config) are copied.
  """
  import json
  import shutil
  from pathlib import Path

  from jaxfp4._src.io import checkpoint
  from jaxfp4._src.io.convert import _check_dirs
  from jaxfp4._src.io.files import directory_atomic
  from jaxfp4._src.models.decoder.loader import save_pretrained
  in_dir, out_dir = Path(in_dir), Path(out_dir)
  _check_dirs(in_dir, out_dir)
  model, report = quantize_pretrained(in_dir, progress=progress, **kwargs)
  with directory_atomic(out_dir) as tmp:
    save_pretrained(model, tmp, progress=progress)
    cfg_path = tmp / "config.json"
    config = json.loads(cfg_path.read_text())
    config["quantization_config"]["bnb_4bit_compute_dtype"] = compute_dtype  # not the float32 of calibration
    cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for extra in sorted(in_dir.iterdir()):  # tokenizer, generation config, ...
      if (extra.is_file() and extra.suffix != ".safetensors"
          and extra.name not in ("config.json", checkpoint.INDEX, "README.md")):
        shutil.copy2(extra, tmp / extra.name)
  return report
