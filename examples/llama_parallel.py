"""Decode and QLoRA-train a 4-bit Llama on 1 and on N devices (tensor parallel / FSDP).

For each device count the script builds the same randomly initialised Llama
(NF4 with double quantization; embedding and lm_head in bfloat16, as
bitsandbytes leaves them) and measures:

* greedy decoding tokens/s: one device plain, N devices with
  ``llama.tensor_parallel_plan`` (Megatron split over a ``tp`` axis);
* a QLoRA training step (LoRA on every linear layer, AdamW, gradient
  checkpointing) at a fixed global batch: one device plain, N devices with
  ``llama.fsdp_plan`` (batch, 4-bit weights, adapters and optimizer state split
  over a ``data`` axis).

On one machine with two GPUs::

    python examples/llama_parallel.py --preset gpu --devices 1 2

On a CPU, ``--preset cpu`` runs a tiny model on XLA's virtual host devices.
Multi-host: start one process per host with the same command after
``jax.distributed.initialize()`` (see the README's "Sharding" section); the
code is unchanged because meshes and shardings span all processes' devices.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if "--preset" in sys.argv and "cpu" in sys.argv:
  # Virtual CPU devices must be requested before JAX starts.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

try:
  import jaxfp4  # noqa: E402
except ImportError:  # run from a source checkout without `pip install .`
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  import jaxfp4  # noqa: E402
import jaxfp4.nnx  # noqa: E402
from jaxfp4.models import llama  # noqa: E402

AUTO = jax.sharding.AxisType.Auto

PRESETS = {
    # Llama-3.1-8B's shapes (random weights): 32 layers, GQA 32/8 heads.
    "gpu": dict(config=dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                            head_dim=128, rope_theta=500000.0, max_position_embeddings=8192),
                dtype="bfloat16", prompt=32, new_tokens=128, batches=(1, 16),
                train_batch=8, train_seq=512, lora_rank=16, steps=5),
    "cpu": dict(config=dict(vocab_size=512, hidden_size=128, intermediate_size=256,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=32, rope_theta=10000.0, max_position_embeddings=256),
                dtype="float32", prompt=8, new_tokens=8, batches=(1,),
                train_batch=8, train_seq=16, lora_rank=4, steps=2),
}


def build(config: llama.LlamaConfig, dtype, weights: str = "nf4") -> llama.LlamaForCausalLM:
  """The Llama with every decoder linear layer a fresh NF4 (+DQ) ``Dense4bit`` (or bf16)."""
  rngs = nnx.Rngs(0)

  def linear(path, fan_in, fan_out, use_bias):
    if path == "lm_head" or weights == "bf16":
      return nnx.Linear(fan_in, fan_out, use_bias=use_bias, dtype=dtype, param_dtype=dtype, rngs=rngs)
    return jaxfp4.nnx.Dense4bit(fan_in, fan_out, use_bias=use_bias, dtype=dtype, param_dtype=dtype,
                                quant_type="nf4", compress_statistics=True, rngs=rngs)

  return llama.LlamaForCausalLM(config, dtype=dtype, param_dtype=dtype, linear=linear, rngs=rngs)


def weight_bytes(model) -> int:
  """Bytes a decode step must read: every parameter once (4-bit layers as stored)."""
  leaves = jax.tree.leaves(nnx.state(model, nnx.Not(nnx.LoRAParam)))
  return int(sum(x.size * x.dtype.itemsize for x in leaves))


def time_decode(model, batch: int, prompt: int, new_tokens: int, vocab: int) -> dict:
  fns = llama.make_generate_fns(model, max_new_tokens=new_tokens)
  ids = jax.random.randint(jax.random.key(1), (batch, prompt), 0, vocab, dtype=jnp.int32)
  times = []
  for _ in range(2):  # the first call compiles
    token, cache, done, key = fns.prefill(ids)
    jax.block_until_ready(token)
    t0 = time.perf_counter()
    out = fns.decode(token, cache, done, key)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
  steps = new_tokens - 1
  return dict(batch=batch, seconds=times[-1], ms_per_step=1e3 * times[-1] / steps,
              tokens_per_s=batch * steps / times[-1])


def time_qlora(model, mesh, plan, batch: int, seq: int, rank: int, steps: int, vocab: int) -> dict:
  jaxfp4.nnx.add_lora(model, rank=rank, rngs=nnx.Rngs(2))
  if plan is not None:
    llama.shard_llama(model, mesh, plan)
  with jax.numpy_dtype_promotion("standard"):
    opt = llama.qlora_optimizer(model, optax.adamw(1e-4))
  ids = jax.random.randint(jax.random.key(3), (batch, seq + 1), 0, vocab, dtype=jnp.int32)
  if plan is not None:
    ids = jax.device_put(ids, llama.batch_sharding(mesh, plan))
  step = llama.make_qlora_step(model, opt)
  losses, times = [], []
  for _ in range(steps + 1):  # the first step compiles
    t0 = time.perf_counter()
    losses.append(float(step(ids)))
    times.append(time.perf_counter() - t0)
  ms = 1e3 * float(np.median(times[1:]))
  return dict(batch=batch, seq=seq, ms_per_step=ms, tokens_per_s=batch * seq / (ms / 1e3),
              losses=losses, step_seconds=times)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
  p.add_argument("--devices", type=int, nargs="+", default=[1, 2], help="device counts to compare")
  p.add_argument("--layers", type=int, default=None, help="override the number of decoder layers")
  p.add_argument("--skip", choices=("decode", "qlora"), nargs="*", default=[], help="parts to leave out")
  p.add_argument("--weights", choices=("nf4", "bf16"), default="nf4",
                 help="nf4: 4-bit decoder layers (double quantized); bf16: the dense baseline")
  p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
  args = p.parse_args(argv)
  if args.weights == "bf16" and "qlora" not in args.skip:
    p.error("--weights bf16 is the decode baseline; add --skip qlora (QLoRA needs 4-bit layers)")
  preset = PRESETS[args.preset]
  cfg = dict(preset["config"])
  if args.layers:
    cfg["num_hidden_layers"] = args.layers
  config = llama.LlamaConfig(**cfg)
  dtype = jnp.dtype(preset["dtype"])
  results = dict(device=jax.devices()[0].device_kind, jax=jax.__version__, preset=args.preset,
                 weights=args.weights, layers=config.num_hidden_layers, runs=[])
  for n in args.devices:
    if n > jax.device_count():
      raise SystemExit(f"--devices {n}: only {jax.device_count()} devices are visible.")
    devices = np.array(jax.devices()[:n])
    model = build(config, dtype, args.weights)
    row = dict(devices=n, weights=args.weights, weight_bytes=weight_bytes(model))
    if "decode" not in args.skip:
      if n > 1:
        mesh = jax.sharding.Mesh(devices.reshape(1, n), ("data", "tp"), axis_types=(AUTO, AUTO))
        llama.shard_llama(model, mesh, llama.tensor_parallel_plan(axis="tp"))
      row["decode"] = [time_decode(model, b, preset["prompt"], preset["new_tokens"], config.vocab_size)
                       for b in preset["batches"]]
    if "qlora" not in args.skip:
      mesh = jax.sharding.Mesh(devices.reshape(n), ("data",), axis_types=(AUTO,))
      plan = llama.fsdp_plan(axis="data") if n > 1 else None
      row["qlora"] = time_qlora(model, mesh, plan, preset["train_batch"], preset["train_seq"],
                                preset["lora_rank"], preset["steps"], config.vocab_size)
    results["runs"].append(row)
    del model
    print(json.dumps(row), flush=True)
  print(f"\n{results['device']}, JAX {results['jax']}, {config.num_hidden_layers} layers, "
        f"{args.weights} weights")
  print(f"{'devices':>7} {'part':>16} {'ms/step':>9} {'tokens/s':>10}")
  for row in results["runs"]:
    for d in row.get("decode", []):
      print(f"{row['devices']:>7} {'decode B=' + str(d['batch']):>16} {d['ms_per_step']:>9.2f} "
            f"{d['tokens_per_s']:>10.1f}")
    if "qlora" in row:
      q = row["qlora"]
      print(f"{row['devices']:>7} {'qlora ' + str(q['batch']) + 'x' + str(q['seq']):>16} "
            f"{q['ms_per_step']:>9.1f} {q['tokens_per_s']:>10.1f}")
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
