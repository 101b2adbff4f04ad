"""Test configuration: hardened JAX numerics and shared fixtures."""

from __future__ import annotations

import os
import pkgutil
import shutil
import tempfile
import uuid

# Kernels run in the Pallas interpreter on the CPU; keep XLA single-threaded
# per process so `pytest -n 2` does not oversubscribe CI's two cores.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
# Eight virtual CPU devices for the sharding tests (tests/test_sharding.py); on
# one device everything else runs as before (arrays default to device 0).
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"

# Without a GPU plugin the suite compiles hundreds of small CPU programs and runs each
# for microseconds: LLVM's cheap settings cut the suite from 575-583 s to 468 s on CI-like
# 2 cores (same tests passing). Not on GPU machines, where they would also change how XLA
# compiles the GPU programs under test.
_CPU_ONLY = not any(m.name.startswith(("jax_cuda", "jax_rocm")) for m in pkgutil.iter_modules())
if _CPU_ONLY:
  for flag in ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"):
    if flag.split("=")[0] not in os.environ["XLA_FLAGS"]:
      os.environ["XLA_FLAGS"] += " " + flag

# On a GPU, `pytest -n N` starts N processes that would each preallocate 75% of
# the GPU memory: allocate on demand so the documented command works there.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
# XLA on Ampere/Hopper runs float32 dots in TF32 by default (measured on the
# H100: float32 Llama logits 3.6e-3 off transformers' float32); tests that
# compare float32 results against float32/float64 references need real float32.
# matmul_4bit sets its own precision, so this changes only plain jnp dots.
jax.config.update("jax_default_matmul_precision", "highest")

# Many tests build fresh jitted closures that compile programs another test (or the other
# xdist worker) already compiled: JAX's in-memory caches key on the function, its persistent
# cache on the program. One cache directory per run, shared by the run's workers (they
# inherit the controller's environment, set here before they start), removed by the
# controller at the end: 7-15% off CPU subsets of the suite (test_kernels, test_sharding
# and test_lut_kernels: 117 -> 100 s on 2 cores). CPU only, like the flags above.
os.environ.setdefault("JAXFP4_TEST_RUN_ID", uuid.uuid4().hex)
_JIT_CACHE = os.path.join(tempfile.gettempdir(),
                          "jaxfp4-tests-jit-" + os.environ["JAXFP4_TEST_RUN_ID"])
if _CPU_ONLY and "JAXFP4_TEST_NO_JIT_CACHE" not in os.environ:
  jax.config.update("jax_compilation_cache_dir", _JIT_CACHE)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_sessionfinish(session, exitstatus):
  """The controller (or a run without workers) removes the run's compilation cache."""
  del exitstatus
  if not hasattr(session.config, "workerinput"):
    shutil.rmtree(_JIT_CACHE, ignore_errors=True)

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "bnb_golden.npz")


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
  """bitsandbytes 0.50.2 CUDA outputs (tools/make_bnb_golden.py)."""
  with np.load(GOLDEN) as f:
    return {k: f[k] for k in f.files}


def on_gpu() -> bool:
  return jax.default_backend() == "gpu"


def auto_mesh(shape, names):
  """A mesh of the first ``prod(shape)`` devices with Auto axes; skips if there are fewer."""
  n = int(np.prod(shape))
  if jax.device_count() < n:
    pytest.skip(f"needs {n} devices, {jax.device_count()} visible (CPU runs get 8 virtual ones)")
  devices = np.array(jax.devices()[:n]).reshape(shape)
  return jax.sharding.Mesh(devices, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


# The longest files first (CPU timings of the suite): pytest-xdist hands tests out in
# collection order, so a minute-long README test collected last would leave one of CI's
# two workers idle at the end.
_SLOW_FIRST = ("tests/test_readme.py", "tests/test_examples.py", "tests/test_llama_parallel.py",
               "tests/test_example_calibrate_minilm.py", "tests/test_example_minilm.py",
               "tests/test_fp4_training.py", "tests/test_qlora_step.py")


def pytest_collection_modifyitems(config, items):
  del config
  items.sort(key=lambda item: not item.nodeid.startswith(_SLOW_FIRST))  # a stable sort
