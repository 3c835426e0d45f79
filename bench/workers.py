"""In-process measurements of Atelier's decoder and of transformers, each in its own process.

    python -m bench.workers atelier|transformers

Same protocol as bench/llama_worker.py: one JSON job per line on stdin, one JSON answer per line on
stdout. A process per competitor keeps their thread pools and memory apart, and lets bench.run
interleave the competitors' repetitions without loading a model twice.
"""

import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.protocol import serve


class AtelierWorker:
    """The engine's DecoderSession, exactly as the server builds it, minus the scheduler and HTTP."""

    def load(self, job: dict) -> dict:
        import onnxruntime

        from inference.session import DecoderSession

        self.session = DecoderSession(
            Path(job["onnx_dir"]), max_rows=1, capacity=job["capacity"], device="cpu", threads=job["threads"]
        )
        self._prefill([1, 2, 3, 4], None)  # warm-up
        return {"version": onnxruntime.__version__}

    def _prefill(self, ids: list[int], chunk: int | None) -> np.ndarray:
        step = chunk or len(ids)
        logits = None
        for begin in range(0, len(ids), step):
            part = ids[begin : begin + step]
            logits = self.session.forward(
                np.array([part], dtype=np.int64),
                start=0,
                lengths=np.array([begin + len(part)]),
                logits_index=np.array([len(part) - 1]),
            )
        return logits

    def prefill(self, job: dict) -> dict:
        seconds = []
        for _ in range(job.get("repeat", 1)):
            started = time.perf_counter()
            self._prefill(job["ids"], job.get("chunk"))
            seconds.append(time.perf_counter() - started)
        return {"seconds": seconds}

    def decode(self, job: dict) -> dict:
        """Greedy, one token per forward, no scheduler: the engine's floor for one stream."""
        ids = job["ids"]
        logits = self._prefill(ids, 256)
        tokens, stamps, length = [], [], len(ids)
        while True:
            token = int(np.argmax(logits[0, -1]))
            stamps.append(time.perf_counter())
            tokens.append(token)
            if len(tokens) == job["n"]:
                break
            length += 1
            logits = self.session.forward(
                np.array([[token]], dtype=np.int64), start=0, lengths=np.array([length]), logits_index=np.array([0])
            )
        return {"seconds_after_first": stamps[-1] - stamps[0], "tokens": tokens}

    def perplexity(self, job: dict) -> dict:
        from inference.export import perplexity

        return {"perplexity": perplexity(onnx_dir=Path(job["onnx_dir"]))}


class TransformersWorker:
    """transformers' eager PyTorch implementation of the same fp32 checkpoint, on CPU."""

    def load(self, job: dict) -> dict:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        self.torch = torch
        torch.set_num_threads(job["threads"])
        self.model = AutoModelForCausalLM.from_pretrained(
            job["hf_dir"], attn_implementation="eager", dtype=torch.float32, local_files_only=True
        ).eval()
        self._forward([1, 2, 3, 4])  # warm-up
        return {"version": transformers.__version__, "torch": torch.__version__}

    def _forward(self, ids: list[int], past=None, keep: int = 1):
        with self.torch.inference_mode():
            return self.model(
                self.torch.tensor([ids], dtype=self.torch.long),
                past_key_values=past,
                use_cache=True,
                logits_to_keep=keep,
            )

    def prefill(self, job: dict) -> dict:
        seconds = []
        for _ in range(job.get("repeat", 1)):
            started = time.perf_counter()
            self._forward(job["ids"])  # one forward over the whole prompt, last position's logits only
            seconds.append(time.perf_counter() - started)
        return {"seconds": seconds}

    def decode(self, job: dict) -> dict:
        out = self._forward(job["ids"])
        tokens, stamps = [], []
        while True:
            token = int(out.logits[0, -1].argmax())
            stamps.append(time.perf_counter())
            tokens.append(token)
            if len(tokens) == job["n"]:
                break
            out = self._forward([token], past=out.past_key_values)
        return {"seconds_after_first": stamps[-1] - stamps[0], "tokens": tokens}

    def perplexity(self, job: dict) -> dict:
        ids = job["ids"]
        logits = self._forward(ids, keep=0).logits[0, :-1].double()
        nll = -logits.log_softmax(-1)[self.torch.arange(len(ids) - 1), self.torch.tensor(ids[1:])].mean()
        return {"perplexity": float(nll.exp())}


WORKERS = {"atelier": AtelierWorker, "transformers": TransformersWorker}


def main() -> None:
    worker = WORKERS[sys.argv[1]]()
    serve(lambda job: getattr(worker, job["op"])(job))


if __name__ == "__main__":
    main()
