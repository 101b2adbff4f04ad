"""``jaxfp4 quantize --method gptq`` end to end on the shipped tiny Llama, and its argument checks."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxfp4.io
from jaxfp4._src.cli.main import main
from jaxfp4.models import decoder

BF16 = Path(__file__).parent / "data" / "llama_tiny" / "bf16"
# k_proj and v_proj only: one weight shape keeps the test's compile time small.
KEEP = ("lm_head", "q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SKIP = [a for name in KEEP for a in ("--skip", name)]


def _digest(path: Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_gptq_checkpoint_loads_and_matches_the_library(tmp_path, capsys):
  ids = np.random.default_rng(0).integers(0, 512, (8, 32))
  np.save(tmp_path / "calib.npy", ids)
  before = _digest(BF16)
  out = tmp_path / "gptq"
  assert main(["quantize", str(BF16), str(out), "--method", "gptq", "--calibration", str(tmp_path / "calib.npy"),
               "--no-progress", *SKIP]) == 0
  printed = capsys.readouterr().out
  assert "4 layers quantized with gptq on 256 calibration tokens" in printed
  ratios = [float(line.split()[-1]) for line in printed.splitlines() if line.startswith("model.layers.")]
  assert len(ratios) == 4 and max(ratios) < 1.0  # every layer's calibration error below RTN's
  assert _digest(BF16) == before  # the input is never written
  cfg = json.loads((out / "config.json").read_text())["quantization_config"]
  assert cfg["bnb_4bit_quant_type"] == "nf4" and cfg["bnb_4bit_compute_dtype"] == "bfloat16"
  assert sorted(cfg["llm_int8_skip_modules"]) == sorted(KEEP)
  with jaxfp4.io.Checkpoint(out) as ckpt:
    assert sorted(ckpt.quantized_weights()) == sorted(
        f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "kv")
  # The library on the same inputs gives the same model: the checkpoint holds
  # exactly its bytes (the logits of the reloaded model are identical).
  model, _ = decoder.quantize_pretrained(BF16, calibration=ids, method="gptq", skip=KEEP)
  loaded = decoder.from_pretrained(out, dtype=jnp.float32, progress=False)
  probe = jnp.asarray(ids[:2, :16])
  np.testing.assert_array_equal(np.asarray(loaded(probe)[0]), np.asarray(model(probe)[0]))


@pytest.mark.parametrize("extra, message", [
    (["--method", "gptq"], "--method gptq needs --calibration FILE"),
    (["--method", "rtn", "--calibration", "CALIB"], "--calibration is not used by --method rtn"),
    (["--method", "clip", "--calibration", "BAD"], "token ids outside [0, 512)"),
    (["--method", "gptq", "--calibration", "TEXT"], "tokenizer.json"),
    (["--method", "gptq", "--calibration", "CALIB", "--percdamp", "0"], "--percdamp must be > 0"),
    (["--method", "hqq", "--refit"], "are GPTQ options"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, capsys, extra, message):
  np.save(tmp_path / "calib.npy", np.zeros((2, 8), np.int64))
  np.save(tmp_path / "bad.npy", np.full((2, 8), 9999, np.int64))
  (tmp_path / "text.txt").write_text("hello")
  files = {"CALIB": "calib.npy", "BAD": "bad.npy", "TEXT": "text.txt"}
  extra = [str(tmp_path / files[a]) if a in files else a for a in extra]
  with pytest.raises(SystemExit):
    main(["quantize", str(BF16), str(tmp_path / "out"), *extra])
  assert message in capsys.readouterr().err
  assert not (tmp_path / "out").exists()
