"""Structure checks anyone can run: the server starts without the model-building code, the web app without
torch, the code is ruff-clean, and no two modules of the apps or the engine import each other, directly or round
a loop."""

import ast
import subprocess
import sys

from tests.conftest import REPO_ROOT

BUILD_MODULES = ("onnx", "gguf", "inference.export", "inference.graph", "inference.quantize")


def test_the_inference_server_imports_no_model_building_code():
    probe = f"import sys, inference.server; print(','.join(m for m in {BUILD_MODULES!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"inference.server imported {result.stdout.strip()}"


def test_the_web_app_does_not_import_torch():
    # torch is for the fine-tune worker; in every web process it would cost ~190 MiB and ~2.5 s of start-up.
    probe = (
        "import os, sys, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings.local'); "
        "django.setup(); import config.urls, apps.finetune.tasks; print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _module_name(path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(*packages: str) -> dict[str, set[str]]:
    """Module -> the modules of `packages` it imports, at any depth of its code (a function-level
    import is still a dependency between the two modules)."""
    paths = [p for package in packages for p in (REPO_ROOT / package).rglob("*.py") if "migrations" not in p.parts]
    modules = {_module_name(p): p for p in paths}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_cycles_in_the_apps_or_the_engine():
    graph = import_graph("apps", "inference")
    assert "apps.chat.tasks" in graph["apps.chat.services"]  # the walk sees imports, function-level ones too
    assert cycles(graph) == []
