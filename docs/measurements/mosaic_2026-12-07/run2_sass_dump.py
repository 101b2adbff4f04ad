"""Compile the library's Mosaic kernel once (4096x4096, M=16, default config) with SASS dumping on."""
import jax, jax.numpy as jnp, numpy as np, sys
sys.path.insert(0, ".")
from tests.test_matmul_kernels import make_weight
from pallas_kernels._src.lut_matmul import wgmma
for cfg in (wgmma.WgmmaConfig(), wgmma.WgmmaConfig(slab=True)):
  w, fmt = make_weight(4096, 4096, 64, "float", seed=1)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 4096)), jnp.bfloat16)
  y = jax.jit(lambda x, w: wgmma.wgmma_4bit(x, w, fmt=fmt, config=cfg))(x, w)
  print(cfg.name(), wgmma.fit(cfg, 16, 4096, 4096).name(), float(jnp.abs(y.astype(jnp.float32)).mean()))
