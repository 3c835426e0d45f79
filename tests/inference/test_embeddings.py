"""The embedder's batching: texts of similar length share a Run, padding stays under PAD_WASTE, and a text's
vector does not depend on the batch it landed in (the real all-MiniLM-L6-v2)."""

import random

import numpy as np

from inference import embeddings
from inference.embeddings import MAX_BATCH, PAD_WASTE, Embedder, length_batches


def test_batches_cover_every_text_once_in_ascending_length_within_the_padding_budget():
    lengths = [random.Random(seed).randint(3, 256) for seed in range(500)]
    batches = length_batches(lengths)
    assert sorted(i for batch in batches for i in batch) == list(range(500))
    order = [lengths[i] for batch in batches for i in batch]
    assert order == sorted(order)
    for batch in batches:
        padded = max(lengths[i] for i in batch) * len(batch)
        assert len(batch) <= MAX_BATCH and padded - sum(lengths[i] for i in batch) <= PAD_WASTE * padded
    assert length_batches([12] * 70) == [list(range(32)), list(range(32, 64)), list(range(64, 70))]
    assert length_batches([]) == []


def test_a_texts_vector_is_the_same_alone_or_batched(real_models, monkeypatch):
    embedder = Embedder(real_models["all-minilm-l6-v2", "fp32"] / "onnx")
    texts = ["The kettle boils water.", "A kettle boils the water.", "Tea.", "word " * 400, "x", "The cat sat."]
    together, tokens = embedder.embed(texts)
    alone = np.stack([embedder.embed([text])[0][0] for text in texts])
    assert tokens == sum(embedder.embed([text])[1] for text in texts)
    assert together.shape == (6, 384) and np.allclose(np.linalg.norm(together, axis=1), 1, atol=1e-5)
    assert np.abs(together - alone).max() < 1e-5
    monkeypatch.setattr(embeddings, "PAD_WASTE", 10.0)  # everything in one padded batch: the mask must hold
    assert np.abs(embedder.embed(texts)[0] - alone).max() < 1e-5
    assert embedder.embed([])[0].shape == (0, 384)
    assert embedder.embed(["Tea."])[1] == 4  # [CLS] tea . [SEP], no padding
