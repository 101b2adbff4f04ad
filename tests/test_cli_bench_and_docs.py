"""The bench command, --help of every command, tuned configs, and docstring examples."""

from __future__ import annotations

import doctest
import json

import pytest

from jaxfp4._src import quantize as quantize_module
from jaxfp4._src.analysis import metrics
from jaxfp4._src.cli.main import main
from pallas_kernels._src.dequantize_4bit import config as dequant_config
from pallas_kernels._src.quantize_4bit import config as quant_config
from tests.conftest import on_gpu


@pytest.mark.parametrize("command", ["demo", "analyze", "bench"])
def test_every_command_has_help(command, capsys):
  with pytest.raises(SystemExit) as e:
    main([command, "--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert "usage: jaxfp4 " + command in out
  assert "%%" not in out  # argparse %-formats help strings, not descriptions


def test_bench_prints_a_table_and_writes_json(tmp_path, capsys):
  out = tmp_path / "bench.json"
  assert main(["bench", "--shape", "64,128", "--quant-types", "nf4", "--skip-matmul",
               "--json", str(out)]) == 0
  text = capsys.readouterr().out
  assert "copy bandwidth" in text and "quantize   nf4" in text and "dequantize nf4+dq" in text
  data = json.loads(out.read_text())
  rows = {(r["op"], r["quant_type"], r["variant"]) for r in data["rows"]}
  assert ("quantize", "nf4", "xla") in rows and ("dequantize", "nf4+dq", "xla") in rows
  assert all(r["us"] > 0 and r["bytes"] > 0 for r in data["rows"])


def test_bench_matmul_table(tmp_path, capsys):
  out = tmp_path / "bench.json"
  assert main(["bench", "--skip-quantize", "--matmul-shapes", "48x128", "--ms", "1,3",
               "--format-types", "fp4,nf4+dq", "--format-ms", "1", "--quick",
               "--json", str(out)]) == 0
  text = capsys.readouterr().out
  # On a GPU the default dispatch is named by its route and the dequantize route gets a
  # row beside it; elsewhere matmul_4bit is the jnp path.
  assert "roofline: copy" in text and "matmul_4bit bwd" in text
  if not on_gpu():  # a CPU's TB/s and TFLOP/s columns would read 0.00
    header = next(line for line in text.splitlines() if line.startswith("N x K"))
    assert header.split()[7:9] == ["GB/s", "GFLOP/s"], header
  rows = json.loads(out.read_text())["matmul_rows"]
  got = {(r["M"], r["quant_type"], r["variant"]) for r in rows}
  for m in (1, 3):
    assert {(m, "bf16", "bf16"), (m, "bf16", "bf16 bwd"), (m, "nf4", "xla dequant+dot"),
            (m, "nf4", "matmul_4bit bwd")} <= got
    if on_gpu():
      assert (m, "nf4", "matmul_4bit [gemv]") in got and (m, "nf4", "dequant kernel+dot") in got
    else:
      assert (m, "nf4", "matmul_4bit") in got
  assert (1, "fp4", "matmul_4bit") in got and (1, "nf4+dq", "matmul_4bit") in got
  for r in rows:
    assert r["us"] > 0 and r["bytes"] > 0 and 0 < r["pct_roofline"]
    assert (r["speedup_vs_bf16"] is None) == (r["quant_type"] == "bf16")


def test_bench_rejects_an_unknown_quant_type(capsys):
  # one line naming the argument (the traceback only with --debug)
  assert main(["bench", "--shape", "64,128", "--quant-types", "int4"]) == 1
  assert "jaxfp4 bench: error: `quant_type` must be one of" in capsys.readouterr().err
  with pytest.raises(ValueError, match="`quant_type` must be one of"):
    main(["--debug", "bench", "--shape", "64,128", "--quant-types", "int4"])


def test_tuned_configs_are_read_for_their_device_kind():
  cfg = quant_config.get_config(64, "bfloat16", "nvidia_h100_80gb_hbm3")
  assert (cfg.block_rows, cfg.num_warps) == (128, 4)
  cfg = dequant_config.get_config(64, "bfloat16", "nvidia_h100_80gb_hbm3")
  assert (cfg.block_rows, cfg.lookup) == (128, "gather")
  # unknown device: the heuristic
  assert quant_config.get_config(4096, "float32", "some_gpu").block_rows == 2


@pytest.mark.parametrize("module", [quantize_module, metrics])
def test_docstring_examples_run(module):
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0


def test_bench_products_stay_separate_products():
  # On the GPU, XLA merges dots that share an operand into one (run 7: bf16 at 272% of the
  # copy roofline); each timed product must hide from the others that they share a weight.
  import re

  import jax
  import jax.numpy as jnp

  from jaxfp4._src import bench_matmul
  ws = [jnp.ones((64, 32), jnp.bfloat16) for _ in range(2)]
  xs = [jnp.full((2, 32), i, jnp.bfloat16) for i in range(6)]
  f = jax.jit(lambda xs, ws: bench_matmul._products(bench_matmul._dot_bf16, xs, ws))
  text = f.lower(xs, ws).as_text()
  assert len(re.findall(r"stablehlo.optimization_barrier", text)) == 6
  got = f(xs, ws)
  assert [float(g[0, 0]) for g in got] == [32.0 * i for i in range(6)]
