"""Generate from a Hugging Face Llama directory (bf16 or bitsandbytes 4-bit) and time prefill and decode apart.

The directory is read with ``jaxfp4.models.llama.from_pretrained``: dense
safetensors, or a checkpoint that transformers + bitsandbytes saved in 4 bits
(its NF4/FP4 tensor groups are used as stored). The prompt is token ids
(``--prompt-ids 1,2,3``) or, when the directory has a ``tokenizer.json`` and
the ``tokenizers`` package is installed, text (``--prompt "..."``).

Timing uses ``llama.make_generate_fns``: one jitted prefill (the prompt into
the KV cache, first new token) and one jitted decode loop (the other
``max_new_tokens - 1`` tokens). The first call compiles both and is reported
apart; then each is timed ``--repeats`` times and the medians are reported.

  python examples/generate.py                                   # tests/data/llama_tiny/nf4_dq (random weights)
  python examples/generate.py path/to/Llama-3.2-1B-bnb-4bit --prompt "The capital of France is" \\
      --max-new-tokens 64 --temperature 0.7 --top-p 0.9
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

try:
  import jaxfp4
except ImportError:  # run from a source checkout without `pip install .`
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  import jaxfp4
import jaxfp4.nnx
from jaxfp4.models import llama

# Resolved from this file, not the working directory, so the default runs from anywhere in a checkout.
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "tests" / "data" / "llama_tiny" / "nf4_dq"
DEFAULT_PROMPT_IDS = "1,15,27,3,8,42,7,11"


def parse_ids(text: str) -> list[int]:
  """``"1,2,3"`` -> ``[1, 2, 3]``; argparse turns the ValueError into a usage error."""
  try:
    ids = [int(t) for t in text.replace(" ", "").split(",") if t]
  except ValueError:
    raise argparse.ArgumentTypeError(f"token ids must be comma-separated ints, got {text!r}") from None
  if not ids or min(ids) < 0:
    raise argparse.ArgumentTypeError(f"token ids must be a non-empty list of ints >= 0, got {text!r}")
  return ids


def load_tokenizer(path: Path) -> Any | None:
  """The directory's ``tokenizer.json`` as a ``tokenizers.Tokenizer``, or None if either is missing."""
  if not (path / "tokenizer.json").is_file():
    return None
  try:
    from tokenizers import Tokenizer
  except ImportError:
    return None
  return Tokenizer.from_file(str(path / "tokenizer.json"))


def describe(model: llama.LlamaForCausalLM) -> dict[str, Any]:
  """Layer counts and bytes of the loaded model's weights."""
  four_bit = [n for _, n in nnx.iter_graph(model) if isinstance(n, jaxfp4.nnx.Dense4bit)]
  dense = [n for _, n in nnx.iter_graph(model) if isinstance(n, nnx.Linear)]
  leaves = jax.tree_util.tree_leaves(nnx.state(model, nnx.Any(nnx.Param, jaxfp4.nnx.QuantizedWeight)))
  formats = sorted({f"{s.quant_type}{'+dq' if s.nested else ''}"
                    for s in (n.quant_state.get_value() for n in four_bit)})
  return {"linear_4bit": len(four_bit), "linear_dense": len(dense), "formats": formats,
          "weight_bytes": int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves))}


