"""The core imports without Flax: formats, quantize, state and matmul need only JAX and numpy."""

import subprocess
import sys
from pathlib import Path

import jaxfp4

ROOT = Path(__file__).resolve().parents[1]

# Blocks the packages above the core (an import of a module set to None raises),
# then uses the core: quantize with double quantization, the state's dict round
# trip, dequantize and the matmul.
_CORE_WITHOUT_FLAX = """
import sys
for name in ("flax", "optax", "tqdm", "matplotlib"):
    sys.modules[name] = None
import jax.numpy as jnp
import jaxfp4
packed, state = jaxfp4.quantize_4bit(jnp.ones((8, 64)), quant_type="nf4", compress_statistics=True)
state = jaxfp4.QuantState.from_dict(state.as_dict(packed=True))
assert jaxfp4.dequantize_4bit(packed, state).shape == (8, 64)
assert jaxfp4.matmul_4bit(jnp.ones((2, 64)), packed, state).shape == (2, 8)
try:
    jaxfp4.calibrate
except ImportError:
    pass
else:
    raise AssertionError("calibrate imported although Flax is blocked")
"""


def test_core_runs_with_flax_absent():
  done = subprocess.run([sys.executable, "-c", _CORE_WITHOUT_FLAX], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]


def test_every_public_name_resolves():
  # Calibration names load on first use (module __getattr__); all must resolve.
  for name in jaxfp4.__all__:
    assert getattr(jaxfp4, name) is not None, name
  assert set(jaxfp4.__all__) <= set(dir(jaxfp4))
