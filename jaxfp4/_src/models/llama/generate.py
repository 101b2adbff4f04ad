"""Generation for Llama: the decoder's (``jaxfp4._src.models.decoder.generate``)."""

from jaxfp4._src.models.decoder.generate import GenerateFns as GenerateFns
from jaxfp4._src.models.decoder.generate import _decode as _decode
from jaxfp4._src.models.decoder.generate import _prefill as _prefill
from jaxfp4._src.models.decoder.generate import generate as generate
from jaxfp4._src.models.decoder.generate import make_generate_fns as make_generate_fns
from jaxfp4._src.models.decoder.generate import sample_logits as sample_logits
