"""Held-out loss of a byte-level Llama at bf16 and after each 4-bit method of ``quantize_pretrained``.

Pretrains the small byte-level Llama of ``examples/qlora_finetune.py`` (its
``_stdlib_corpus``: the standard library's ``.py`` sources, one byte per token)
once, saves it as a Hugging Face directory, then for each method runs, in a
fresh process (so its peak memory is its own):

  load the bf16 checkpoint -> quantize_pretrained(method) -> save_pretrained
  -> mean next-byte loss on held-out files.

Calibration windows come from the pretraining split's training files, the
evaluation windows from its held-out files (``_stdlib_corpus``: a file is in
the eval split by ``crc32(path)``), so they never overlap.

  python tools/bench_gptq.py --out-dir /tmp/bench_gptq            # table + results.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import resource
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

METHODS = ("bf16", "rtn", "clip", "hqq", "gptq", "gptq+refit", "gptq+clip", "rtn+dq", "gptq+dq", "rtn+fp4", "gptq+fp4",
           "hqq+fp4", "clip+fp4")
PRESET = dict(hidden_size=192, intermediate_size=512, layers=4, heads=6, kv_heads=3, seq_len=128, batch_size=16)


def pretrain(out: Path, args) -> None:
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from _stdlib_corpus import DOMAIN, eval_windows, load_corpus, make_config, train, train_offsets
  from jaxfp4.models import llama

  corpus = load_corpus(Path(sysconfig.get_paths()["stdlib"]), DOMAIN)
  cfg_args = argparse.Namespace(**PRESET)
  config = make_config(cfg_args)
  model = llama.LlamaForCausalLM(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  offsets = train_offsets(corpus.pretrain_train.size, PRESET["seq_len"], args.pretrain_steps, PRESET["batch_size"], 0)
  hist = train(model, nnx.Param, tokens=corpus.pretrain_train, offsets=offsets, seq_len=PRESET["seq_len"],
               lr=3e-3, eval_ids=eval_windows(corpus.pretrain_eval, 16, PRESET["seq_len"]),
               eval_every=max(1, args.pretrain_steps // 4), desc="pretrain", progress=False)
  print(f"pretrained {args.pretrain_steps} steps: eval loss {hist.eval_loss[0]:.3f} -> {hist.eval_loss[-1]:.3f}",
        flush=True)
  llama.save_pretrained(model, out / "bf16", progress=False)
  # Calibration: windows of the training files (seed 1: not the pretraining batches' order).
  rng = np.random.default_rng(1)
  starts = rng.integers(0, corpus.pretrain_train.size - PRESET["seq_len"] - 1, args.calib_windows)
  calib = corpus.pretrain_train[starts[:, None] + np.arange(PRESET["seq_len"])[None, :]].astype(np.int32)
  np.save(out / "calibration.npy", calib)
  np.save(out / "eval.npy", eval_windows(corpus.pretrain_eval, args.eval_windows, PRESET["seq_len"]))
  (out / "corpus.json").write_text(json.dumps(corpus.stats(), indent=1))


def run_one(out: Path, spec: str) -> dict:
  """One method in this process: quantize, save, evaluate; returns the row."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from _stdlib_corpus import token_nll
  from jaxfp4.models import decoder

  method, *mods = spec.split("+")
  calib = np.load(out / "calibration.npy")
  eval_ids = np.load(out / "eval.npy")
  t0 = time.perf_counter()
  model = decoder.from_pretrained(out / "bf16", dtype=jnp.float32, progress=False)
  report = None
  if method != "bf16":
    batches = [calib[i:i + 16] for i in range(0, calib.shape[0], 16)]
    model, report = decoder.quantize_pretrained(
        model, calibration=batches, method=method, compress_statistics="dq" in mods, refit="refit" in mods,
        clip_search="clip" in mods,
        quant_type="fp4" if "fp4" in mods else "nf4")
  seconds = time.perf_counter() - t0
  if method != "bf16":
    decoder.save_pretrained(model, out / spec.replace("+", "_"), progress=False)
  graphdef, state = nnx.split(model)
  nll = jax.jit(lambda s, ids: token_nll(nnx.merge(graphdef, s), ids).mean())
  losses = [float(nll(state, jnp.asarray(eval_ids[i:i + 16]))) for i in range(0, eval_ids.shape[0], 16)]
  loss = float(np.mean(losses))
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  errs = [l.error / l.error_rtn for l in report.layers] if report is not None and method != "rtn" else []
  return dict(method=spec, eval_loss=loss, perplexity=math.exp(loss), seconds=seconds, peak_rss_mb=peak_mb,
              calibration_tokens=int(calib.size), mean_layer_error_ratio=float(np.mean(errs)) if errs else None)


