"""Golden data for ``jaxfp4.models.bert``, made with transformers (torch, CPU, float32).

Run on a machine with torch and transformers (the device):

  python tools/make_minilm_golden.py --tokenizer-dir DIR --real-weights W.safetensors --out OUT

Writes, under OUT:
- ``bert_tiny/``: a randomly initialised ``transformers.BertModel`` (2 layers, hidden 64) saved with
  ``save_pretrained``, with ``golden.npz``: padded inputs, ``last_hidden_state`` and the
  sentence-transformers embedding (masked mean pooling, then L2 normalisation).
- ``minilm_tokens.json``: the ids that all-MiniLM-L6-v2's own tokenizer (``tokenizer.json``,
  loaded by ``AutoTokenizer``) gives a fixed set of texts, edge cases included, truncated to 256.
- ``minilm_real.npz``: the sentence embeddings of ``examples/data/sentences.txt`` computed by
  ``BertModel`` with all-MiniLM-L6-v2's weights after rounding them to bfloat16 (the rounding lets
  the file travel to the device; the test rounds the same way).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import load_file

EDGE_CASES = [
  "Hello, World!",
  "HÉLLO wörld: naïve café, Ångström and crème brûlée.",
  "unaffable antidisestablishmentarianism supercalifragilisticexpialidocious",
  "x" * 120,
  "Numbers 3.14159, 1,000,000 and 42nd; e-mail: someone@example.com",
  "中文字符和日本語のテキスト mixed with English.",
  "Emoji 🙂 and symbols ∑ ≤ ≥ → ™ © are here.",
  "tabs\tand\nnewlines\r\n  and   spaces",
  "don't won't it's (parenthesised) [bracketed] {braced} \"quoted\"",
  "\u00adsoft\u200bzero-width\u0000null\u0007bell",
  "",
  " ".join(["a long sentence that goes on"] * 60),
]


def read_sentences(path: Path) -> list[str]:
  return [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]


def sentence_embedding(model, ids, mask, types):
  with torch.no_grad():
    h = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
  m = mask[..., None].to(h.dtype)
  pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
  return h, torch.nn.functional.normalize(pooled, p=2, dim=1)


def tiny(out: Path) -> None:
  torch.manual_seed(0)
  config = transformers.BertConfig(
      vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=128, max_position_embeddings=40, type_vocab_size=2, hidden_act="gelu",
      layer_norm_eps=1e-12, attn_implementation="eager")
  model = transformers.BertModel(config, add_pooling_layer=True).eval()
  with torch.no_grad():  # LayerNorm starts at (1, 0); move it so the test sees its parameters
    for name, p in model.named_parameters():
      if "LayerNorm" in name:
        p.add_(0.1 * torch.randn_like(p))
  d = out / "bert_tiny"
  model.save_pretrained(d, safe_serialization=True)
  g = torch.Generator().manual_seed(1)
  ids = torch.randint(1, 211, (3, 16), generator=g)
  lengths = [16, 11, 5]
  mask = torch.zeros(3, 16, dtype=torch.long)
  for i, n in enumerate(lengths):
    mask[i, :n] = 1
    ids[i, n:] = 0
  types = torch.zeros_like(ids)
  types[0, 8:] = 1  # a sentence pair in row 0
  h, emb = sentence_embedding(model, ids, mask, types)
  np.savez(d / "golden.npz", input_ids=ids.numpy(), attention_mask=mask.numpy(),
           token_type_ids=types.numpy(), last_hidden_state=h.numpy(), embeddings=emb.numpy())


def tokens(tok_dir: Path, sentences: list[str], out: Path) -> None:
  tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
  texts = EDGE_CASES + sentences
  enc = tok(texts, truncation=True, max_length=256)
  (out / "minilm_tokens.json").write_text(json.dumps(
      {"tokenizer": type(tok).__name__, "transformers": transformers.__version__, "max_length": 256,
       "texts": texts, "input_ids": enc["input_ids"]}, ensure_ascii=False, indent=0))


def real(tok_dir: Path, weights: Path, sentences: list[str], out: Path) -> None:
  config = transformers.BertConfig.from_pretrained(tok_dir, attn_implementation="eager")
  model = transformers.BertModel(config).eval()
  state = {k: v.float() for k, v in load_file(weights).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert not [m for m in missing if "position_ids" not in m], missing
  tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
  enc = tok(sentences, truncation=True, max_length=256, padding=True, return_tensors="pt")
  _, emb = sentence_embedding(model, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
  np.savez(out / "minilm_real.npz", embeddings=emb.numpy())


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tokenizer-dir", type=Path, required=True)
  p.add_argument("--real-weights", type=Path, required=True)
  p.add_argument("--sentences", type=Path, default=Path("examples/data/sentences.txt"))
  p.add_argument("--out", type=Path, required=True)
  args = p.parse_args()
  torch.set_num_threads(4)
  args.out.mkdir(parents=True, exist_ok=True)
  sentences = read_sentences(args.sentences)
  tiny(args.out)
  tokens(args.tokenizer_dir, sentences, args.out)
  real(args.tokenizer_dir, args.real_weights, sentences, args.out)
  print("torch", torch.__version__, "transformers", transformers.__version__)


if __name__ == "__main__":
  main()
