"""BERT encoders in tf_keras, loadable from Hugging Face checkpoints without torch.

Public API::

    encoder, tokenizer = tfdeploy.models.bert.from_pretrained("minilm-l6")
    hidden = encoder(tokenizer(["a sentence", "another"]))   # [batch, seq, hidden]

The graph uses only real Keras layers for weights (``Embedding``, ``Dense``,
``LayerNormalization``) and ``keras.layers.Add`` for residuals, so TFMOT can wrap every
weight matrix; the small weightless pieces live in :mod:`tfdeploy.models.bert.layers`.
"""
from tfdeploy.models.bert.checkpoint import from_pretrained, load_checkpoint  # noqa: F401
from tfdeploy.models.bert.config import BertConfig  # noqa: F401
from tfdeploy.models.bert.plugin import Bert  # noqa: F401  (registers type: bert)
from tfdeploy.models.bert.tokenizer import BertTokenizer, token_inputs  # noqa: F401
