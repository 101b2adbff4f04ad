"""Calibrate the byte-level Llama of ``qlora_finetune.py`` and compare eval loss at equal size.

Takes the pretrained model that ``examples/qlora_finetune.py`` saves
(``--out-dir``/``pretrained.safetensors``; its config and dtype are read from
the file), calibrates its linear layers (all but ``lm_head``, as the QLoRA
variants quantize them) with ``jaxfp4.calibrate`` on windows of the
pretraining split, and compares the held-out next-byte loss of:

* ``NF4``, ``NF4+DQ``: every layer plain NF4 (block 64);
* ``NF4+clip``, ``NF4+DQ+clip``: the same bytes with per-row clipped absmax;
* ``plan @ B``: ``jaxfp4.plan_precision`` at each baseline's size and ``--bits``.

  python examples/qlora_finetune.py --out-dir qlora_out      # pretrains and saves the model (a few minutes)
  python examples/calibrate_llama.py qlora_out/pretrained.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
  import jaxfp4
except ImportError:  # run from a source checkout without `pip install .`
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  import jaxfp4
import jaxfp4.io
import jaxfp4.nnx
from _stdlib_corpus import DOMAIN, eval_windows, load_corpus, token_nll
from calibrate_minilm import BASELINES
from jaxfp4.models import llama

FORMATS = "nf4,nf4+dq,nf4+clip,nf4+dq+clip,nf4+outliers,bf16"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("pretrained", type=Path, help="pretrained.safetensors written by qlora_finetune.py")
  p.add_argument("--formats", default=FORMATS, help=f"candidate formats (default {FORMATS})")
  p.add_argument("--bits", default="4.3", help="extra plan budgets in bits per weight (default 4.3)")
  p.add_argument("--calib-windows", type=int, default=32, help="calibration windows (default 32)")
  p.add_argument("--eval-windows", type=int, default=128, help="held-out eval windows (default 128)")
  p.add_argument("--stdlib", type=Path, default=None, help="source tree (default: this Python's stdlib)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  args = p.parse_args(argv)
  args.bits = [float(b) for b in args.bits.split(",") if b]
  args.formats = [f for f in args.formats.split(",") if f]
  for need in ("nf4", "nf4+clip", "nf4+dq", "nf4+dq+clip"):
    if need not in args.formats:
      args.formats.append(need)
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  t_start = time.perf_counter()
  with jaxfp4.io.SafetensorsFile(args.pretrained) as f:
    meta = f.metadata
  if "llama_config" not in meta:
    raise SystemExit(f"error: {args.pretrained} was not written by qlora_finetune.py (no llama_config metadata).")
  config = llama.LlamaConfig.from_hf(json.loads(meta["llama_config"]))
  dtype = jnp.dtype(meta.get("dtype", "bfloat16"))

  def load() -> llama.LlamaForCausalLM:
    skeleton = nnx.eval_shape(lambda: llama.LlamaForCausalLM(config, dtype=dtype, param_dtype=dtype,
                                                             rngs=nnx.Rngs(0)))
    return jaxfp4.io.load_model(args.pretrained, skeleton, progress=False)

  corpus = load_corpus(args.stdlib or Path(sysconfig.get_paths()["stdlib"]), DOMAIN)
  seq = config.max_position_embeddings
  calib = eval_windows(corpus.pretrain_train, args.calib_windows, seq)  # evenly spaced windows of the train split
  held_out = jnp.asarray(eval_windows(corpus.pretrain_eval, args.eval_windows, seq))
  reference = load()
  report = jaxfp4.calibrate(reference, [jnp.asarray(calib[i:i + 4, :-1]) for i in range(0, len(calib), 4)],
                            forward=lambda m, ids: m(ids), formats=args.formats, skip="lm_head",
                            progress=not args.no_progress)
  t_calib = time.perf_counter() - t_start

  loss = nnx.jit(lambda m, ids: jnp.mean(token_nll(m, ids)))
  plans = [(label, jaxfp4.plan_precision(report, bits_per_weight=report.bits(key) + 1e-9, candidates=(key,)))
           for label, key in BASELINES]
  for b in sorted({report.bits(k) for _, k in BASELINES[::2]} | set(args.bits), reverse=True):
    plans.append((f"plan @ {b:.4g}", jaxfp4.plan_precision(report, bits_per_weight=b)))
  rows = [{"label": f"{dtype.name} (reference)", "bits_per_weight": 8.0 * dtype.itemsize, "sensitivity": 0.0,
           "eval_loss": float(loss(reference, held_out)), "formats": {}}]
  for label, plan in plans:
    model = load()
    jaxfp4.nnx.quantize_model(model, plan=plan, skip="lm_head")
    counts: dict[str, int] = {}
    for e in plan.entries:
      counts[e.candidate] = counts.get(e.candidate, 0) + 1
    rows.append({"label": label, "bits_per_weight": plan.bits_per_weight, "sensitivity": plan.sensitivity,
                 "eval_loss": float(loss(model, held_out)), "formats": counts})
  ref = rows[0]["eval_loss"]
  lines = ["| variant | bits/weight | summed sensitivity (calibration) | held-out loss | vs reference | formats |",
           "|---|---:|---:|---:|---:|---|"]
  for r in rows:
    fmts = ", ".join(f"{k} x{v}" for k, v in sorted(r["formats"].items(), key=lambda kv: -kv[1]))
    lines.append(f"| {r['label']} | {r['bits_per_weight']:.3f} | {r['sensitivity']:.3e} | {r['eval_loss']:.4f} | "
                 f"{r['eval_loss'] - ref:+.4f} | {fmts} |")
  table = "\n".join(lines)
  wall = time.perf_counter() - t_start
  print(f"# {len(report.layers)} linear layers calibrated on {report.layers[0].rows} bytes; held-out "
        f"{held_out.shape[0]} x {seq} bytes")
  print(table)
  print(f"wall time {wall:.0f} s (calibration {t_calib:.0f} s)")
  return {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": rows, "table": table,
          "wall_s": wall}


if __name__ == "__main__":
  main()
