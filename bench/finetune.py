"""Atelier's LoRA trainer against TRL on the real SmolLM2-135M-Instruct: python -m bench.finetune.

Same model (the fp32 artifact's hf/ checkpoint), same synthetic conversations and preference pairs, same
LoRA (r 16, alpha 32, no dropout, all seven linear layers), sequence length 256, 4 examples per step,
2 threads. Writes bench/results_finetune.md and prints it.

- SFT: training tokens/s of `train_sft` against TRL's SFTTrainer + PEFT (its defaults: bf16 autocast,
  gradient checkpointing, padding, the loss on assistant tokens through its fused head), and against
  SFTTrainer without gradient checkpointing (its fastest setting on a CPU).
- DPO: preference pairs/s of `train_dpo` against TRL's DPOTrainer (defaults: live reference through the
  disabled adapter, gradient checkpointing, bf16 autocast).
- Per-change ablation of Atelier's trainer, step by step on the same batches: packing, the projection on
  assistant positions only, bf16, LoRA dropout; for DPO the shared prompt and the precomputed reference;
  and plain transformers + PEFT (fp32, padded, full vocabulary), the starting point.
- Where a step's time goes (data, forward, backward, optimizer), and the wall time of 200 conversations
  of ~250 tokens for one epoch.

Tokens are real tokens (padding excluded) on both sides; the first step of every run is a warm-up and
is not counted. Competitors alternate run by run (BENCH_FT_ROUNDS rounds, default 2), so a noisy minute
on this shared machine hurts all of them alike; rates pool every measured step, and the fastest single step is
shown beside them. BENCH_FT_FULL=1 also
trains the 200 conversations for real.
"""

import gc
import itertools
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("ATELIER_MODELS_DIR", ROOT / "var" / "models"))
RESULTS = ROOT / "bench" / "results_finetune.md"
CHAT_MODEL = "smollm2-135m-instruct"
THREADS = 2
SEQ_LEN, BATCH, RANK, ALPHA = 256, 4, 16, 32
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ROUNDS = int(os.environ.get("BENCH_FT_ROUNDS", 2))
SFT_STEPS = int(os.environ.get("BENCH_FT_SFT_STEPS", 6))  # per run, the first one a warm-up
DPO_STEPS = int(os.environ.get("BENCH_FT_DPO_STEPS", 4))
ABLATION_ROUNDS = int(os.environ.get("BENCH_FT_ABLATION_ROUNDS", 4))
FULL = os.environ.get("BENCH_FT_FULL") == "1"
MIXED = (60, 256)  # the lengths of the chats that show what packing is for
TARGET_SPEEDUP = 1.5
TARGET_WALL_S = 600

# SmolLM2's own template with TRL's generation markers around each assistant turn (its content and
# <|im_end|>), which SFTTrainer's assistant_only_loss needs; it renders exactly the same text.
GENERATION_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def find_checkpoint() -> Path:
    found = []
    for manifest_path in (MODELS / CHAT_MODEL).glob("*/manifest.json"):
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("variant") == "fp32" and (manifest_path.parent / "hf" / "config.json").is_file():
            found.append((manifest.get("created_at", ""), manifest_path.parent / "hf"))
    if not found:
        sys.exit(f"no fp32 {CHAT_MODEL} checkpoint under {MODELS}: run python manage.py bootstrap_models first")
    return max(found)[1]


# --- data ---------------------------------------------------------------------------------------------

