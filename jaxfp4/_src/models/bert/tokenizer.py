"""``WordPieceTokenizer``: BERT's tokenizer in pure Python, from a ``vocab.txt``.

The algorithm is the one of BERT's reference tokenizer (Devlin et al. 2018,
google-research/bert ``tokenization.py``: ``BasicTokenizer`` + ``WordpieceTokenizer``),
with WordPiece segmentation after Wu et al. 2016 (GNMT, §4.1): greedy
longest-match-first over the vocabulary, "##" marking a piece that continues a
word. Where the reference and Hugging Face's Rust ``BertNormalizer`` /
``BertPreTokenizer`` differ in corner cases, this follows the Rust one (what
transformers and sentence-transformers run):

1. clean: drop NUL, U+FFFD and control characters (Unicode category C*, except
   tab, newline and carriage return); every whitespace character (Unicode
   White_Space, which includes U+2028/U+2029) becomes a space;
2. put spaces around CJK ideographs, so each is a word;
3. strip accents (NFD, then drop nonspacing marks, category Mn), then lowercase
   character by character (uncased models);
4. split on whitespace and punctuation (ASCII 33-47, 58-64, 91-96, 123-126 and
   Unicode category P*); each punctuation character is a word;
5. WordPiece each word; a word longer than 100 characters, or one that cannot be
   covered by vocabulary pieces, becomes ``[UNK]``.

Special tokens written literally in the text (``"[SEP]"``) are matched before
normalization, as Hugging Face's added tokens are. Special-token ids come from
the vocabulary file, never from constants.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PADDING = ("longest", "max_length")
# Unicode White_Space (what Rust's char::is_whitespace tests).
_WHITESPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
                        "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
# The CJK Unified Ideographs blocks (and compatibility ideographs) that BERT splits
# character by character; Hangul, Hiragana and Katakana are not among them.
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_control(ch: str) -> bool:
  return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_cjk(cp: int) -> bool:
  return any(lo <= cp <= hi for lo, hi in _CJK)


def _is_punctuation(ch: str) -> bool:
  cp = ord(ch)
  # Non-letter ASCII symbols such as "$" and "^" are not category P* but BERT
  # treats them as punctuation too.
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(ch).startswith("P")


def read_vocab(path: str | os.PathLike) -> dict[str, int]:
  """Reads a ``vocab.txt`` (one token per line, the line number is its id)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"No vocabulary file at {str(path)!r}.")
  # Split on "\n" only: tokens may hold characters that str.splitlines() breaks on.
  lines = path.read_bytes().decode("utf-8").split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  vocab: dict[str, int] = {}
  for i, token in enumerate(lines):
    token = token.rstrip("\r")
    vocab.setdefault(token, i)  # a repeated line keeps its first id, as transformers does
  return vocab


