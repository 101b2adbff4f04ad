"""Where a Llama decode step's time goes on the GPU: kernels, their count, the gaps.

Builds the model of ``tools/bench_llama.py`` (random weights), runs the jitted
decode loop under ``jax.profiler.trace`` and reads the GPU stream events back
from the trace (``jax.profiler.ProfileData``). Per variant it prints the step's
wall time, the time some kernel was running (busy), the idle gaps between
kernels, and the kernels grouped by name (count and time per step), so that
"slow kernel" and "too many launches" can be told apart. Run on a GPU:

  python tools/profile_decode.py --config llama_8b --variants bf16,nf4_dq --json OUT.json
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402

from jaxfp4.models import llama  # noqa: E402
from tools import bench_llama  # noqa: E402


def _kernel_events(path: str) -> list[tuple[str, int, int]]:
  """(name, start_ns, duration_ns) of every kernel on the GPU streams of the trace."""
  data = jax.profiler.ProfileData.from_file(path)
  events = []
  for plane in data.planes:
    if not plane.name.startswith("/device:GPU"):
      continue
    for line in plane.lines:
      if "Stream" not in line.name:  # skip the "XLA Modules"/"XLA Ops" summary lines
        continue
      for e in line.events:
        if "memcpy" in e.name.lower() or "memset" in e.name.lower():
          continue
        events.append((e.name, int(e.start_ns), int(e.duration_ns)))
  return sorted(events, key=lambda ev: ev[1])


def _group(name: str) -> str:
  """Kernel name without the numeric suffixes XLA adds to fusions."""
  return re.sub(r"(_\d+)+$", "", re.sub(r"\.\d+", "", name))[:60]


def profile_variant(cfg, variant: str, batch: int, prompt: int, new: int) -> dict:
  model = bench_llama.build(cfg, variant)
  fns = llama.make_generate_fns(model, max_new_tokens=new)
  ids = jax.random.randint(jax.random.key(batch), (batch, prompt), 0, cfg.vocab_size)
  jax.block_until_ready(fns(ids))  # compile
  token, cache, done, key = jax.block_until_ready(fns.prefill(ids))
  t0 = time.perf_counter()
  jax.block_until_ready(fns.decode(token, cache, done, key))
  untraced = time.perf_counter() - t0
  token, cache, done, key = jax.block_until_ready(fns.prefill(ids))
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      jax.block_until_ready(fns.decode(token, cache, done, key))
    path = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)[0]
    events = _kernel_events(path)
    if not events:
      planes = jax.profiler.ProfileData.from_file(path).planes
      raise SystemExit("no GPU kernel events in the trace; planes: " +
                       "; ".join(f"{pl.name}: {[ln.name for ln in pl.lines][:6]}" for pl in planes))
  steps = new - 1
  start, end = events[0][1], max(s + d for _, s, d in events)
  busy, cur_end = 0, start
  for _, s, d in events:  # union of the kernel intervals
    busy += max(0, s + d - max(s, cur_end))
    cur_end = max(cur_end, s + d)
  by = collections.defaultdict(lambda: [0, 0])
  for name, _, d in events:
    by[_group(name)][0] += 1
    by[_group(name)][1] += d
  kernels = sorted(([n, c / steps, t / steps / 1e3] for n, (c, t) in by.items()),
                   key=lambda r: -r[2])
  return dict(variant=variant, batch=batch, steps=steps,
              untraced_ms_per_step=1e3 * untraced / steps,
              traced_ms_per_step=(end - start) / steps / 1e6,
              busy_ms_per_step=busy / steps / 1e6,
              kernels_per_step=len(events) / steps,
              kernels=[dict(name=n, per_step=c, us_per_step=t) for n, c, t in kernels])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", choices=("llama_1b", "llama_3b", "llama_8b", "tiny"),
                 default="llama_8b")
  p.add_argument("--variants", default="bf16,nf4_dq")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--prompt", type=int, default=128)
  p.add_argument("--new", type=int, default=17)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--per-layer", action="store_true",
                 help="call q/k/v and gate/up one by one (no shared 4-bit launch), for comparison")
  p.add_argument("--json", default=None)
  args = p.parse_args()
  if args.per_layer:
    bench_llama.call_projections_one_by_one()
  cfg = getattr(llama.LlamaConfig, args.config)()
  print(f"# {jax.devices()[0].device_kind}, JAX {jax.__version__}, {args.config}, "
        f"batch {args.batch}")
  rows = []
  for variant in args.variants.split(","):
    r = profile_variant(cfg, variant, args.batch, args.prompt, args.new)
    rows.append(r)
    gap = r["traced_ms_per_step"] - r["busy_ms_per_step"]
    print(f"{variant}: {r['untraced_ms_per_step']:.3f} ms/step untraced, "
          f"{r['traced_ms_per_step']:.3f} traced, kernels busy {r['busy_ms_per_step']:.3f}, "
          f"gaps {gap:.3f}, {r['kernels_per_step']:.0f} kernels/step")
    for k in r["kernels"][:args.top]:
      print(f"  {k['us_per_step']:9.1f} us  {k['per_step']:6.1f}x  {k['name']}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
                     config=args.config, rows=rows), f, indent=1)


if __name__ == "__main__":
  main()
