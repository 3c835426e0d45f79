"""Sentence embeddings on ONNX Runtime: all-MiniLM-L6-v2, batched, mean-pooled and L2-normalized.

Texts are tokenized once, unpadded, sorted by length, and cut into batches that waste at most PAD_WASTE of
their tokens on padding (and hold at most MAX_BATCH texts). A knowledge chunk is up to 256 tokens, so one text
is already a [256, 384] matrix product: batching buys the CPU little there, while padding costs in full. Short
texts of equal length (queries, sentences) still batch up to MAX_BATCH.

Measured on the 971 chunks ingestion makes of the Python reference pages (bench/knowledge.py's corpus), 2
cores, chunks/s, in process: fixed batches of 32 → 35 (the earlier code), 4 → 57, 2 → 59, 1 → 65, these
length batches → 66. Through the server (bench/results_knowledge.md): 70, against sentence-transformers'
`encode` 51 at its default batch of 32 and 65 at its fastest, 4.
"""

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from inference.session import session_options

MAX_TOKENS = 256  # where all-MiniLM-L6-v2 was trained to stop (sentence-transformers truncates here too)
MAX_BATCH = 32
PAD_WASTE = 0.05  # the share of a batch's tokens that may be padding (the module docstring)


def mean_pool_normalize(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = mask[..., None].astype(hidden.dtype)
    pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


class Embedder:
    def __init__(self, model_dir: Path, *, threads: int | None = None) -> None:
        self.session = ort.InferenceSession(
            str(model_dir / "model.onnx"), session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()  # embed() pads each batch itself, to that batch's longest text
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.dimensions = self.session.get_outputs()[0].shape[-1]
        self._lock = threading.Lock()  # one batch at a time: ORT already uses every core

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """[len(texts), dimensions] unit vectors, in the order given, and the tokens read (the usage)."""
        encodings = self.tokenizer.encode_batch(texts)
        result = np.zeros((len(texts), self.dimensions), np.float32)
        for batch in length_batches([len(e.ids) for e in encodings]):
            width = len(encodings[batch[-1]].ids)  # the longest: batches ascend in length
            feeds = {
                "input_ids": np.full((len(batch), width), self.pad_id, np.int64),
                "attention_mask": np.zeros((len(batch), width), np.int64),
                "token_type_ids": np.zeros((len(batch), width), np.int64),
            }
            for row, i in enumerate(batch):
                ids = encodings[i].ids
                feeds["input_ids"][row, : len(ids)] = ids
                feeds["attention_mask"][row, : len(ids)] = 1
                feeds["token_type_ids"][row, : len(ids)] = encodings[i].type_ids
            with self._lock:
                hidden = self.session.run(["last_hidden_state"], {k: v for k, v in feeds.items() if k in self.inputs})
            result[batch] = mean_pool_normalize(hidden[0], feeds["attention_mask"])
        return result, sum(len(e.ids) for e in encodings)


def length_batches(lengths: list[int]) -> list[list[int]]:
    """Indexes of `lengths` in batches of ascending length, each wasting at most PAD_WASTE of its tokens on
    padding and holding at most MAX_BATCH (the module docstring)."""
    batches: list[list[int]] = []
    batch: list[int] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        padded = lengths[i] * (len(batch) + 1)  # ascending: the newcomer is the longest
        if batch and (len(batch) == MAX_BATCH or padded - (tokens + lengths[i]) > PAD_WASTE * padded):
            batches.append(batch)
            batch, tokens = [], 0
        batch.append(i)
        tokens += lengths[i]
    return [*batches, batch] if batch else batches
