"""llama.cpp side of the benchmark, run by the llama-cpp-python venv's own interpreter (not Atelier's).

It imports nothing from this repository but bench/protocol.py (standard library only; the jobs' line
protocol, shared with bench/workers.py). The first job is "load".

    {"op": "load", "gguf": PATH, "threads": 2, "n_ctx": 4096, "n_batch": 512}
    {"op": "prefill", "ids": [...], "repeat": 3}      -> {"seconds": [...]}   llm.eval() of the prompt
    {"op": "decode", "ids": [...], "n": 128}          -> {"seconds_after_first": s, "tokens": [...]}
    {"op": "perplexity", "ids": [...]}                 -> {"perplexity": p}
    {"op": "quit"}
"""

import time

import numpy as np
from llama_cpp import Llama, __version__
from protocol import serve  # this script's own folder is first on sys.path

llm = None
settings: dict = {}


def load(job: dict) -> dict:
    global llm
    settings.update(job)
    llm = Llama(
        model_path=job["gguf"],
        n_threads=job["threads"],
        n_threads_batch=job["threads"],
        n_ctx=job["n_ctx"],
        n_batch=job["n_batch"],
        verbose=False,
    )
    llm.reset()
    llm.eval([1, 2, 3, 4])  # warm-up: first-call allocations
    return {"version": __version__}


def prefill(job: dict) -> dict:
    ids, seconds = job["ids"], []
    for _ in range(job.get("repeat", 1)):
        llm.reset()  # n_tokens = 0: eval() drops the old cache entries and computes every token again
        started = time.perf_counter()
        llm.eval(ids)
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds}


def decode(job: dict) -> dict:
    """Greedy generation of exactly n tokens (end-of-text is not a stop here, as in the other engines)."""
    tokens, stamps = [], []
    for token in llm.generate(job["ids"], temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        stamps.append(time.perf_counter())
        tokens.append(int(token))
        if len(tokens) == job["n"]:
            break
    return {"seconds_after_first": stamps[-1] - stamps[0], "tokens": tokens}


def perplexity(job: dict) -> dict:
    ids = job["ids"]
    scorer = Llama(
        model_path=settings["gguf"],
        n_threads=settings["threads"],
        n_threads_batch=settings["threads"],
        n_ctx=max(1024, len(ids) + 8),
        n_batch=max(512, len(ids)),
        logits_all=True,
        verbose=False,
    )
    scorer.reset()
    scorer.eval(ids)
    logits = np.array(scorer.scores[: len(ids) - 1], dtype=np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    nll = -log_probs[np.arange(len(ids) - 1), ids[1:]].mean()
    del scorer
    return {"perplexity": float(np.exp(nll))}


OPS = {"load": load, "prefill": prefill, "decode": decode, "perplexity": perplexity}


def main() -> None:
    serve(lambda job: OPS[job["op"]](job))


if __name__ == "__main__":
    main()
