"""Decode tokens/s, weight memory and one QLoRA step of a Llama: bf16 vs NF4 vs NF4+DQ.

Random weights from ``LlamaConfig.llama_1b()`` (Llama-3.2-1B's shapes) or
``--config llama_8b`` (Llama-3.1-8B's). Run on a GPU:

  python tools/bench_llama.py --json OUT.json
  python tools/bench_llama.py --config llama_8b --variants bf16,nf4_dq --routes default --skip-qlora
  python tools/bench_llama.py --config llama_8b --variants nf4_dq,nf4_dq_wgmma --routes default --skip-qlora

Decode: prefill a random prompt, then time the jitted decode loop alone
(median of ``--repeats``); tokens/s = batch * decoded tokens / seconds. The
floor is the bytes a decode step must read (all weights once, plus the KV
cache) over the measured copy bandwidth. QLoRA: one jitted step (forward, loss,
grad of the adapters, AdamW update) at ``--seq`` tokens, against the same step
with bf16 weights and bf16 LoRA adapters; compiled memory from XLA's
``memory_analysis``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxfp4
import jaxfp4.nnx
from jaxfp4._src.bench import copy_bandwidths
from jaxfp4._src.flax.quantize_model import state_nbytes
from jaxfp4.models import llama


class LoRADense(nnx.Module):
  """bf16 baseline: a frozen nnx.Linear plus LoRA adapters (the PEFT layout)."""

  def __init__(self, base: nnx.Linear, rank: int, rngs: nnx.Rngs):
    self.base = base
    dt = base.param_dtype
    self.lora_a = nnx.LoRAParam(nnx.initializers.he_uniform()(rngs.params(), (base.in_features, rank), dt))
    self.lora_b = nnx.LoRAParam(jnp.zeros((rank, base.out_features), dt))

  def __call__(self, x):
    return self.base(x) + (x @ self.lora_a[...]) @ self.lora_b[...]


def linear_bytes(model) -> int:
  total = 0
  for _, node in nnx.iter_graph(model):
    if isinstance(node, jaxfp4.nnx.Dense4bit):
      total += node.nbytes()
    elif isinstance(node, nnx.Linear):
      total += node.kernel[...].nbytes
  return total


def call_projections_one_by_one() -> None:
  """Model code calls q/k/v and gate/up separately (no shared 4-bit launch): the baseline
  of the grouped launch."""
  from jaxfp4._src.models.decoder import layers as decoder_layers  # the module that makes the call
  decoder_layers.apply_shared_input = lambda layers, x: tuple(layer(x) for layer in layers)


VARIANTS = ("bf16", "nf4", "nf4_dq", "nf4_wgmma", "nf4_dq_wgmma")


def build(cfg, variant: str, rngs_seed: int = 0):
  """``variant``: bf16, or NF4 (``_dq``: double-quantized; ``_wgmma``: the bytes repacked
  into the Mosaic decoder's K order at load time, ``jaxfp4.nnx.repack_model``)."""
  if variant not in VARIANTS:
    raise ValueError(f"--variants takes {VARIANTS}, got {variant!r}.")
  model = llama.LlamaForCausalLM(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(rngs_seed))
  if variant != "bf16":
    jaxfp4.nnx.quantize_model(model, quant_type="nf4",
                              compress_statistics=variant.startswith("nf4_dq"), skip="lm_head")
  if variant.endswith("_wgmma"):
    jaxfp4.nnx.repack_model(model, layout="wgmma")
  return model


def set_implementation(model, implementation):
  for _, node in nnx.iter_graph(model):
    if isinstance(node, jaxfp4.nnx.Dense4bit):
      node.implementation = implementation


def bench_decode(model, batch: int, prompt: int, new: int, repeats: int) -> tuple[float, float]:
  """Median seconds of the decode loop, and seconds of the first call (compile + one run)."""
  fns = llama.make_generate_fns(model, max_new_tokens=new)
  ids = jax.random.randint(jax.random.key(batch), (batch, prompt), 0, model.config.vocab_size)
  t0 = time.perf_counter()
  jax.block_until_ready(fns(ids))  # compile both pieces
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    token, cache, done, key = jax.block_until_ready(fns.prefill(ids))
    t0 = time.perf_counter()
    jax.block_until_ready(fns.decode(token, cache, done, key))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), first