def trim_at_eos(ids: list[int], eos: tuple[int, ...]) -> list[int]:
  """The generated ids up to and including the first EOS (the rest is padding)."""
  for i, t in enumerate(ids):
    if t in eos:
      return ids[:i + 1]
  return ids


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="\n\n".join(__doc__.split("\n\n")[1:]))
  p.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL,
                 help="Hugging Face Llama directory (default: the tiny random NF4+DQ test checkpoint)")
  src = p.add_mutually_exclusive_group()
  src.add_argument("--prompt-ids", type=parse_ids, default=None,
                   help=f"prompt token ids, comma-separated (default {DEFAULT_PROMPT_IDS})")
  src.add_argument("--prompt", default=None, help="prompt text (needs tokenizer.json and `tokenizers`)")
  p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
  p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default); > 0 samples")
  p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
  p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold in (0, 1]")
  p.add_argument("--seed", type=int, default=0, help="sampling seed")
  p.add_argument("--batch", type=int, default=1, help="rows (the prompt repeated) per call (default 1)")
  p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                 help="compute dtype (default: the checkpoint's)")
  p.add_argument("--quant-type", choices=("nf4", "fp4"), default=None,
                 help="quantize a dense checkpoint's linear layers (not lm_head) as it loads")
  p.add_argument("--ignore-eos", action="store_true", help="do not stop rows at the model's EOS id")
  p.add_argument("--repeats", type=int, default=3, help="timed runs after the compiling one (default 3)")
  p.add_argument("--json", type=Path, default=None, help="also write the results here")
  p.add_argument("--no-progress", action="store_true", help="no loading progress bar")
  args = p.parse_args(argv)
  for name in ("max_new_tokens", "batch", "repeats"):
    if getattr(args, name) <= 0:
      p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
  if not math.isfinite(args.temperature) or args.temperature < 0:
    p.error(f"--temperature must be a finite number >= 0, got {args.temperature}.")
  if args.top_k is not None and args.top_k <= 0:
    p.error(f"--top-k must be positive, got {args.top_k}.")
  if args.top_p is not None and not 0 < args.top_p <= 1:
    p.error(f"--top-p must be in (0, 1], got {args.top_p}.")
  if not (args.model / "config.json").is_file():
    p.error(f"{args.model} has no config.json (a Hugging Face model directory is needed).")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Loads, generates, prints the tokens and timings; returns them as a dict."""
  args = parse_args(argv)
  tokenizer = load_tokenizer(args.model)
  if args.prompt is not None and tokenizer is None:
    raise SystemExit(f"error: --prompt needs {args.model / 'tokenizer.json'} and the `tokenizers` package "
                     "(pip install tokenizers); pass --prompt-ids instead.")

  t0 = time.perf_counter()
  model = llama.from_pretrained(args.model, dtype=args.dtype, quant_type=args.quant_type,
                                progress=not args.no_progress)
  load_s = time.perf_counter() - t0
  cfg = model.config
  info = describe(model)
  print(f"# {jax.devices()[0].device_kind}, JAX {jax.__version__}")
  print(f"model {args.model}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, "
        f"compute {model.dtype.name}; {info['linear_4bit']} 4-bit linear layers "
        f"({', '.join(info['formats']) or 'none'}), {info['linear_dense']} dense; "
        f"weights {info['weight_bytes']:,} bytes; loaded in {load_s:.2f} s")

  prompt = (tokenizer.encode(args.prompt).ids if args.prompt is not None
            else args.prompt_ids or parse_ids(DEFAULT_PROMPT_IDS))
  if max(prompt) >= cfg.vocab_size:
    raise SystemExit(f"error: prompt id {max(prompt)} is outside the vocabulary ({cfg.vocab_size} ids).")
  ids = jnp.asarray(np.tile(np.asarray(prompt, np.int32), (args.batch, 1)))
  eos = () if args.ignore_eos else cfg.eos_token_ids
  fns = llama.make_generate_fns(model, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, eos_token_id=list(eos) or None)
  key = jax.random.key(args.seed)

  # The first call traces and compiles prefill and decode; it is not a speed measurement.
  t0 = time.perf_counter()
  out = jax.block_until_ready(fns(ids, key))
  first_s = time.perf_counter() - t0
  prefill_s, decode_s = [], []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    token, cache, done, k = jax.block_until_ready(fns.prefill(ids, key))
    prefill_s.append(time.perf_counter() - t0)
    if args.max_new_tokens > 1:
      t0 = time.perf_counter()
      jax.block_until_ready(fns.decode(token, cache, done, k))
      decode_s.append(time.perf_counter() - t0)
  prefill = statistics.median(prefill_s)
  decode = statistics.median(decode_s) if decode_s else None
  steps = args.max_new_tokens - 1  # the first new token comes out of the prefill

  new = np.asarray(out)[:, len(prompt):]
  rows = [trim_at_eos(r.tolist(), eos) for r in new]
  print(f"prompt ({len(prompt)} tokens): {prompt}")
  for i, r in enumerate(rows[:4]):
    print(f"generated{f' [{i}]' if args.batch > 1 else ''} ({len(r)} tokens): {r}")
    if tokenizer is not None:
      print("  text:", repr(tokenizer.decode(r)))
  print(f"first call (compile + run): {first_s:.2f} s")
  print(f"prefill: {1e3 * prefill:.2f} ms for {args.batch} x {len(prompt)} tokens "
        f"({args.batch * len(prompt) / prefill:,.0f} tokens/s), median of {args.repeats}")
  if decode is not None:
    print(f"decode:  {1e3 * decode:.2f} ms for {steps} steps x {args.batch} rows: {1e3 * decode / steps:.3f} ms/step, "
          f"{args.batch * steps / decode:,.1f} tokens/s, median of {args.repeats}")
  result = {
      "device": jax.devices()[0].device_kind, "jax": jax.__version__, "model": str(args.model),
      "dtype": model.dtype.name, **info, "load_s": load_s, "prompt_ids": prompt, "generated_ids": rows,
      "text": [tokenizer.decode(r) for r in rows] if tokenizer is not None else None,
      "batch": args.batch, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
      "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, "first_call_s": first_s,
      "prefill_s": prefill, "prefill_tokens_per_s": args.batch * len(prompt) / prefill,
      "decode_s": decode, "decode_steps": steps,
      "decode_tokens_per_s": None if decode is None else args.batch * steps / decode,
  }
  if args.json is not None:
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
  return result


if __name__ == "__main__":
  main()
