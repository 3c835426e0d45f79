"""The engine client against the real server: embeddings travel as base64 float32 and arrive exactly."""

import httpx
import pytest

from apps.core.inference_client import EMBEDDING_MODEL, inference_embed


@pytest.mark.django_db
def test_embeddings_arrive_exactly_as_the_engine_computed_them(inference_server):
    texts = ["The kettle boils water.", "Une bouilloire fait bouillir l'eau.", "x" * 3000]
    as_numbers = httpx.post(f"{inference_server}/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": texts})
    expected = [item["embedding"] for item in sorted(as_numbers.json()["data"], key=lambda item: item["index"])]
    got = inference_embed(texts=texts)
    assert len(got) == 3 and all(len(vector) == 384 for vector in got)
    assert got == expected  # float32 in both cases: bit-for-bit the same numbers
