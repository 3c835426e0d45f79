"""The model's own tokenizer and chat template, and incremental detokenization for streaming."""

from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer


class ChatTokenizer:
    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer  # for the chat template (Jinja, as the model was trained)
        from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

        self.hf = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.fast = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        eos = {self.hf.eos_token_id} if self.hf.eos_token_id is not None else set()
        self.eos_token_ids = frozenset(eos)
        # Byte-level BPE spells each byte as one printable character; this undoes that spelling.
        self._byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        # Logprobs ask for the same few thousand tokens' text and bytes over and over.
        self.token_text = lru_cache(maxsize=65536)(self.token_text)
        self.token_bytes = lru_cache(maxsize=65536)(self.token_bytes)

    def encode(self, text: str) -> list[int]:
        return self.fast.encode(text, add_special_tokens=False).ids

    def chat_prompt(self, messages: list[dict], *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the conversation, ending with the assistant turn's header unless told not to."""
        text = self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return self.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.fast.decode(ids, skip_special_tokens=True)

    def token_text(self, token: int) -> str:
        """One token on its own, for logprobs (may be part of a multi-byte character)."""
        return self.fast.decode([token], skip_special_tokens=False)

    def token_bytes(self, token: int) -> list[int]:
        """The token's own bytes: a piece of a multi-byte character stays that piece, not U+FFFD."""
        piece = self.fast.id_to_token(token) or ""
        if piece and all(char in self._byte_of for char in piece):  # byte-level BPE (SmolLM2, GPT-2, Llama 3)
            return [self._byte_of[char] for char in piece]
        return list(self.token_text(token).encode("utf-8"))


class Detokenizer:
    """Turns a growing token list into text deltas that never split a multi-byte character.

    Decoding token by token would break characters spread over several byte-level tokens, and some
    tokenizers change a token's text depending on its left neighbours, so each step decodes a short
    window (from `prefix`) and emits only what lies beyond the text already emitted.
    """

    def __init__(self, tokenizer: ChatTokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0  # tokens whose text has been emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        decode = self.tokenizer.decode
        emitted = decode(self.ids[self.prefix : self.read])
        text = decode(self.ids[self.prefix :])
        if len(text) > len(emitted) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(emitted) :]
        return ""  # an incomplete character: wait for the bytes that finish it

    def flush(self) -> str:
        """Whatever is left when generation ends (even an incomplete character, as U+FFFD)."""
        decode = self.tokenizer.decode
        rest = decode(self.ids[self.prefix :])[len(decode(self.ids[self.prefix : self.read])) :]
        self.prefix = self.read = len(self.ids)
        return rest
