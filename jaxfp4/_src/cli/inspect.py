"""``jaxfp4 inspect``: the tensors, formats and bytes of a safetensors file or model directory."""

from __future__ import annotations

import argparse
import json
import math


def add_parser(sub) -> None:
  p = sub.add_parser(
      "inspect", help="list the tensors, 4-bit formats and bytes of a checkpoint",
      description="Lists every tensor of a .safetensors file or a Hugging Face model directory. "
                  "A bitsandbytes 4-bit weight is shown as one row with its format, block size, "
                  "nesting, original shape, stored bytes and bits per weight.")
  p.add_argument("path", metavar="PATH", help="a .safetensors file or a model directory")
  p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
  p.set_defaults(run=run, parser=p)


def rows(ckpt) -> list[dict]:
  """One row per dense tensor or 4-bit group."""
  from jaxfp4._src.io import checkpoint as ck
  broken = ckpt.incomplete_groups()
  if broken:
    w, keys = next(iter(broken.items()))
    more = f" ({len(broken) - 1} more 4-bit weights likewise)" if len(broken) > 1 else ""
    raise ValueError(
        f"{str(ckpt.path)!r}: the 4-bit group of {w!r} is incomplete: it has {keys} but no "
        f"{w + '.quant_state.bitsandbytes__<nf4|fp4>'!r} blob, so its packed bytes cannot be "
        f"decoded{more}.")
  out = []
  groups = {}
  for w in ckpt.quantized_weights():
    groups[w] = ck.group_keys(w, ckpt.keys())
  in_group = {k for ks in groups.values() for k in ks} | set(groups)
  for w, keys in groups.items():
    _, state = ckpt.get_4bit(w)
    nbytes = sum(ckpt.info(k).nbytes for k in keys + [w])
    fmt = f"{state.quant_type} bs{state.blocksize}" + (" nested" if state.nested else "")
    out.append(dict(name=w, format=fmt, dtype=str(state.dtype), shape=list(state.shape), bytes=nbytes,
                    bits_per_weight=8.0 * nbytes / max(math.prod(state.shape), 1)))
  for k in ckpt.keys():
    if k in in_group:
      continue
    info = ckpt.info(k)
    out.append(dict(name=k, format="dense", dtype=str(info.dtype), shape=list(info.shape),
                    bytes=info.nbytes, bits_per_weight=8.0 * info.dtype.itemsize))
  return sorted(out, key=lambda r: r["name"])


def run(args: argparse.Namespace) -> int:
  from jaxfp4._src.cli.demo import check_writable
  from jaxfp4._src.cli.paths import write_text
  from jaxfp4._src.io.checkpoint import Checkpoint
  check_writable(args.parser, "--json", args.json, inputs=[args.path], overwrite=False)
  try:
    with Checkpoint(args.path) as ckpt:
      table = rows(ckpt)
      config = ckpt.config
  except (ValueError, FileNotFoundError) as e:
    args.parser.error(str(e))
  w = max([len(r["name"]) for r in table] + [6])
  print(f"{'tensor':<{w}}  {'format':<16}  {'dtype':<9}  {'shape':<16}  {'bytes':>12}  {'bits/w':>6}")
  for r in table:
    shape = "[" + ", ".join(map(str, r["shape"])) + "]"
    print(f"{r['name']:<{w}}  {r['format']:<16}  {r['dtype']:<9}  {shape:<16}  {r['bytes']:>12,}  "
          f"{r['bits_per_weight']:>6.2f}")
  n4 = sum(r["format"] != "dense" for r in table)
  total = sum(r["bytes"] for r in table)
  params = sum(math.prod(r["shape"]) for r in table)
  print(f"{len(table)} tensors ({n4} 4-bit), {params:,} parameters, {total:,} bytes "
        f"({8.0 * total / max(params, 1):.2f} bits/parameter)")
  if config and config.get("quantization_config"):
    print("quantization_config:", json.dumps(config["quantization_config"], sort_keys=True))
  if args.json:
    write_text(args.json, json.dumps(table, indent=1))
  return 0