def qlora_step(model, seq: int, repeats: int):
  opt = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.LoRAParam)
  graphdef, state = nnx.split((model, opt))

  def step(state, ids):
    m, o = nnx.merge(graphdef, state)

    def loss_fn(m):
      logits, _ = m(ids[:, :-1])
      logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
      return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1).mean()

    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.LoRAParam))(m)
    o.update(m, grads)
    return nnx.state((m, o)), loss

  jitted = jax.jit(step, donate_argnums=0)
  ids = jax.random.randint(jax.random.key(1), (1, seq + 1), 0, model.config.vocab_size)
  compiled = jitted.lower(state, ids).compile()
  mem = compiled.memory_analysis()
  memory = {k: int(getattr(mem, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                              "temp_size_in_bytes", "alias_size_in_bytes")} if mem else {}
  losses, times = [], []
  for i in range(repeats + 2):
    t0 = time.perf_counter()
    state, loss = compiled(state, ids)
    loss = float(jax.block_until_ready(loss))
    if i >= 2:
      times.append(time.perf_counter() - t0)
    losses.append(loss)
  adapter = sum(math.prod(x.shape) * x.dtype.itemsize
                for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.LoRAParam)))
  return statistics.median(times), memory, losses, adapter


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batches", default="1,16")
  p.add_argument("--prompt", type=int, default=128)
  p.add_argument("--new", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--variants", default="bf16,nf4,nf4_dq",
                 help=f"comma-separated, of {', '.join(VARIANTS)}")
  p.add_argument("--routes", default="default,pallas", help="implementations to time for 4-bit decode")
  p.add_argument("--skip-qlora", action="store_true")
  p.add_argument("--skip-decode", action="store_true")
  p.add_argument("--remat", action="store_true", help="gradient checkpointing in the QLoRA step")
  p.add_argument("--config", choices=("llama_1b", "llama_3b", "llama_8b", "tiny"),
                 default="llama_1b")
  p.add_argument("--per-layer", action="store_true",
                 help="call q/k/v and gate/up one by one (no shared 4-bit launch), for comparison")
  p.add_argument("--json", default=None)
  args = p.parse_args()
  if args.per_layer:
    call_projections_one_by_one()
  cfg = getattr(llama.LlamaConfig, args.config)()
  dev = jax.devices()[0]
  bw = max(copy_bandwidths(jnp.zeros((256 * 2**20,), jnp.bfloat16)).values())
  out = {"device": dev.device_kind, "jax": jax.__version__, "config": args.config,
         "copy_bandwidth_GBps": bw / 1e9, "decode": [], "qlora": []}
  print(f"# {dev.device_kind}, JAX {jax.__version__}, copy bandwidth {bw / 1e9:.0f} GB/s")
  batches = [int(b) for b in args.batches.split(",")]
  base_bytes = None  # the first variant's (bytes, linear-layer bytes): the ratios' base
  variants = [] if args.skip_decode else args.variants.split(",")
  for variant in variants:
    t0 = time.perf_counter()
    model = build(cfg, variant)
    built = time.perf_counter() - t0
    wbytes, lbytes = state_nbytes(model), linear_bytes(model)
    base_bytes = base_bytes or (wbytes, lbytes)
    print(f"{variant}: weights {wbytes / 1e9:.3f} GB ({wbytes / base_bytes[0]:.3f}x of "
          f"{variants[0]}), linear layers {lbytes / 1e9:.3f} GB ({lbytes / base_bytes[1]:.3f}x); "
          f"built in {built:.1f} s", flush=True)
    routes = ["default"] if variant == "bf16" else args.routes.split(",")
    for route in routes:
      set_implementation(model, None if route == "default" else route)
      for b in batches:
        secs, first = bench_decode(model, b, args.prompt, args.new, args.repeats)
        steps = args.new - 1
        kv = 2 * cfg.num_hidden_layers * b * (args.prompt + args.new) * cfg.num_key_value_heads * (
            cfg.head_dim or cfg.hidden_size // cfg.num_attention_heads) * 2
        floor = (wbytes + kv / 2) / bw  # every weight byte + half the final cache, per step
        row = dict(variant=variant, route=route, batch=b, ms_per_step=1e3 * secs / steps,
                   tokens_per_s=b * steps / secs, weight_bytes=wbytes, linear_bytes=lbytes,
                   pct_roofline=100 * floor / (secs / steps), first_call_s=first)
        out["decode"].append(row)
        print(f"  decode {route:>7} batch {b:>3}: {row['ms_per_step']:.2f} ms/step, "
              f"{row['tokens_per_s']:.0f} tok/s, {row['pct_roofline']:.0f}% of the weight-read floor "
              f"(first call, compile included: {first:.1f} s)")
    set_implementation(model, None)
    del model
  if not args.skip_qlora:
    for variant in ("bf16_lora", "nf4_qlora", "nf4_dq_qlora"):
      model = llama.LlamaForCausalLM(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0),
                                     remat=args.remat)
      if variant == "bf16_lora":
        for path, node in list(nnx.iter_graph(model)):
          if isinstance(node, nnx.Linear) and path[-1] != "lm_head":
            parent = model
            for k in path[:-1]:
              parent = getattr(parent, k) if isinstance(k, str) else parent[k]
            setattr(parent, path[-1], LoRADense(node, args.rank, nnx.Rngs(1)))
      else:
        jaxfp4.nnx.quantize_model(model, quant_type="nf4", compress_statistics="dq" in variant,
                                  skip="lm_head", lora_rank=args.rank, rngs=nnx.Rngs(1))
      wbytes = state_nbytes(model)
      secs, memory, losses, adapter = qlora_step(model, args.seq, args.repeats)
      row = dict(variant=variant, seq=args.seq, rank=args.rank, remat=args.remat, step_s=secs, model_bytes=wbytes,
                 adapter_bytes=adapter, memory=memory, losses=losses)
      out["qlora"].append(row)
      print(f"{variant}: step {secs * 1e3:.1f} ms, model {wbytes / 1e9:.3f} GB, "
            f"compiled {json.dumps({k: round(v / 1e9, 3) for k, v in memory.items()})} GB, "
            f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
      del model
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