TOPICS = {
    "gardening": (
        "How do I keep my tomato plants healthy through a hot summer?",
        [
            "Water deeply in the early morning so the roots get moisture before the heat of the day.",
            "A layer of straw mulch keeps the soil cool and slows evaporation between waterings.",
            "Pinch off the suckers that grow between the main stem and the branches to focus the plant's energy.",
            "Yellow lower leaves often mean the plant needs more nitrogen, so add a balanced fertiliser.",
            "Shade cloth over the hottest hours can stop the flowers from dropping before they set fruit.",
            "Check the undersides of the leaves for aphids and whiteflies at least twice a week.",
            "Stake or cage the plants early, because moving them later damages the roots.",
        ],
    ),
    "cooking": (
        "What is the best way to make a simple weeknight curry?",
        [
            "Start by frying onions slowly in oil until they are soft and golden, which builds the base flavour.",
            "Add garlic, ginger and your spices and cook them for a minute so they release their aroma.",
            "Tinned tomatoes and a splash of coconut milk make a sauce that comes together in twenty minutes.",
            "Chickpeas or chicken thighs both work well and stay tender while the sauce reduces.",
            "Taste at the end and balance it with salt, a squeeze of lime and a little sugar if it is too sharp.",
            "Serve it with rice or flatbread, and scatter fresh coriander on top just before eating.",
            "Leftovers often taste better the next day once the spices have had time to settle.",
        ],
    ),
    "programming": (
        "How should I structure error handling in a small Python web service?",
        [
            "Define a few domain exceptions that describe what went wrong in terms of your business rules.",
            "Raise them from the service layer and translate them into HTTP responses in one place.",
            "Never swallow an exception silently; log it with enough context to reproduce the problem.",
            "Validate input at the boundary so that the rest of the code can trust the data it receives.",
            "Use timeouts on every network call, because a hung dependency will eventually exhaust your workers.",
            "Write tests for the failure paths as well as the happy path, since that is where bugs hide.",
            "Return error messages that help the user fix the request without leaking internal details.",
        ],
    ),
    "travel": (
        "I have three days in Lisbon. What should I plan?",
        [
            "Spend the first morning in Alfama, walking the narrow streets up to the castle for the view.",
            "Take the historic tram 28 early in the day, before it fills with visitors.",
            "Belém deserves half a day for the monastery, the tower and the famous custard tarts.",
            "In the evening, the Bairro Alto comes alive with small bars and music spilling into the street.",
            "A day trip to Sintra by train shows you palaces and gardens in the hills above the coast.",
            "Comfortable shoes matter, because the city is built on steep hills paved with slippery stone.",
            "Book popular restaurants a day ahead, especially on Friday and Saturday nights.",
        ],
    ),
    "finance": (
        "How can I start building an emergency fund on a tight budget?",
        [
            "Begin with a small goal, such as one month of essential expenses, so the target feels reachable.",
            "Set up an automatic transfer on payday, even if it is only a small amount each time.",
            "Keep the money in a separate savings account so that it is not mixed with everyday spending.",
            "Look through your subscriptions and cancel the ones you have not used in the last month.",
            "Windfalls like tax refunds or gifts can go straight into the fund to speed things up.",
            "Track your spending for a few weeks to find the leaks that are easy to fix.",
            "Once the first goal is met, aim for three to six months of expenses over time.",
        ],
    ),
    "fitness": (
        "What is a sensible way to start running again after a long break?",
        [
            "Alternate short running intervals with walking, for example one minute of each, for twenty minutes.",
            "Run three times a week with a rest day in between so your joints and tendons can adapt.",
            "Keep the pace easy enough that you could hold a conversation while running.",
            "Increase your total time by no more than about ten percent from one week to the next.",
            "Good shoes that suit your stride make a bigger difference than any other piece of kit.",
            "Stretch gently after each run and pay attention to any pain that lasts into the next day.",
            "After six to eight weeks most people can run for thirty minutes without stopping.",
        ],
    ),
}
FOLLOW_UPS = ("Can you give me one more tip?", "What is the most common mistake?", "How long does it take?")
CLOSINGS = (
    "If any of these steps is unclear, tell me what you have tried so far and I can be more specific.",
    "Start with the first two suggestions; they make the biggest difference for the least effort.",
    "It is worth writing down what you change, so you can see later which of these actually helped.",
    "Most people notice a real improvement within a couple of weeks if they stay consistent.",
)


