"""WordPiece tokenization from a checkpoint's vocab.txt, and token-id batches."""
import os

import numpy as np

from tfdeploy import files
from tfdeploy.errors import CheckpointError


VOCAB_LIMIT = 64 << 20  # a WordPiece vocabulary is a few hundred KiB


class BertTokenizer:
    """WordPiece from vocab.txt via the ``tokenizers`` package: [CLS] text [SEP]."""

    def __init__(self, vocab_path, lowercase=True, max_length=128):
        from tokenizers import BertWordPieceTokenizer

        text = files.read_text(vocab_path, "vocabulary file", CheckpointError, VOCAB_LIMIT)
        self.vocab_size = text.count("\n") + (not text.endswith("\n"))
        self.vocab_path, self.lowercase, self.max_length = vocab_path, lowercase, max_length
        self._tok = BertWordPieceTokenizer(vocab_path, lowercase=lowercase,
                                           strip_accents=lowercase)
        for token in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"):
            if self._tok.token_to_id(token) is None:
                raise CheckpointError(f"{vocab_path}: special token {token} not in vocabulary")
        self.pad_id = self._tok.token_to_id("[PAD]")
        self.cls_id, self.sep_id = (self._tok.token_to_id(t) for t in ("[CLS]", "[SEP]"))
        mask_id = self._tok.token_to_id("[MASK]")  # vocabularies without it: [UNK]
        self.mask_id = self._tok.token_to_id("[UNK]") if mask_id is None else mask_id

    def encode_ragged(self, texts, max_length=None):
        """Token ids per text, truncated to max_length (with [CLS]/[SEP]); no padding."""
        max_length = max_length or self.max_length
        self._tok.enable_truncation(max_length)
        self._tok.no_padding()
        return [np.asarray(e.ids, np.int32) for e in self._tok.encode_batch(list(texts))]

    def __call__(self, texts, max_length=None, pad_to=None):
        """Dict of int32 [batch, seq] arrays padded to the longest text (or ``pad_to``)."""
        ids = self.encode_ragged(texts, max_length)
        return pad_batch(ids, pad_to or max(len(i) for i in ids), self.pad_id)

    def decode(self, ids):
        return self._tok.decode([int(i) for i in ids])


def token_inputs(batch, seq, vocab=30522, seed=0):
    """Token ids shaped like real input, for benchmarks: [CLS] ... [SEP] (BERT's ids 101
    and 102), full attention mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, min(vocab, 30000), size=(batch, seq), dtype=np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids)}


def pad_batch(ids, length, pad_id=0):
    batch = np.full((len(ids), length), pad_id, np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for row, seq in enumerate(ids):
        batch[row, :len(seq)] = seq[:length]
        mask[row, :len(seq)] = 1
    return {"input_ids": batch, "attention_mask": mask,
            "token_type_ids": np.zeros_like(batch)}


def lowercases(directory):
    """Whether the checkpoint's tokenizer lowercases text (``do_lower_case``; default yes)."""
    path = os.path.join(directory, "tokenizer_config.json")
    if os.path.exists(path):
        config = files.read_json_object(path, "checkpoint file", CheckpointError)
        return bool(config.get("do_lower_case", True))
    return True
