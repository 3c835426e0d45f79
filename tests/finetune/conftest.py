"""A tiny Llama with a ChatML tokenizer (<|im_start|> and <|im_end|> as special tokens, SmolLM2's template):
trained in seconds, so the trainer's tests never need the real model."""

import pytest

from tests.tiny_models import tiny_checkpoint, tiny_tokenizer

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory):
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny_chat"), tokenizer=tokenizer)


def conversation(i: int) -> dict:
    """A small two-turn conversation whose length varies with i (so packing has something to do)."""
    words = " ".join(["the river runs past the old mill"] * (1, 8, 2, 5)[i % 4])
    return {
        "messages": [
            {"role": "user", "content": f"Tell me about place {i}."},
            {"role": "assistant", "content": f"Place {i}: {words}."},
            {"role": "user", "content": "And then?"},
            {"role": "assistant", "content": f"Then {words[: 10 + 3 * i]} again."},
        ]
    }


def preference_pair(i: int) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"Describe place {i}."}],
        "chosen": [{"role": "assistant", "content": f"Place {i} has a river and an old mill."}],
        "rejected": [{"role": "assistant", "content": "No." if i % 2 else "I do not know anything about it at all."}],
    }
