"""Where the Mosaic route's time goes (run 5): each XLA piece around the kernel timed alone.

8 distinct NF4 weights per timed call (float32 absmax per 64), bf16 activations; times are per
product. Pieces: the activation permutation, the scale transpose (kernel_scales), the kernel
(wgmma_partials on prepared inputs), the split-K sum, and the whole wgmma_4bit.

  python3 docs/measurements/mosaic_2026-12-07/run5_breakdown.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.getcwd())
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxfp4._src import formats  # noqa: E402
from jaxfp4._src.bench import time_call  # noqa: E402
from pallas_kernels import PackedWeight, WeightFormat  # noqa: E402
from pallas_kernels._src.lut_matmul import wgmma as W  # noqa: E402
from pallas_kernels._src.lut_matmul.wgmma_layout import permute_activations  # noqa: E402

COPIES = 8
rng = np.random.default_rng(0)
fmt = WeightFormat(lut=tuple(formats.NF4_CODE.tolist()), blocksize=64)
print(jax.__version__, jax.devices()[0].device_kind, flush=True)
RS = {"reduce": True, "slab": True}
for n, k, m, cfgs in [(8192, 8192, 16, [{}, {"slab": True}, {"reduce": True}, RS,
                                         {**RS, "split_k": 4}]),
                      (8192, 8192, 64, [{}, RS]),
                      (8192, 8192, 128, [{"sub": 2}, {"sub": 2, **RS}]),
                      (8192, 8192, 1, [RS])]:
  wq = [PackedWeight(jnp.asarray(rng.integers(0, 256, (n, k // 64, 32), dtype=np.uint8)),
                     jnp.asarray(rng.random((n, k // 64), dtype=np.float32) * 0.05 + 0.01))
        for _ in range(COPIES)]
  ws = wq
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
  xs = [x + i for i in range(COPIES)]
  wb = jnp.asarray(rng.standard_normal((COPIES, n, k)), jnp.bfloat16)
  t_bf16 = time_call(jax.jit(lambda x, wb: [x @ wb[i].T for i in range(COPIES)]), x, wb) / COPIES
  t_perm = time_call(jax.jit(lambda xs: [permute_activations(v) for v in xs]), xs) / COPIES
  t_sc = time_call(jax.jit(lambda ws: [W.kernel_scales(w, fmt) for w in ws]), ws) / COPIES
  words = [jax.lax.bitcast_convert_type(w.data.reshape(n, k // 8, 4), jnp.int32) for w in ws]
  sct = [W.kernel_scales(w, fmt) for w in ws]
  table = jnp.asarray(np.tile(np.asarray(fmt.lut, np.float32), 8))
  xl = permute_activations(jnp.pad(x, ((0, -(-m // 8) * 8 - m), (0, 0))))
  print(f"{n}x{k} M={m}: bf16 {t_bf16*1e6:.1f} us, permute {t_perm*1e6:.1f}, "
        f"kernel_scales {t_sc*1e6:.1f}", flush=True)
  for c in cfgs:
    cfg = W.fit(W.WgmmaConfig(**c), -(-m // 8) * 8, n, k)
    slab = cfg.slab and W.slab_ok(fmt, -(-m // 8) * 8, k, cfg)
    try:
      full = time_call(jax.jit(lambda x, ws: [W.wgmma_4bit(x, w, fmt=fmt, config=cfg) for w in ws]),
                       x, ws) / COPIES
      kern = time_call(jax.jit(lambda xl, wd, sc: [
          W.wgmma_partials(xl, a, s, table, config=cfg, slab=slab) for a, s in zip(wd, sc)]),
          xl, words, [W.stored_scales(w, fmt) for w in ws] if slab else sct) / COPIES
      parts = [W.wgmma_partials(xl, a, s, table, config=cfg, slab=slab)
               for a, s in zip(words, [W.stored_scales(w, fmt) for w in ws] if slab else sct)]
      t_sum = time_call(jax.jit(lambda ps: [p.sum(0)[:, :m].T.astype(jnp.bfloat16) for p in ps]),
                        parts) / COPIES
      gb = (n * k // 2 + n * k // 64 * 4) / 1e9
      print(f"  {cfg.name():32s} slab={slab!s:5s} full {full*1e6:6.1f} us ({t_bf16/full:.2f}x)"
            f"  kernel {kern*1e6:6.1f} us ({gb/kern/1e3:.2f} TB/s)  sum {t_sum*1e6:5.1f}",
            flush=True)
    except Exception as e:  # noqa: BLE001
      print("  FAIL", c, type(e).__name__, str(e)[:200], flush=True)

# NF4 + double quantization (byte-coded absmax, float32 group scale per 256 blocks): the
# scales decoded by XLA, transposed (kernel_scales) or in the stored order (slab).
n = k = 8192
m = 16
fmt_dq = WeightFormat(lut=fmt.lut, blocksize=64, scale_kind="byte", nested_blocksize=256)
groups = n * (k // 64) // 256
wdq = [PackedWeight(jnp.asarray(rng.integers(0, 256, (n, k // 64, 32), dtype=np.uint8)),
                    jnp.asarray(rng.integers(0, 256, (n, k // 64), dtype=np.uint8)),
                    jnp.asarray(np.sort(rng.uniform(-1, 1, 256)).astype(np.float32)),
                    jnp.asarray(rng.uniform(0.01, 0.05, groups).astype(np.float32)),
                    jnp.asarray([0.03], jnp.float32)) for _ in range(COPIES)]
x = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
for c in [{}, {"reduce": True}, RS, {**RS, "coded_slab": True}]:
  cfg = W.fit(W.WgmmaConfig(**c), m, n, k)
  for name, f, wl in (("nf4", fmt, None), ("nf4+dq", fmt_dq, wdq)):
    if name == "nf4" and c.get("coded_slab"):
      continue
    if wl is None:
      wl = [PackedWeight(jnp.asarray(rng.integers(0, 256, (n, k // 64, 32), dtype=np.uint8)),
                         jnp.asarray(rng.random((n, k // 64), dtype=np.float32) * 0.05 + 0.01))
            for _ in range(COPIES)]
    t = time_call(jax.jit(lambda x, ws: [W.wgmma_4bit(x, w, fmt=f, config=cfg) for w in ws]),
                  x, wl) / COPIES
    print(f"  {name:7s} M={m} {cfg.name():32s} full {t*1e6:6.1f} us", flush=True)
