"""QLoRA on a byte-level Llama: pretrain on the Python standard library, fine-tune on a held-out domain.

The text is the byte-level ``.py`` sources of the running interpreter's standard
library; ``_stdlib_corpus.py`` describes the held-out domain (``--domain``), the
pretraining text and the evaluation split.

A small Llama (``jaxfp4.models.llama``) is pretrained on the pretraining text
and saved with ``jaxfp4.io.save_model``. Five fine-tunes then start from the
saved weights, with the same steps, learning-rate schedule, seed and batches:

* ``full``: every parameter trained, in ``--dtype`` (bfloat16 by default);
* ``lora``: frozen ``--dtype`` weights plus LoRA adapters (``LoRADense`` below);
* ``qlora_nf4``, ``qlora_nf4_dq``, ``qlora_fp4``: ``jaxfp4.nnx.quantize_model``
  with NF4, NF4 with double-quantized statistics, and FP4 weights, the same
  adapters (``lm_head`` stays dense in all LoRA variants).

It prints and writes (``--out-dir``) a results table (``results.json``) and a
figure (``qlora_finetune.png``), and states whether NF4 QLoRA ended within 1%
of bf16 LoRA's eval loss: a small-scale check of QLoRA's (Dettmers et al. 2023)
claim that NF4 fine-tuning matches 16-bit LoRA.

  python examples/qlora_finetune.py                  # CPU defaults, a few minutes
  python examples/qlora_finetune.py --preset gpu     # bigger model, longer sequences
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from tqdm.auto import tqdm

try:
  import jaxfp4
except ImportError:  # run from a source checkout without `pip install .`
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  import jaxfp4
import jaxfp4.io
import jaxfp4.nnx
from jaxfp4.models import llama

# examples/_stdlib_corpus.py: the corpus and the training loop, shared with fp4_pretrain.py.
from _stdlib_corpus import (DOMAIN, SIZE_FLAGS, History, apply_preset, eval_windows, load_corpus, make_config,
                            moving_average, nbytes, preset_parser, train, train_offsets)

VARIANTS = ("full", "lora", "qlora_nf4", "qlora_nf4_dq", "qlora_fp4")
# The preset sets every size and schedule option; a flag given explicitly wins.
PRESETS: dict[str, dict[str, Any]] = {
    # ~1.7M parameters; bf16 steps of 16 x 128 tokens take ~0.3 s on 2 CPU cores.
    "cpu": dict(hidden_size=192, intermediate_size=512, layers=4, heads=6, kv_heads=3, seq_len=128,
                batch_size=16, pretrain_steps=300, finetune_steps=150, eval_every=25, eval_windows=64,
                pretrain_lr=3e-3, finetune_lr=1e-3, lora_rank=8, lora_alpha=16.0),
    # ~25M parameters, 512-token windows: minutes on one GPU.
    "gpu": dict(hidden_size=512, intermediate_size=1536, layers=8, heads=8, kv_heads=4, seq_len=512,
                batch_size=32, pretrain_steps=3000, finetune_steps=300, eval_every=25, eval_windows=256,
                pretrain_lr=1e-3, finetune_lr=3e-4, lora_rank=16, lora_alpha=32.0),
}
LABELS = {"full": "full {dt}", "lora": "{dt} LoRA", "qlora_nf4": "NF4 QLoRA",
          "qlora_nf4_dq": "NF4+DQ QLoRA", "qlora_fp4": "FP4 QLoRA"}
SHORT_DTYPE = {"bfloat16": "bf16", "float32": "f32"}


# ---------------------------------------------------------------- models


class LoRADense(nnx.Module):
  """A frozen ``nnx.Linear`` plus LoRA adapters: the dense twin of ``Dense4bit(lora_rank=r)``.

  ``y = base(x) + (alpha / r) * (x @ A) @ B`` in the base's compute dtype, ``A``
  drawn like ``Dense4bit``'s (he_uniform from ``rngs.params()``) and ``B`` zero,
  so with the same ``rngs`` both start from identical adapters.
  """

  def __init__(self, base: nnx.Linear, rank: int, alpha: float, rngs: nnx.Rngs):
    self.base = base
    dt = base.param_dtype
    self.lora_a = nnx.LoRAParam(nnx.initializers.he_uniform()(rngs.params(), (base.in_features, rank), dt))
    self.lora_b = nnx.LoRAParam(jnp.zeros((rank, base.out_features), dt))
    self.scale = alpha / rank

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.base(x)
    dt = y.dtype
    delta = (x.astype(dt) @ self.lora_a[...].astype(dt)) @ self.lora_b[...].astype(dt)
    return y + (delta * jnp.asarray(self.scale, dt)).astype(dt)


def add_dense_lora(model: nnx.Module, *, rank: int, alpha: float, rngs: nnx.Rngs, skip: str = "lm_head") -> int:
  """Wraps every ``nnx.Linear`` but ``skip`` in :class:`LoRADense`, in place; returns how many.

  Layers are visited in ``nnx.iter_graph`` order, as ``quantize_model`` visits
  them, so the adapters' ``A`` matrices match the QLoRA variants' draw for draw.
  """
  count = 0
  for path, node in list(nnx.iter_graph(model)):
    if isinstance(node, nnx.Linear) and path and path[-1] != skip:
      parent = model
      for k in path[:-1]:
        parent = parent[k] if isinstance(k, int) else getattr(parent, k)
      setattr(parent, path[-1], LoRADense(node, rank, alpha, rngs))
      count += 1
  return count


def load_pretrained(path: Path, config: llama.LlamaConfig, dtype: Any) -> llama.LlamaForCausalLM:
  """The saved pretrained model, read into an abstract skeleton (no random init)."""
  model = nnx.eval_shape(lambda: llama.LlamaForCausalLM(config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
  return jaxfp4.io.load_model(path, model, progress=False)


def build_variant(variant: str, path: Path, config: llama.LlamaConfig, dtype: Any, args: argparse.Namespace
                  ) -> tuple[llama.LlamaForCausalLM, Any]:
  """The pretrained model prepared for one fine-tuning variant, and the filter of what trains."""
  model = load_pretrained(path, config, dtype)
  # One seed for every variant's adapters: LoRA and QLoRA start from the same A (and B = 0).
  rngs = nnx.Rngs(args.seed + 2)
  if variant == "full":
    return model, nnx.Param
  if variant == "lora":
    add_dense_lora(model, rank=args.lora_rank, alpha=args.lora_alpha, rngs=rngs)
    return model, nnx.LoRAParam
  quant_type = "fp4" if variant == "qlora_fp4" else "nf4"
  jaxfp4.nnx.quantize_model(model, quant_type=quant_type, compress_statistics=variant == "qlora_nf4_dq",
                            skip="lm_head", lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, rngs=rngs)
  return model, nnx.LoRAParam


def weight_bytes(model: nnx.Module) -> dict[str, int]:
  """Bytes of the frozen or trained base weights (quantization state included, adapters not).

  ``linear`` counts the layers that the QLoRA variants quantize (every linear
  layer but ``lm_head``); ``total`` adds the embedding, norms and ``lm_head``.
  """
  weights = nnx.All(nnx.Any(nnx.Param, jaxfp4.nnx.QuantizedWeight), nnx.Not(nnx.LoRAParam))
  linear = 0
  for path, node in nnx.iter_graph(model):
    if path and path[-1] == "lm_head":
      continue
    if isinstance(node, jaxfp4.nnx.Dense4bit):
      linear += node.nbytes()
    elif isinstance(node, nnx.Linear):
      linear += nbytes(nnx.state(node, nnx.Param))
  return {"total": nbytes(nnx.state(model, weights)), "linear": linear,
          "adapters": nbytes(nnx.state(model, nnx.LoRAParam))}


# ---------------------------------------------------------------- reporting


def results_table(rows: list[dict[str, Any]]) -> str:
  """The printed table (one row per fine-tuning variant)."""
  head = (f"{'variant':<14} {'trainable':>10} {'weights (x full)':>19} {'linear (x full)':>18} "
          f"{'step ms':>8} {'eval@0':>7} {'eval':>7} {'ppl':>6} {'bits/B':>6} {'vs LoRA':>8}")
  lines = [head, "-" * len(head)]
  for r in rows:
    gap = "" if r["gap_vs_lora"] is None else f"{100 * r['gap_vs_lora']:+.2f}%"
    lines.append(
        f"{r['label']:<14} {r['trainable_params']:>10,} "
        f"{r['weight_bytes']:>10,} ({r['weight_ratio']:.2f}x) {r['linear_bytes']:>10,} ({r['linear_ratio']:.2f}x) "
        f"{1e3 * r['step_s']:>8.1f} {r['eval_loss_start']:>7.4f} {r['eval_loss']:>7.4f} {r['perplexity']:>6.3f} "
        f"{r['bits_per_byte']:>6.3f} {gap:>8}")
  return "\n".join(lines)


def claim_sentence(rows: list[dict[str, Any]]) -> str | None:
  """Whether NF4 QLoRA ended within 1% of dense LoRA's eval loss (None if either did not run)."""
  by = {r["variant"]: r for r in rows}
  if "lora" not in by or "qlora_nf4" not in by:
    return None
  gap, held = by["qlora_nf4"]["gap_vs_lora"], by["qlora_nf4"]["gap_vs_lora"] <= 0.01
  return (f"NF4 QLoRA final eval loss {by['qlora_nf4']['eval_loss']:.4f} vs {by['lora']['label']} "
          f"{by['lora']['eval_loss']:.4f}: {100 * gap:+.2f}%. The claim (within 1%) "
          f"{'HELD' if held else 'DID NOT HOLD'} at this scale.")