def table(rows: list[dict]) -> str:
  base = next(r for r in rows if r["method"] == "bf16")
  rtn_of = {fmt: next((r for r in rows if r["method"] == name), None)
            for fmt, name in (("nf4", "rtn"), ("dq", "rtn+dq"), ("fp4", "rtn+fp4"))}
  head = ("| method | eval loss (nats/byte) | perplexity | ppl increase vs bf16 | gap / RTN gap (same format) | "
          "layer error / RTN (mean) | quantize time (s) | peak RSS (MB) |")
  lines = [head, "|" + "---|" * 8]
  for r in rows:
    inc = r["perplexity"] / base["perplexity"] - 1
    fmt = "fp4" if "fp4" in r["method"] else "dq" if "dq" in r["method"] else "nf4"
    rtn = rtn_of[fmt]
    gap = "" if rtn is None or r["method"] == "bf16" else \
        f"{inc / (rtn['perplexity'] / base['perplexity'] - 1):.2f}x"
    ratio = "" if r["mean_layer_error_ratio"] is None else f"{r['mean_layer_error_ratio']:.3f}"
    secs = "" if r["method"] == "bf16" else f"{r['seconds']:.1f}"
    lines.append(f"| {r['method']} | {r['eval_loss']:.4f} | {r['perplexity']:.4f} | {100 * inc:+.2f}% | {gap} | "
                 f"{ratio} | {secs} | {r['peak_rss_mb']:.0f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out-dir", type=Path, required=True, help="work directory (reused if it holds bf16/)")
  p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
  p.add_argument("--pretrain-steps", type=int, default=300)
  p.add_argument("--calib-windows", type=int, default=64, help="calibration windows of 128 bytes")
  p.add_argument("--eval-windows", type=int, default=128, help="held-out evaluation windows of 129 bytes")
  p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one method in this process
  args = p.parse_args(argv)
  out = args.out_dir
  if args.one:
    print("RESULT " + json.dumps(run_one(out, args.one)), flush=True)
    return 0
  methods = [m for m in args.methods.split(",") if m]
  bad = sorted(set(methods) - set(METHODS))
  if bad or "bf16" not in methods:
    p.error(f"--methods must name some of {METHODS} including bf16; got unknown {bad}")
  out.mkdir(parents=True, exist_ok=True)
  if not (out / "bf16").is_dir():
    pretrain(out, args)
  for m in methods:
    if m != "bf16" and (out / m.replace("+", "_")).exists():
      p.error(f"{out / m.replace('+', '_')} exists; use a new --out-dir (only bf16/ is reused)")
  rows = []
  for m in methods:
    done = subprocess.run([sys.executable, __file__, "--out-dir", str(out), "--one", m], capture_output=True,
                          text=True)
    line = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    if done.returncode or not line:
      print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
      raise SystemExit(f"method {m} failed")
    rows.append(json.loads(line[0][7:]))
    print(f"{m}: eval loss {rows[-1]['eval_loss']:.4f}, {rows[-1]['seconds']:.1f} s", flush=True)
  import jax
  info = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              device=jax.devices()[0].device_kind, jax=jax.__version__, python=platform.python_version(),
              preset=PRESET, argv=sys.argv[1:], rows=rows)
  path = out / "results.json"
  if path.exists():  # a later run with other methods adds its rows (same bf16 model and data)
    earlier = json.loads(path.read_text())
    rows = [r for r in earlier["rows"] if r["method"] not in methods] + rows
    info["rows"] = rows
    info["earlier_runs"] = earlier.get("earlier_runs", []) + [{k: earlier[k] for k in ("date", "argv")}]
  path.write_text(json.dumps(info, indent=1))
  order = {m: i for i, m in enumerate(METHODS)}
  print(table(sorted(rows, key=lambda r: order[r["method"]])))
  return 0


if __name__ == "__main__":
  sys.exit(main())