def synthetic_conversations(count: int, *, seed: int, tokenizer, lengths: tuple[int, int] = (200, 300)) -> list[dict]:
    """Realistic chats of about `lengths` tokens (SmolLM2's tokenizer, template included): a question, an
    answer of several sentences, and often a follow-up question with a shorter answer."""
    rng = random.Random(seed)  # noqa: S311 (synthetic data, not secrets)
    conversations = []
    names = list(TOPICS)
    while len(conversations) < count:
        question, sentences = TOPICS[rng.choice(names)]
        pool = [*rng.sample(sentences, len(sentences)), *rng.sample(CLOSINGS, len(CLOSINGS))]
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": pool.pop(0)}]
        if rng.random() < 0.5:
            messages += [{"role": "user", "content": rng.choice(FOLLOW_UPS)}, {"role": "assistant", "content": ""}]
        target = rng.randint(*lengths)
        turn = 1
        while len(tokenizer.apply_chat_template(messages)) < target and pool:
            messages[turn]["content"] = f"{messages[turn]['content']} {pool.pop(0)}".strip()
            turn = 3 if len(messages) == 4 and turn == 1 and rng.random() < 0.3 else turn
        if messages[-1]["content"]:
            conversations.append({"messages": messages})
    return conversations


def synthetic_pairs(count: int, *, seed: int) -> list[dict]:
    """Preference pairs of about 250 tokens per side: a question with some background, a helpful answer
    (chosen) and a curt or off-topic one (rejected)."""
    rng = random.Random(seed)  # noqa: S311 (synthetic data, not secrets)
    names = list(TOPICS)
    pairs = []
    for _ in range(count):
        name = rng.choice(names)
        question, sentences = TOPICS[name]
        context = " ".join(rng.sample(TOPICS[rng.choice(names)][1], 3))
        chosen = " ".join([*rng.sample(sentences, 4), rng.choice(CLOSINGS)])
        other = TOPICS[rng.choice([n for n in names if n != name])][1]
        rejected = (
            "I am not sure, you could search for it online."
            if rng.random() < 0.3
            else " ".join(rng.sample(other, 4 + rng.randint(0, 1)))
        )
        pairs.append(
            {
                "prompt": [{"role": "user", "content": f"Some background: {context} Now, my question. {question}"}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return pairs


# --- measuring -------------------------------------------------------------------------------------------


class Machine:
    """Busy CPU-seconds of other processes while measuring (/proc/stat minus this process)."""

    def __init__(self) -> None:
        self.start_busy, self.start_own, self.start = self._busy(), time.process_time(), time.perf_counter()
        self.load = os.getloadavg()[0]

    @staticmethod
    def _busy() -> float:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def foreign(self) -> tuple[float, float]:
        wall = time.perf_counter() - self.start
        return wall, (self._busy() - self.start_busy) - (time.process_time() - self.start_own)


class Rate:
    """Measured steps of one competitor: (real tokens, examples, seconds) each, over every round."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, float]] = []
        self.meta: dict = {}

    def add(self, steps: list[tuple[int, int, float]], **meta) -> "Rate":
        self.steps += steps
        self.meta |= meta
        return self

    def pooled(self, unit: str) -> float:
        """All measured tokens (or examples) over all measured seconds."""
        return sum(s[0 if unit == "tokens" else 1] for s in self.steps) / sum(s[2] for s in self.steps)

    def best(self, unit: str) -> float:
        """The fastest step: the one least disturbed by the rest of the machine."""
        return max(s[0 if unit == "tokens" else 1] / s[2] for s in self.steps)

    def per_step(self, unit: str) -> str:
        return ", ".join(f"{s[0 if unit == 'tokens' else 1] / s[2]:.1f}" for s in self.steps)


def ours_steps(history: list[dict]) -> list[tuple[int, int, float]]:
    """(tokens, examples, seconds) of the run's steps after the first (a warm-up)."""
    train = [p for p in history if p["kind"] == "train"]
    return [
        (point["tokens"], BATCH, point["elapsed_s"] - before["elapsed_s"])
        for before, point in itertools.pairwise(train)
    ]


def lora_settings(dropout: float = 0.0):
    from apps.finetune.decoder import LoraSettings

    return LoraSettings(rank=RANK, alpha=ALPHA, dropout=dropout, target_modules=TARGETS)


def run_ours(method: str, hf_dir: Path, examples: list[dict], steps: int, rate: Rate) -> None:
    from apps.finetune.training import TrainingSettings, train_dpo, train_sft

    settings = TrainingSettings(
        lora=lora_settings(),
        epochs=1,
        batch_size=BATCH,
        max_length=SEQ_LEN,
        validation_fraction=0.0,
        max_steps=steps,
    )
    train = train_sft if method == "sft" else train_dpo
    with tempfile.TemporaryDirectory() as out:
        result = train(base_model_dir=hf_dir, examples=examples, out_dir=Path(out) / "adapter", settings=settings)
    references = [*rate.meta.get("reference_s", []), result.timings.get("reference", 0.0)]
    rate.add(ours_steps(result.history), precision=result.precision, reference_s=references)


def trl_tokenizer(hf_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    tokenizer.chat_template = GENERATION_TEMPLATE
    return tokenizer


def run_trl(method: str, hf_dir: Path, examples: list[dict], steps: int, rate: Rate, **config) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    ends: list[float] = []
    tokens: list[int] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    def counting(collate):
        def wrapped(features):
            batch = collate(features)
            mask = batch.get("attention_mask")
            tokens.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
            return batch

        return wrapped

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    peft_config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS))
    with tempfile.TemporaryDirectory() as out:
        common = {
            "output_dir": out,
            "per_device_train_batch_size": BATCH,
            "max_length": SEQ_LEN,
            "max_steps": steps,
            "learning_rate": 2e-4,
            "save_strategy": "no",
            "report_to": [],
            "disable_tqdm": True,
            "use_cpu": True,
            "dataloader_num_workers": 0,
            **config,
        }
        if method == "sft":
            args = SFTConfig(assistant_only_loss=True, **common)
            trainer_class = SFTTrainer
        else:
            args = DPOConfig(**common)
            trainer_class = DPOTrainer
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(examples),
            processing_class=trl_tokenizer(hf_dir),
            peft_config=peft_config,
            callbacks=[StepEnds()],
        )
        trainer.data_collator = counting(trainer.data_collator)
        trainer.train()
        settings = {"bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing}
    del trainer, model
    gc.collect()
    # the first step is a warm-up; DPO rows hold each pair twice (chosen, rejected): real tokens as they come
    measured = [(tokens[i], BATCH, ends[i] - ends[i - 1]) for i in range(1, len(ends))]
    rate.add(measured, **settings)


def compare(name: str, runs: dict, rounds: int, unit: str) -> dict[str, Rate]:
    """Each competitor once per round, in turn, each run a fresh trainer; their measured steps by competitor."""
    rates = {key: Rate() for key in runs}
    for round_ in range(rounds):
        for key, run in runs.items():
            say(f"{name} round {round_ + 1}/{rounds}: {key}")
            done = len(rates[key].steps)
            run(rates[key])
            new = rates[key].steps[done:]
            value = sum(s[0 if unit == "tokens" else 1] for s in new) / sum(s[2] for s in new)
            say(f"    {value:.2f} {unit}/s")
    return rates


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- the per-change ablation (Atelier's trainer, step by step) ----------------------------------------------


def ablation(
    hf_dir: Path, conversations: list[dict], mixed: list[dict], pairs: list[dict], *, dtype: torch.dtype
) -> tuple[list[tuple], dict]:
    """Tokens/s of one training step per variant, on the same batches, variants interleaved; and the
    phase times of the full configuration."""
    from apps.finetune.decoder import LoraDecoder
    from apps.finetune.packing import ChatEncoder, collate
    from apps.finetune.training import dpo_loss, sequence_logprobs, token_logprobs
    from inference.tokenizer import ChatTokenizer

    encoder = ChatEncoder(ChatTokenizer(hf_dir))
    pad = encoder.tokenizer.hf.pad_token_id
    sft = [(encoder.sft_segment(c, max_length=SEQ_LEN, where=""),) for c in conversations[: 3 * BATCH]]
    short = [(encoder.sft_segment(c, max_length=SEQ_LEN, where=""),) for c in mixed[: 3 * BATCH]]
    tree = [encoder.dpo_segments(p, max_length=SEQ_LEN, where="") for p in pairs[: 3 * BATCH]]
    plain = [encoder.dpo_segments(p, max_length=SEQ_LEN, where="", share_prompt=False) for p in pairs[: 3 * BATCH]]
    models: dict[tuple, tuple[LoraDecoder, torch.optim.Optimizer]] = {}

    def model(dtype: torch.dtype, dropout: float = 0.0) -> tuple[LoraDecoder, torch.optim.Optimizer]:
        if (dtype, dropout) not in models:
            decoder = LoraDecoder(hf_dir=hf_dir, lora=lora_settings(dropout), dtype=dtype).train()
            models[(dtype, dropout)] = decoder, torch.optim.AdamW(decoder.parameters(), lr=1e-5, fused=True)
        return models[(dtype, dropout)]

    def step(trained, encoded, *, pack=True, full_vocab=False, dpo=False, live_reference=False):
        """Seconds per phase of one training step on `encoded` (a batch's examples)."""
        m, optimizer = trained
        times, start = {}, time.perf_counter()
        batch = collate(encoded, pad_id=pad, pack=pack)
        times["data"] = time.perf_counter() - start
        start = time.perf_counter()
        if full_vocab:
            hidden = m(batch.input_ids, batch.position_ids, batch.attention_mask)
            logps = torch.log_softmax(m.logits(hidden), -1)[batch.sources, batch.targets]
        else:
            logps = token_logprobs(m, batch)
        if dpo:
            if live_reference:  # the reference model run every step: the decoder with its LoRA switched off
                saved = [b.detach().clone() for b in m.lora_b.values()]
                with torch.no_grad():
                    for b in m.lora_b.values():
                        b.zero_()
                    reference = sequence_logprobs(token_logprobs(m, batch), batch, 2)
                    for b, value in zip(m.lora_b.values(), saved, strict=True):
                        b.copy_(value)
            else:
                reference = torch.zeros(batch.examples, 2)
            loss, _ = dpo_loss(sequence_logprobs(logps, batch, 2), reference, beta=0.1)
        else:
            loss = -logps.mean()
        times["forward"] = time.perf_counter() - start
        start = time.perf_counter()
        loss.backward()
        times["backward"] = time.perf_counter() - start
        start = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times["optimizer"] = time.perf_counter() - start
        return times, batch.tokens

    batches_sft = [sft[i : i + BATCH] for i in range(0, len(sft), BATCH)]
    variants = {
        "Atelier (bf16 where AMX, packed, projection on assistant tokens only)": lambda b: step(model(dtype), b),
        "- padding instead of packing": lambda b: step(model(dtype), b, pack=False),
        "- full-vocabulary projection": lambda b: step(model(dtype), b, full_vocab=True),
        "- fp32 instead of bf16": lambda b: step(model(torch.float32), b),
        "- LoRA dropout 0.05": lambda b: step(model(dtype, 0.05), b),
        "transformers + PEFT, fp32, padded, full vocabulary (the starting point)": hf_peft_step(hf_dir, encoder),
    }
    batches_mixed = [short[i : i + BATCH] for i in range(0, len(short), BATCH)]
    mixed_variants = {
        f"mixed lengths ({MIXED[0]}–{MIXED[1]} tokens): Atelier": lambda b: step(model(dtype), b),
        f"mixed lengths ({MIXED[0]}–{MIXED[1]} tokens): - padding instead of packing": lambda b: step(
            model(dtype), b, pack=False
        ),
    }
    batches_tree = [tree[i : i + BATCH] for i in range(0, len(tree), BATCH)]
    batches_plain = [plain[i : i + BATCH] for i in range(0, len(plain), BATCH)]
    dpo_variants = {
        "DPO: Atelier (shared prompt, reference precomputed)": (batches_tree, {}),
        "DPO: - chosen and rejected as two sequences": (batches_plain, {}),
        "DPO: - reference model run every step": (batches_tree, {"live_reference": True}),
    }
    # Variants alternate step by step (one batch each, in turn, ABLATION_ROUNDS times) so that a busy moment
    # on the machine lands on all of them; each variant's first step is a warm-up.
    jobs = {name: (lambda batch, run=run: run(batch), batches_sft, "tokens") for name, run in variants.items()}
    jobs |= {name: (lambda batch, run=run: run(batch), batches_mixed, "tokens") for name, run in mixed_variants.items()}
    for name, (batches, options) in dpo_variants.items():
        jobs[name] = (lambda batch, o=options: step(model(dtype), batch, dpo=True, **o), batches, "pairs")
    for name, (run, batches, _) in jobs.items():
        say(f"ablation warm-up: {name}")
        run(batches[0])
    rates: dict[str, list[float]] = {name: [] for name in jobs}
    phases: dict[str, float] = {}
    for round_ in range(ABLATION_ROUNDS):
        say(f"ablation round {round_ + 1}/{ABLATION_ROUNDS}")
        for name, (run, batches, unit) in jobs.items():
            batch = batches[1 + round_ % (len(batches) - 1)]
            times, tokens = run(batch)
            rates[name].append((tokens if unit == "tokens" else len(batch)) / sum(times.values()))
            if name == next(iter(variants)):
                for phase, seconds in times.items():
                    phases[phase] = phases.get(phase, 0.0) + seconds
    rows = []
    for names, unit in ((variants, "tokens/s"), (mixed_variants, "tokens/s"), (dpo_variants, "pairs/s")):
        first = next(iter(names))
        for name in names:
            typical, best = median(rates[name]), max(rates[name])
            ratios = f"{typical / median(rates[first]):.2f}x ({best / max(rates[first]):.2f}x)"
            rows.append((name, f"{typical:.1f} ({best:.1f}) {unit}", ratios))
    total = sum(phases.values())
    return rows, {phase: seconds / total for phase, seconds in phases.items()}


def hf_peft_step(hf_dir: Path, encoder):
    """One step of plain transformers + PEFT: fp32, every conversation padded to the batch's longest, the
    loss on assistant tokens over full-vocabulary logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS))).train()
    optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-5)
    pad = encoder.tokenizer.hf.pad_token_id

    def step(encoded):
        times, start = {}, time.perf_counter()
        segments = [parts[0] for parts in encoded]
        width = max(len(s) for s in segments)
        ids = torch.full((len(segments), width), pad)
        mask = torch.zeros(len(segments), width, dtype=torch.long)
        labels = torch.full((len(segments), width), -100)
        for row, segment in enumerate(segments):
            ids[row, : len(segment)] = torch.from_numpy(segment.ids)
            mask[row, : len(segment)] = 1
            labels[row, segment.sources + 1] = torch.from_numpy(segment.targets)
        times["data"] = time.perf_counter() - start
        start = time.perf_counter()
        logits = peft(input_ids=ids, attention_mask=mask, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        times["forward"] = time.perf_counter() - start
        start = time.perf_counter()
        loss.backward()
        times["backward"] = time.perf_counter() - start
        start = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times["optimizer"] = time.perf_counter() - start
        return times, int(mask.sum())

    return step


# --- the report -------------------------------------------------------------------------------------------


def main() -> None:
    torch.set_num_threads(THREADS)
    sys.path.insert(0, str(ROOT))
    from transformers import AutoTokenizer

    from apps.finetune.training import TrainingSettings, compute_dtype, train_sft

    dtype = compute_dtype(TrainingSettings(), torch.device("cpu"))  # what precision="auto" picks on this machine
    hf_dir = find_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    machine = Machine()
    say(f"model {hf_dir}; compute dtype {dtype}; load average {machine.load:.2f}")
    sft_pool = synthetic_conversations(SFT_STEPS * BATCH, seed=0, tokenizer=tokenizer)
    dpo_pool = synthetic_pairs(DPO_STEPS * BATCH, seed=0)
    lengths = [len(tokenizer.apply_chat_template(c["messages"])) for c in sft_pool]

    sft = compare(
        "SFT",
        {
            "atelier": lambda rate: run_ours("sft", hf_dir, sft_pool, SFT_STEPS, rate),
            "trl": lambda rate: run_trl("sft", hf_dir, sft_pool, SFT_STEPS, rate),
            "trl_no_checkpointing": lambda rate: run_trl(
                "sft", hf_dir, sft_pool, SFT_STEPS, rate, gradient_checkpointing=False
            ),
        },
        ROUNDS,
        "tokens",
    )
    dpo = compare(
        "DPO",
        {
            "atelier": lambda rate: run_ours("dpo", hf_dir, dpo_pool, DPO_STEPS, rate),
            "trl": lambda rate: run_trl("dpo", hf_dir, dpo_pool, DPO_STEPS, rate),
        },
        ROUNDS,
        "examples",
    )
    rows, shares = ablation(
        hf_dir,
        synthetic_conversations(3 * BATCH, seed=1, tokenizer=tokenizer),
        synthetic_conversations(3 * BATCH, seed=1, tokenizer=tokenizer, lengths=MIXED),
        dpo_pool,
        dtype=dtype,
    )

    # 200 conversations of ~250 tokens, one epoch, SFT defaults but for the sequence length: 180 trained,
    # 20 held out and evaluated once (a forward pass, about a third of a training step's work).
    ours_tokens_s = sft["atelier"].pooled("tokens")
    corpus = synthetic_conversations(200, seed=2, tokenizer=tokenizer)
    corpus_tokens = sum(min(SEQ_LEN, len(tokenizer.apply_chat_template(c["messages"]))) for c in corpus)
    start = time.perf_counter()
    from apps.finetune.decoder import LoraDecoder

    LoraDecoder(hf_dir=hf_dir, lora=lora_settings(), dtype=dtype)
    load_s = time.perf_counter() - start
    estimate = load_s + corpus_tokens * 0.9 / ours_tokens_s + corpus_tokens * 0.1 / (3 * ours_tokens_s)
    measured = None
    if FULL:
        say("training 200 conversations for one epoch")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            train_sft(
                base_model_dir=hf_dir,
                examples=corpus,
                out_dir=Path(out) / "a",
                settings=TrainingSettings(lora=lora_settings(), epochs=1, batch_size=BATCH, max_length=SEQ_LEN),
            )
        measured = time.perf_counter() - start
    wall, foreign = machine.foreign()
    report = render(
        sft=sft,
        dpo=dpo,
        rows=rows,
        shares=shares,
        lengths=lengths,
        corpus_tokens=corpus_tokens,
        estimate=estimate,
        measured=measured,
        load=machine.load,
        wall=wall,
        foreign=foreign,
    )
    RESULTS.write_text(report)
    print(report)


def render(*, sft, dpo, rows, shares, lengths, corpus_tokens, estimate, measured, load, wall, foreign) -> str:
    ours_sft, ours_dpo = sft["atelier"], dpo["atelier"]
    reference_s = median(ours_dpo.meta["reference_s"])
    epoch_s = DPO_STEPS * BATCH / ours_dpo.pooled("examples")
    wall_s = measured or estimate

    def verdict(ratio: float) -> str:
        return f"≥ {TARGET_SPEEDUP}x: {'MET' if ratio >= TARGET_SPEEDUP else 'NOT MET'}"

    def row(label: str, ours: Rate, trl: Rate, unit: str, target: bool) -> str:
        pooled, best = ours.pooled(unit) / trl.pooled(unit), ours.best(unit) / trl.best(unit)
        return (
            f"| {label} | {ours.pooled(unit):.2f} ({ours.best(unit):.2f}) | {trl.pooled(unit):.2f} "
            f"({trl.best(unit):.2f}) | {pooled:.2f}x ({best:.2f}x) | {verdict(min(pooled, best)) if target else ''} |"
        )

    lines = [
        "# Fine-tuning benchmark: Atelier's LoRA trainer against TRL",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `python -m bench.finetune`. {platform.processor() or 'CPU'}, "
        f"{THREADS} threads, torch {torch.__version__}, TRL 1.16.0, PEFT 0.21.2. SmolLM2-135M-Instruct (fp32 "
        f"checkpoint), LoRA r {RANK} alpha {ALPHA} on all seven linear layers, no dropout, sequence length "
        f"{SEQ_LEN}, {BATCH} examples per step. SFT conversations of {min(lengths)}–{max(lengths)} tokens (mean "
        f"{statistics.mean(lengths):.0f}). Rates count real tokens (padding excluded) over every measured step of "
        f"{ROUNDS} alternating rounds; in brackets, the fastest single step (the one least disturbed by the rest "
        "of this shared machine). A target is met when the lower of the two ratios meets it.",
        "",
        "## Headline",
        "",
        "| measure | Atelier | TRL | ratio | target |",
        "|---|---|---|---|---|",
        row("SFT tokens/s vs SFTTrainer (its defaults)", ours_sft, sft["trl"], "tokens", True),
        row(
            "SFT tokens/s vs SFTTrainer without gradient checkpointing",
            ours_sft,
            sft["trl_no_checkpointing"],
            "tokens",
            False,
        ),
        row("DPO pairs/s vs DPOTrainer (its defaults)", ours_dpo, dpo["trl"], "examples", True),
        f"| 200 conversations × 1 epoch ({corpus_tokens} tokens), wall time | "
        + (f"{measured:.0f} s measured ({estimate:.0f} s estimated)" if measured else f"{estimate:.0f} s estimated")
        + f" | | | < {TARGET_WALL_S} s: {'MET' if wall_s < TARGET_WALL_S else 'NOT MET'} |",
        "",
        f"Atelier ran in {ours_sft.meta['precision']} (precision auto: bf16 on a CPU with AMX). TRL ran with "
        f"bf16={sft['trl'].meta['bf16']} and gradient_checkpointing={sft['trl'].meta['gradient_checkpointing']} "
        "(its defaults), the loss on assistant tokens through its fused LM head (a chat template with generation "
        "markers that renders SmolLM2's text exactly), padding to the longest in each batch. DPO rates are "
        f"training steps; Atelier computes the reference log-probs once before them ({reference_s:.1f} s for "
        f"{DPO_STEPS * BATCH} pairs, {reference_s / (reference_s + epoch_s):.0%} of an epoch of them), TRL runs "
        "its reference (the adapter disabled) inside every step. The wall time estimate is the model load plus "
        "the corpus at the SFT rate above (180 conversations trained, 20 held out and evaluated once, a forward "
        "pass at about 3x the training rate).",
        "",
        "Per-step rates (tokens/s; pairs/s for DPO):",
        "",
        f"- SFT Atelier: {ours_sft.per_step('tokens')}",
        f"- SFT TRL: {sft['trl'].per_step('tokens')}",
        f"- SFT TRL without gradient checkpointing: {sft['trl_no_checkpointing'].per_step('tokens')}",
        f"- DPO Atelier: {ours_dpo.per_step('examples')}",
        f"- DPO TRL: {dpo['trl'].per_step('examples')}",
        "",
        "## Each change, one at a time (Atelier's trainer, training steps on the same batches)",
        "",
        "Median over the rounds, the fastest step in brackets.",
        "",
        "| variant | rate | vs Atelier |",
        "|---|---|---|",
        *[f"| {name} | {rate} | {ratio} |" for name, rate, ratio in rows],
        "",
        "## Where a step's time goes (Atelier, SFT)",
        "",
        "| phase | share |",
        "|---|---|",
        *[f"| {phase} | {share:.0%} |" for phase, share in shares.items()],
        "",
        f"Load average when the bench started: {load:.2f}; during its {wall:.0f} s other processes used "
        f"{foreign:.0f} CPU-seconds of this machine's 2 cores. Compare ratios measured in the same minutes.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