def plot(path: Path, pretrain: History, runs: dict[str, History], labels: dict[str, str], title: str) -> None:
  """Pretraining curves (left) and the fine-tuning eval curves (right)."""
  import matplotlib
  matplotlib.use("Agg")  # no display needed; must precede pyplot
  import matplotlib.pyplot as plt

  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
  tl = pretrain.train_loss
  if tl:  # a reused model without recorded history has no curve
    k = max(1, len(tl) // 30)  # a moving average keeps the noisy per-batch loss readable
    ax0.plot(*moving_average(tl, k), color="0.6", lw=1, label=f"train (mean of {k})")
  ax0.plot(pretrain.eval_steps, pretrain.eval_loss, "o-", color="k", ms=3, lw=1.2, label="eval (held-out files)")
  ax0.set(title="pretraining (stdlib minus domain)", xlabel="step", ylabel="loss (nats / byte)")
  ax0.legend(fontsize=8)
  styles = {"full": ("C0", "-"), "lora": ("C1", "-"), "qlora_nf4": ("C2", "--"), "qlora_nf4_dq": ("C3", ":"),
            "qlora_fp4": ("C4", "-.")}
  for name, h in runs.items():
    color, ls = styles[name]
    ax1.plot(h.eval_steps, h.eval_loss, ls, color=color, marker="o", ms=2.5, lw=1.4, label=labels[name])
  ax1.set(title="fine-tuning: domain eval loss", xlabel="step", ylabel="loss (nats / byte)")
  ax1.legend(fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = preset_parser(__doc__.split("\n\n")[0], PRESETS, SIZE_FLAGS + (
      ("--pretrain-steps", int, "pretraining steps"),
      ("--finetune-steps", int, "steps of every fine-tuning variant"),
      ("--eval-every", int, "steps between evaluations"), ("--eval-windows", int, "windows per evaluation"),
      ("--pretrain-lr", float, "peak pretraining learning rate"),
      ("--finetune-lr", float, "peak fine-tuning learning rate (all variants)"),
      ("--lora-rank", int, "adapter rank"), ("--lora-alpha", float, "adapter scale numerator (scale alpha/rank)")))
  p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                 help="parameter and compute dtype of the dense model (default bfloat16; measured faster "
                      "than float32 on a 2-core CPU too)")
  p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
  p.add_argument("--domain", default=",".join(DOMAIN),
                 help="held-out packages/modules of the stdlib (first path component, no .py)")
  p.add_argument("--stdlib", type=Path, default=None, help="source tree to read (default: this Python's stdlib)")
  p.add_argument("--pretrained", type=Path, default=None,
                 help="reuse a model saved by an earlier run (its config wins) instead of pretraining")
  p.add_argument("--seed", type=int, default=0, help="seed of the init, batches and adapters")
  p.add_argument("--out-dir", type=Path, default=Path("qlora_out"), help="where results go (default qlora_out)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  args = p.parse_args(argv)
  apply_preset(p, args, PRESETS, ("hidden_size", "intermediate_size", "layers", "heads", "kv_heads", "seq_len",
                                   "batch_size", "eval_every", "eval_windows", "lora_rank"))
  for k in ("pretrain_steps", "finetune_steps"):
    if getattr(args, k) < (0 if k == "pretrain_steps" else 1):
      p.error(f"--{k.replace('_', '-')} must be {'>= 0' if k == 'pretrain_steps' else 'positive'}.")
  if args.pretrain_steps == 0 and args.pretrained is None:
    p.error("--pretrain-steps 0 needs --pretrained.")
  args.variants = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(args.variants) - set(VARIANTS))
  if unknown or not args.variants:
    p.error(f"--variants must name some of {', '.join(VARIANTS)}; got {unknown or 'none'}.")
  args.domain = [d for d in args.domain.split(",") if d]
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the experiment; returns what ``results.json`` holds."""
  args = parse_args(argv)
  t_start = time.perf_counter()
  dtype = jnp.dtype(args.dtype)
  progress = not args.no_progress
  out_dir = args.out_dir
  out_dir.mkdir(parents=True, exist_ok=True)
  root = args.stdlib or Path(sysconfig.get_paths()["stdlib"])
  corpus = load_corpus(root, args.domain)
  print(f"# {jax.devices()[0].device_kind}, JAX {jax.__version__}, Python {platform.python_version()}, "
        f"corpus {root}")
  for name, s in corpus.stats().items():
    print(f"  {name:<15} {s['files']:>4} files {s['bytes']:>11,} bytes")

  # ---- pretraining (or reuse)
  if args.pretrained is not None:
    ckpt = args.pretrained
    with jaxfp4.io.SafetensorsFile(ckpt) as f:
      meta = f.metadata
    if "llama_config" not in meta:
      raise SystemExit(f"error: {ckpt} was not written by this example (no llama_config metadata).")
    config = llama.LlamaConfig.from_hf(json.loads(meta["llama_config"]))
    dtype = jnp.dtype(meta.get("dtype", args.dtype))
    pre = History(**json.loads(meta.get("pretrain_history", "{}")))
    print(f"pretrained model: {ckpt} (its config and dtype {dtype.name} are used)")
  else:
    ckpt = out_dir / "pretrained.safetensors"
    if ckpt.exists():
      raise SystemExit(f"error: {ckpt} exists; pass --pretrained {ckpt} to reuse it, or another --out-dir.")
    config = make_config(args)
    model = llama.LlamaForCausalLM(config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(args.seed))
    n_params = nbytes(nnx.state(model, nnx.Param)) // dtype.itemsize
    print(f"pretraining a {n_params:,}-parameter byte-level Llama ({dtype.name}) for {args.pretrain_steps} "
          f"steps of {args.batch_size} x {args.seq_len} bytes")
    offsets = train_offsets(corpus.pretrain_train.size, args.seq_len, args.pretrain_steps, args.batch_size,
                            args.seed)
    pre = train(model, nnx.Param, tokens=corpus.pretrain_train, offsets=offsets, seq_len=args.seq_len,
                lr=args.pretrain_lr, eval_ids=eval_windows(corpus.pretrain_eval, args.eval_windows, args.seq_len),
                eval_every=args.eval_every, desc="pretrain", progress=progress)
    print(f"pretraining: train loss {pre.train_loss[0]:.3f} -> {pre.train_loss[-1]:.3f}, held-out eval "
          f"{pre.eval_loss[0]:.3f} -> {pre.eval_loss[-1]:.3f}, {1e3 * pre.median_step_seconds():.0f} ms/step")
    jaxfp4.io.save_model(ckpt, model, progress=False, metadata={
        "llama_config": json.dumps(config.to_hf()), "dtype": dtype.name,
        "pretrain_history": json.dumps(dataclasses.asdict(pre))})
    del model
  # A reused model keeps its own dtype, so the labels are made once it is known.
  labels = {v: LABELS[v].format(dt=SHORT_DTYPE[dtype.name]) for v in VARIANTS}

  # ---- fine-tuning: one batch order, one eval set, one schedule for every variant
  offsets = train_offsets(corpus.domain_train.size, args.seq_len, args.finetune_steps, args.batch_size,
                          args.seed + 1)
  eval_ids = eval_windows(corpus.domain_eval, args.eval_windows, args.seq_len)
  runs: dict[str, History] = {}
  rows: list[dict[str, Any]] = []
  for variant in tqdm(args.variants, desc="variants", unit="run", disable=not progress):
    model, wrt = build_variant(variant, ckpt, config, dtype, args)
    wbytes = weight_bytes(model)
    trainable = int(sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, wrt))))
    h = train(model, wrt, tokens=corpus.domain_train, offsets=offsets, seq_len=args.seq_len, lr=args.finetune_lr,
              eval_ids=eval_ids, eval_every=args.eval_every, desc=variant, progress=progress)
    runs[variant] = h
    rows.append(dict(variant=variant, label=labels[variant], trainable_params=trainable,
                     weight_bytes=wbytes["total"], linear_bytes=wbytes["linear"], adapter_bytes=wbytes["adapters"],
                     step_s=h.median_step_seconds(), eval_loss_start=h.eval_loss[0], eval_loss=h.eval_loss[-1],
                     perplexity=math.exp(h.eval_loss[-1]), bits_per_byte=h.eval_loss[-1] / math.log(2),
                     train_loss_last=h.train_loss[-1]))
    print(f"{labels[variant]}: eval {h.eval_loss[0]:.4f} -> {h.eval_loss[-1]:.4f}, "
          f"{1e3 * h.median_step_seconds():.1f} ms/step")
    del model
  # Ratios against the dense model's bytes (full: every weight in --dtype).
  dense = weight_bytes(load_pretrained(ckpt, config, dtype))
  lora_loss = next((r["eval_loss"] for r in rows if r["variant"] == "lora"), None)
  for r in rows:
    r["weight_ratio"] = r["weight_bytes"] / dense["total"]
    r["linear_ratio"] = r["linear_bytes"] / dense["linear"]
    r["gap_vs_lora"] = None if lora_loss is None else (r["eval_loss"] - lora_loss) / lora_loss

  wall = time.perf_counter() - t_start
  table = results_table(rows)
  claim = claim_sentence(rows)
  print()
  print(f"fine-tuning on the held-out domain: {args.finetune_steps} steps of {args.batch_size} x "
        f"{args.seq_len} bytes, peak lr {args.finetune_lr:g}, LoRA rank {args.lora_rank} alpha {args.lora_alpha:g}; "
        f"eval on {eval_ids.shape[0]} windows of held-out domain files")
  print(table)
  if claim:
    print(claim)
  print(f"wall time {wall:.0f} s")

  results = {
      "date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
      "jax": jax.__version__, "python": platform.python_version(), "argv": list(sys.argv[1:] if argv is None else argv),
      "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
      "config": config.to_hf(), "dtype": dtype.name, "data": {"root": str(root), **corpus.stats(),
                                                              "domain": args.domain},
      "pretrained": str(ckpt), "pretrain": dataclasses.asdict(pre),
      "dense_weight_bytes": dense, "variants": rows,
      "histories": {k: dataclasses.asdict(v) for k, v in runs.items()},
      "claim_nf4_within_1pct_of_lora": None if claim is None else next(
          r["gap_vs_lora"] <= 0.01 for r in rows if r["variant"] == "qlora_nf4"),
      "wall_s": wall,
  }
  with open(out_dir / "results.json", "w") as f:
    json.dump(results, f, indent=1)
  title = (f"byte-level Llama, {config.num_hidden_layers}x{config.hidden_size}, {dtype.name}; "
           f"fine-tune {args.finetune_steps} steps, rank {args.lora_rank}")
  plot(out_dir / "qlora_finetune.png", pre, runs, labels, title)
  print(f"wrote {out_dir / 'results.json'} and {out_dir / 'qlora_finetune.png'}")
  return results


if __name__ == "__main__":
  main()
