"""The examples (``examples/*.py``) run end to end in tiny configurations."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from types import ModuleType

import pytest

from tests._examples import load_example


@pytest.fixture(scope="module")
def qlora() -> ModuleType:
  return load_example("qlora_finetune")


@pytest.fixture(scope="module")
def generate() -> ModuleType:
  return load_example("generate")


@pytest.fixture(scope="module")
def fp4() -> ModuleType:
  return load_example("fp4_pretrain")


def _png_size(path: Path) -> tuple[int, int]:
  data = path.read_bytes()[:24]
  assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
  return struct.unpack(">II", data[16:24])


# One layer, 64 wide, 32-byte windows: every variant compiles in seconds on a CPU core. float32
# because XLA:CPU compiles the bfloat16 backward pass about 2x slower (measured 3.8-4.9 s vs 2.1 s).
TINY = ["--dtype", "float32", "--hidden-size", "64", "--intermediate-size", "64", "--layers", "1", "--heads", "2", "--kv-heads", "2",
        "--seq-len", "32", "--batch-size", "8", "--pretrain-steps", "30", "--finetune-steps", "12",
        "--eval-every", "6", "--eval-windows", "8", "--pretrain-lr", "1e-2", "--finetune-lr", "3e-3",
        "--lora-rank", "4", "--lora-alpha", "8", "--no-progress"]


@pytest.mark.parametrize("name", ["qlora_finetune", "generate", "fp4_pretrain"])
def test_help(name, capsys):
  module = load_example(name)
  with pytest.raises(SystemExit) as e:
    module.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("usage:") and "--seed" in out


def test_qlora_finetune_tiny_run(qlora, tmp_path, capsys):
  out_dir = tmp_path / "run"
  res = qlora.main([*TINY, "--out-dir", str(out_dir)])
  printed = capsys.readouterr().out

  pre = res["pretrain"]
  assert len(pre["train_loss"]) == 30 and all(math.isfinite(x) for x in pre["train_loss"])
  # Byte-level start: ln(256) = 5.55 nats; 30 steps learn at least the byte frequencies.
  assert pre["train_loss"][0] > 5.0 and sum(pre["train_loss"][-5:]) / 5 < pre["train_loss"][0] - 1.0
  assert pre["eval_loss"][-1] < pre["eval_loss"][0] - 1.0
  assert (out_dir / "pretrained.safetensors").is_file()

  rows = {r["variant"]: r for r in res["variants"]}
  assert list(rows) == list(qlora.VARIANTS)
  for name, r in rows.items():
    hist = res["histories"][name]
    assert hist["eval_steps"] == [0, 6, 12]
    assert all(math.isfinite(x) for x in hist["eval_loss"] + hist["train_loss"]), name
    assert r["eval_loss"] < r["eval_loss_start"], name
    assert r["perplexity"] == pytest.approx(math.exp(r["eval_loss"]))
    assert r["step_s"] > 0
  # All start from the same saved weights; the dense-LoRA adapters start at B = 0, so
  # it is the pretrained model exactly. Quantizing the weights moves the start.
  assert rows["lora"]["eval_loss_start"] == rows["full"]["eval_loss_start"]
  assert rows["qlora_nf4"]["eval_loss_start"] != rows["lora"]["eval_loss_start"]
  assert rows["lora"]["gap_vs_lora"] == 0.0
  # Adapters only, the same count for dense and 4-bit bases; full trains everything.
  adapters = {rows[v]["trainable_params"] for v in ("lora", "qlora_nf4", "qlora_nf4_dq", "qlora_fp4")}
  assert len(adapters) == 1 and rows["full"]["trainable_params"] > adapters.pop()
  # Weights: 4 bits per linear weight plus a float32 absmax per 64, against float32 weights;
  # nested statistics are smaller still.
  assert rows["full"]["linear_bytes"] == rows["lora"]["linear_bytes"]
  assert rows["qlora_nf4"]["linear_ratio"] == pytest.approx(0.5 / 4 + 4 / 64 / 4, abs=1e-6)
  assert rows["qlora_nf4_dq"]["linear_bytes"] < rows["qlora_nf4"]["linear_bytes"]
  assert rows["qlora_fp4"]["weight_bytes"] == rows["qlora_nf4"]["weight_bytes"]
  assert isinstance(res["claim_nf4_within_1pct_of_lora"], bool)

  written = json.loads((out_dir / "results.json").read_text())
  assert [r["variant"] for r in written["variants"]] == list(qlora.VARIANTS)
  assert written["config"]["vocab_size"] == 256 and written["data"]["domain_eval"]["bytes"] > 0
  assert _png_size(out_dir / "qlora_finetune.png") == (1000, 380)
  assert "NF4 QLoRA final eval loss" in printed and "NF4+DQ QLoRA" in printed

  # A second run into the same directory refuses to overwrite the pretrained model.
  with pytest.raises(SystemExit, match="--pretrained"):
    qlora.main([*TINY, "--out-dir", str(out_dir)])


def test_qlora_finetune_usage_errors(qlora, capsys):
  for argv in (["--variants", "qlora_int4"], ["--seq-len", "0"], ["--pretrain-steps", "0"]):
    with pytest.raises(SystemExit) as e:
      qlora.main(argv)
    assert e.value.code == 2, argv
  assert "--variants must name" in capsys.readouterr().err


# One layer, 64 wide, 32-byte windows, float32 compute (as TINY above): each variant compiles in 2-7 s.
# Three variants: the dense baseline, the new STE recipe and one with stochastic rounding; the dge
# and mxfp4 recipes train a Llama in tests/test_fp4_training.py.
FP4_TINY = ["--dtype", "float32", "--hidden-size", "64", "--intermediate-size", "64", "--layers", "1", "--heads", "2",
            "--kv-heads", "2", "--seq-len", "32", "--batch-size", "8", "--steps", "16", "--eval-every", "8",
            "--eval-windows", "8", "--lr", "1e-2", "--variants", "nvfp4,ste,bf16", "--no-progress"]


def test_fp4_pretrain_tiny_run(fp4, tmp_path, capsys):
  out_dir = tmp_path / "run"
  res = fp4.main([*FP4_TINY, "--out-dir", str(out_dir)])
  printed = capsys.readouterr().out

  rows = {r["variant"]: r for r in res["variants"]}
  assert list(rows) == ["bf16", "ste", "nvfp4"]  # bf16 first: the gaps are relative to it
  starts = set()
  for name, r in rows.items():
    hist = res["histories"][name]
    assert r["diverged_at"] is None, name
    assert hist["eval_steps"] == [0, 8, 16] and len(hist["train_loss"]) == 16
    assert all(math.isfinite(x) for x in hist["eval_loss"] + hist["train_loss"]), name
    # Byte-level start: ln(256) = 5.55 nats; 16 steps learn at least the byte frequencies.
    assert hist["eval_loss"][-1] < hist["eval_loss"][0] - 1.0, name
    assert sum(hist["train_loss"][-3:]) / 3 < hist["train_loss"][0] - 1.0, name
    assert r["train_loss"] == pytest.approx(sum(hist["train_loss"][-2:]) / 2)  # the last 10% of 16 steps
    assert r["step_s"] > 0 and isinstance(r["within_goal"], bool) == (name != "bf16")
    starts.add(hist["eval_loss"][0])
  # The same initial weights: the quantized forward moves the step-0 loss of each FP4 recipe.
  assert len(starts) == len(rows)
  assert rows["bf16"]["fp4_layers"] == 0 and rows["bf16"]["eval_gap"] == 0.0
  # One block: its 7 linear layers are FP4, lm_head is not.
  assert rows["ste"]["fp4_layers"] == rows["nvfp4"]["fp4_layers"] == 7
  assert 0 < rows["nvfp4"]["fp4_param_share"] < 1
  # Stochastic rounding drew one fresh key per FP4 layer and step (the counter left the jitted step).
  assert rows["nvfp4"]["sr_key_draws"] == 7 * 16 and rows["ste"]["sr_key_draws"] is None
  best = min((rows[v] for v in ("ste", "nvfp4")), key=lambda r: r["eval_gap"])
  assert res["goal_within_2pct"] == (best["eval_gap"] <= 0.02)
  assert res["compute_dtype"] == "float32" and res["param_dtype"] == "float32" and res["jax"]

  written = json.loads((out_dir / "results.json").read_text())
  assert [r["variant"] for r in written["variants"]] == ["bf16", "ste", "nvfp4"]
  assert written["device"] and written["data"]["pretrain_eval"]["bytes"] > 0
  assert _png_size(out_dir / "fp4_pretrain.png") == (1000, 380)
  assert "Best FP4 recipe:" in printed and "NVFP4" in printed and "FP4 STE" in printed


def test_fp4_pretrain_reports_a_diverged_recipe(fp4):
  """A recipe whose loss went NaN is a row of the table that misses the goal, not a crash."""
  rows = [{"variant": "bf16", "label": "bf16", "fp4_layers": 0, "step_s": 0.1, "step_ratio": 1.0, "train_loss": 2.0,
           "eval_loss": 2.1, "bits_per_byte": 3.0, "train_gap": 0.0, "eval_gap": 0.0, "within_goal": None,
           "diverged_at": None},
          {"variant": "mxfp4", "label": "MXFP4", "fp4_layers": 7, "step_s": 0.2, "step_ratio": 2.0, "train_loss": None,
           "eval_loss": None, "bits_per_byte": None, "train_gap": None, "eval_gap": None, "within_goal": False,
           "diverged_at": 12}]
  assert "MXFP4                 7    200.0         diverged at step 12" in fp4.results_table(rows)
  assert fp4.verdict(rows) == ("Every FP4 recipe diverged. The goal (within 2%) DID NOT HOLD at this scale.", False)
  ok = {**rows[0], "variant": "nvfp4", "label": "NVFP4", "eval_loss": 2.142, "eval_gap": 0.02}
  line, held = fp4.verdict([*rows, ok])
  assert held and line.startswith("Best FP4 recipe: NVFP4, final eval loss 2.1420 vs bf16 2.1000 (+2.00%)")


def test_fp4_pretrain_usage_errors(fp4, capsys):
  for argv in (["--variants", "bf16,fp8"], ["--steps", "0"], ["--layers", "2", "--keep-first", "1", "--keep-last", "1"],
               ["--keep-last", "-1"]):
    with pytest.raises(SystemExit) as e:
      fp4.main(argv)
    assert e.value.code == 2, argv
  err = capsys.readouterr().err
  assert "`--variants` must name some of bf16, ste, dge, nvfp4, mxfp4; got ['fp8']" in err
  assert "leaves none of the 2 blocks" in err


def test_generate_default_checkpoint(generate, tmp_path, capsys):
  out = tmp_path / "gen.json"
  res = generate.main(["--no-progress", "--max-new-tokens", "8", "--repeats", "2", "--json", str(out)])
  assert res["linear_4bit"] == 14 and res["formats"] == ["nf4+dq"]
  assert res["prompt_ids"] == [1, 15, 27, 3, 8, 42, 7, 11]
  (row,) = res["generated_ids"]
  assert 1 <= len(row) <= 8 and all(0 <= t < 512 for t in row)
  for k in ("first_call_s", "prefill_s", "decode_s", "prefill_tokens_per_s", "decode_tokens_per_s"):
    assert math.isfinite(res[k]) and res[k] > 0, k
  assert res["decode_steps"] == 7
  assert json.loads(out.read_text())["generated_ids"] == res["generated_ids"]
  printed = capsys.readouterr().out
  assert "prefill:" in printed and "tokens/s" in printed


def test_generate_sampling_is_seeded(generate):
  argv = ["tests/data/llama_tiny/bf16", "--no-progress", "--prompt-ids", "1,2,3", "--max-new-tokens", "6",
          "--temperature", "0.8", "--top-k", "50", "--top-p", "0.9", "--batch", "2", "--repeats", "1",
          "--ignore-eos"]
  a, b = generate.main([*argv, "--seed", "5"]), generate.main([*argv, "--seed", "5"])
  assert a["generated_ids"] == b["generated_ids"]
  assert [len(r) for r in a["generated_ids"]] == [6, 6]
  assert a["linear_4bit"] == 0 and a["linear_dense"] == 15


def test_generate_usage_errors(generate, capsys):
  with pytest.raises(SystemExit) as e:
    generate.main(["--prompt-ids", "1,x"])
  assert e.value.code == 2
  with pytest.raises(SystemExit, match="tokenizer.json"):
    generate.main(["--prompt", "hello"])
