"""The README's python blocks run as written, in order, in one namespace.

The sharding block (8 virtual CPU devices, which conftest.py already asks
for) runs on its own, and the multi-host block, which starts JAX its own way
(``jax.distributed.initialize``), in a fresh interpreter. Relative paths in the
blocks are the repository's: the blocks run in a temporary directory that
links ``tests/``, so what they write (adapters, checkpoints) lands there.
"""

import pathlib
import re
import subprocess
import sys

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^( *)```python\n(.*?)^\1```$", re.S | re.M)


def readme_blocks() -> list[str]:
  text = (ROOT / "README.md").read_text(encoding="utf-8")
  blocks = []
  for m in FENCE.finditer(text):
    indent = m.group(1)
    blocks.append("\n".join(line[len(indent):] for line in m.group(2).splitlines()))
  return blocks


def _own_process(code: str) -> bool:
  return "jax.distributed.initialize" in code


def _sharding(code: str) -> bool:
  return "xla_force_host_platform_device_count" in code


def _run(code: str, name: str, namespace: dict) -> None:
  # A user's JAX promotes dtypes and ranks as standard; conftest.py makes the suite strict.
  with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
    exec(compile(code, name, "exec"), namespace)


def test_readme_has_the_blocks():
  blocks = readme_blocks()
  assert len(blocks) >= 7, len(blocks)
  assert any("xla_force_host_platform_device_count=8" in b for b in blocks)
  assert sum(_own_process(b) for b in blocks) == 1
  assert sum(_sharding(b) for b in blocks) == 1


def test_readme_blocks_run(tmp_path, monkeypatch):
  (tmp_path / "tests").symlink_to(ROOT / "tests")
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "__readme__"}
  for i, code in enumerate(readme_blocks()):
    if not (_own_process(code) or _sharding(code)):
      _run(code, f"README.md python block {i + 1}", namespace)
  assert namespace["tokens"].shape == (1, 4 + 16)  # the Llama block's prompt + new tokens
  assert (tmp_path / "adapter" / "adapter_config.json").is_file()
  assert (tmp_path / "qwen-nf4" / "model.safetensors.index.json").is_file()


def test_readme_sharding_block_runs():
  assert len(jax.devices()) == 8  # conftest.py: --xla_force_host_platform_device_count=8
  (code,) = [b for b in readme_blocks() if _sharding(b)]
  namespace = {"__name__": "__readme__"}
  _run(code, "README.md sharding block", namespace)
  assert namespace["tokens"].shape == (1, 8)  # 4 prompt + 4 new tokens, tensor parallel
  assert namespace["loss"].shape == () and float(namespace["loss"]) > 0  # one FSDP QLoRA step


def test_readme_multihost_block_runs_in_its_own_process(tmp_path):
  (code,) = [b for b in readme_blocks() if _own_process(b)]
  done = subprocess.run([sys.executable, "-c", code + "\nprint(dict(mesh.shape))"], cwd=tmp_path,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "'data': 1" in done.stdout, done.stdout
