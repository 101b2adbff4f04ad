"""One launch each of the Mosaic kernel on prepared inputs, for ``ncu`` (no XLA kernels run).

8192 x 8192 NF4 (float32 absmax per 64), M = 16 bf16 activations: the default config (scales
transposed by XLA beforehand) and the slab config whose scales are waited for inside the
first pipeline step (``late_slab``). Inputs are made with numpy, so the only GPU kernels
of this process are the ones named on stdout.

  ncu --clock-control none --section SpeedOfLight ... python3 ncu_wgmma.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.getcwd())
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxfp4._src import formats  # noqa: E402
from pallas_kernels._src.lut_matmul import wgmma as W  # noqa: E402
from pallas_kernels._src.lut_matmul.wgmma_layout import permute_activations  # noqa: E402

n = k = 8192
m = int(sys.argv[1]) if len(sys.argv) > 1 else 16
rng = np.random.default_rng(0)
words = jnp.asarray(rng.integers(-2**31, 2**31, (n, k // 8), dtype=np.int64).astype(np.int32))
stored = rng.random((n, k // 64), dtype=np.float32) * 0.05 + 0.01
table = jnp.asarray(np.tile(np.asarray(formats.NF4_CODE, np.float32), 8))
x = np.asarray(permute_activations(jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)))
x = jnp.asarray(x)
for cfg, scales, slab in [(W.WgmmaConfig(), jnp.asarray(stored.T.copy()), False),
                          (W.WgmmaConfig(slab=True, late_slab=True), jnp.asarray(stored), True)]:
  cfg = W.fit(cfg, m, n, k)
  f = jax.jit(lambda x, a, s: W.wgmma_partials(x, a, s, table, config=cfg, slab=slab))
  print("kernel", cfg.name(), flush=True)
  jax.block_until_ready(f(x, words, scales))