class WordPieceTokenizer:
  """BERT's WordPiece tokenizer (see the module docstring for the steps).

  Args:
    vocab: token -> id.
    lowercase: lowercase the text (uncased models).
    strip_accents: strip accents; None means "when lowercasing" (BERT's default).
    tokenize_chinese_chars: make every CJK ideograph a word.
    max_length: default truncation length, ``[CLS]`` and ``[SEP]`` included.
    unk_token, cls_token, sep_token, pad_token, mask_token: the special tokens;
      each must be in ``vocab``.
    max_input_chars_per_word: longer words become ``unk_token``.

  Example:
    >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", ","]
    >>> tok = WordPieceTokenizer({w: i for i, w in enumerate(words)})
    >>> tok.tokenize("Héllo, WORLDS!")
    ['hello', ',', 'world', '##s', '[UNK]']
    >>> tok(["Hello, worlds!", "world"])["input_ids"]
    array([[2, 5, 8, 6, 7, 1, 3],
           [2, 6, 3, 0, 0, 0, 0]], dtype=int32)
  """

  def __init__(
      self,
      vocab: Mapping[str, int],
      *,
      lowercase: bool = True,
      strip_accents: bool | None = None,
      tokenize_chinese_chars: bool = True,
      max_length: int = 512,
      unk_token: str = "[UNK]",
      cls_token: str = "[CLS]",
      sep_token: str = "[SEP]",
      pad_token: str = "[PAD]",
      mask_token: str = "[MASK]",
      max_input_chars_per_word: int = 100,
  ):
    if not isinstance(vocab, Mapping) or not vocab:
      raise ValueError("`vocab` must be a non-empty mapping of token -> id.")
    self.vocab = dict(vocab)
    self.lowercase = bool(lowercase)
    self.strip_accents = self.lowercase if strip_accents is None else bool(strip_accents)
    self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
    self.max_length = _check_length("max_length", max_length)
    self.max_input_chars_per_word = _check_length("max_input_chars_per_word", max_input_chars_per_word)
    specials = {"unk_token": unk_token, "cls_token": cls_token, "sep_token": sep_token,
                "pad_token": pad_token, "mask_token": mask_token}
    missing = {k: v for k, v in specials.items() if v not in self.vocab}
    if missing:
      raise ValueError(f"The vocabulary has no special token(s) {missing}; each of "
                       f"{sorted(specials)} must be one of its lines.")
    self.unk_token, self.cls_token, self.sep_token = unk_token, cls_token, sep_token
    self.pad_token, self.mask_token = pad_token, mask_token
    self.unk_id, self.cls_id, self.sep_id = (self.vocab[t] for t in (unk_token, cls_token, sep_token))
    self.pad_id, self.mask_id = self.vocab[pad_token], self.vocab[mask_token]
    # Longest first, so that no special token is cut by a shorter one inside it.
    self._specials = sorted(set(specials.values()), key=len, reverse=True)

  @classmethod
  def from_file(cls, vocab_file: str | os.PathLike, **options: Any) -> WordPieceTokenizer:
    """A tokenizer for ``vocab_file`` (``vocab.txt``); ``options`` as for the constructor."""
    return cls(read_vocab(vocab_file), **options)

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, *, max_length: int | None = None) -> WordPieceTokenizer:
    """Reads a Hugging Face / sentence-transformers directory's tokenizer.

    Uses ``vocab.txt``, and when present ``tokenizer_config.json``
    (``do_lower_case``, ``strip_accents``, ``tokenize_chinese_chars``, special
    tokens, ``model_max_length``) and ``sentence_bert_config.json``
    (``max_seq_length``, which wins over ``model_max_length``).

    Args:
      path: the directory.
      max_length: overrides the truncation length read from the files.

    Example:
      >>> import json, pathlib, tempfile
      >>> tmp = tempfile.TemporaryDirectory()   # a tiny model directory (all-MiniLM-L6-v2/ in use)
      >>> d = pathlib.Path(tmp.name)
      >>> _ = (d / "vocab.txt").write_text("\\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat"]))
      >>> _ = (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
      >>> tok = WordPieceTokenizer.from_pretrained(d)
      >>> tok.max_length
      256
      >>> tmp.cleanup()
    """
    path = Path(path)
    cfg = _read_json(path / "tokenizer_config.json")
    st = _read_json(path / "sentence_bert_config.json")
    opts: dict[str, Any] = {}
    for ours, theirs in (("lowercase", "do_lower_case"), ("strip_accents", "strip_accents"),
                         ("tokenize_chinese_chars", "tokenize_chinese_chars")):
      if theirs in cfg:
        opts[ours] = cfg[theirs]
    for name in ("unk_token", "cls_token", "sep_token", "pad_token", "mask_token"):
      token = cfg.get(name)
      if isinstance(token, dict):  # an AddedToken dict in older configs
        token = token.get("content")
      if isinstance(token, str):
        opts[name] = token
    limit = st.get("max_seq_length") or cfg.get("model_max_length")
    # transformers writes a huge sentinel (int(1e30)) when a model has no limit.
    opts["max_length"] = max_length or (limit if isinstance(limit, int) and 0 < limit <= 2**20 else 512)
    return cls.from_file(path / "vocab.txt", **opts)

  # ------------------------------------------------------------------ steps

  def normalize(self, text: str) -> str:
    """Steps 1-3: clean, space out CJK ideographs, strip accents and lowercase."""
    out = []
    for ch in text:
      cp = ord(ch)
      if cp == 0 or cp == 0xFFFD or _is_control(ch):
        continue
      if ch in _WHITESPACE:
        out.append(" ")
      elif self.tokenize_chinese_chars and _is_cjk(cp):
        out.append(f" {ch} ")
      else:
        out.append(ch)
    text = "".join(out)
    if self.strip_accents:
      text = "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")
    if self.lowercase:
      # Per character, like the Rust normalizer (str.lower() would apply the
      # context-dependent final-sigma rule).
      text = "".join(ch.lower() for ch in text)
    return text

  def pre_tokenize(self, text: str) -> list[str]:
    """Step 4: words of normalized ``text``, each punctuation character a word."""
    words: list[str] = []
    cur: list[str] = []
    for ch in text:
      if ch in _WHITESPACE or _is_punctuation(ch):
        if cur:
          words.append("".join(cur))
          cur = []
        if ch not in _WHITESPACE:
          words.append(ch)
      else:
        cur.append(ch)
    if cur:
      words.append("".join(cur))
    return words

  def wordpiece(self, word: str) -> list[str]:
    """Step 5: greedy longest-match-first pieces of one word, or ``[unk_token]``."""
    if len(word) > self.max_input_chars_per_word:
      return [self.unk_token]
    pieces, start = [], 0
    while start < len(word):
      end = len(word)
      while end > start:
        piece = word[start:end] if start == 0 else "##" + word[start:end]
        if piece in self.vocab:
          break
        end -= 1
      if end == start:  # no piece starts here: the whole word is unknown
        return [self.unk_token]
      pieces.append(piece)
      start = end
    return pieces

  def tokenize(self, text: str) -> list[str]:
    """The WordPiece tokens of ``text`` (no ``[CLS]``/``[SEP]``).

    Example:
      >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "sleep", "##y"]
      >>> tok = WordPieceTokenizer({w: i for i, w in enumerate(words)})
      >>> tok.tokenize("A sleepy cat!")
      ['a', 'sleep', '##y', 'cat', '[UNK]']
    """
    if not isinstance(text, str):
      raise ValueError(f"`text` must be a str, got {type(text).__name__}.")
    tokens = []
    for chunk, special in self._split_specials(text):
      if special:
        tokens.append(chunk)
      else:
        for word in self.pre_tokenize(self.normalize(chunk)):
          tokens.extend(self.wordpiece(word))
    return tokens

  def _split_specials(self, text: str) -> list[tuple[str, bool]]:
    """Splits ``text`` around literal special tokens: ``[(chunk, is_special)]``."""
    out, start, i = [], 0, 0
    while i < len(text):
      if text[i] == "[":
        hit = next((s for s in self._specials if text.startswith(s, i)), None)
        if hit is not None:
          if i > start:
            out.append((text[start:i], False))
          out.append((hit, True))
          i = start = i + len(hit)
          continue
      i += 1
    if start < len(text):
      out.append((text[start:], False))
    return out

  # ------------------------------------------------------------------ ids

  def encode(self, text: str, *, max_length: int | None = None) -> list[int]:
    """``[CLS] tokens [SEP]`` ids of ``text``, truncated to ``max_length`` (default: the tokenizer's)."""
    n = self.max_length if max_length is None else _check_length("max_length", max_length)
    if n < 2:
      raise ValueError(f"`max_length` must be >= 2 to hold [CLS] and [SEP], got {n}.")
    ids = [self.vocab[t] for t in self.tokenize(text)][:n - 2]
    return [self.cls_id, *ids, self.sep_id]

  def __call__(
      self,
      texts: str | Sequence[str],
      *,
      max_length: int | None = None,
      padding: str = "longest",
  ) -> dict[str, np.ndarray]:
    """Encodes a batch of single sentences.

    Args:
      texts: a string or a sequence of strings.
      max_length: truncation length, special tokens included (default: the
        tokenizer's ``max_length``).
      padding: ``"longest"`` pads to the longest encoding of the batch,
        ``"max_length"`` to ``max_length``; padding is ``pad_token`` on the right.

    Returns:
      int32 ``input_ids``, ``attention_mask`` (1 for tokens, 0 for padding) and
      ``token_type_ids`` (all 0), each ``[len(texts), length]``.

    Example:
      >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "sleep", "##y"]
      >>> tok = WordPieceTokenizer({w: i for i, w in enumerate(words)})
      >>> batch = tok(["a cat", "a sleepy dog"], max_length=16)
      >>> batch["input_ids"].shape
      (2, 6)
    """
    if isinstance(texts, str):
      texts = [texts]
    if padding not in PADDING:
      raise ValueError(f"`padding` must be one of {PADDING}, got {padding!r}.")
    n = self.max_length if max_length is None else _check_length("max_length", max_length)
    rows = [self.encode(t, max_length=n) for t in texts]
    length = n if padding == "max_length" else max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), length), self.pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
      ids[i, :len(r)] = r
      mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}

  def __len__(self) -> int:
    return len(self.vocab)


def _check_length(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
  return value


def _read_json(path: Path) -> dict[str, Any]:
  if not path.is_file():
    return {}
  d = json.loads(path.read_text())
  if not isinstance(d, dict):
    raise ValueError(f"{path}: must hold a JSON object.")
  return d
