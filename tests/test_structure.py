"""How the package is put together: its imports form no cycle, and the CLI answers --help and bad flags without
importing the heavy libraries (torch, transformers, peft, bitsandbytes, datasets)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "powerflow_lite"
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "datasets")


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports. Every import counts, at module level or inside a function, but
    those under `if TYPE_CHECKING:` (annotations only). Importing a subpackage's module from outside it runs the
    subpackage's __init__ first, so that counts as importing the __init__ too."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]  # the module's package
        targets = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                stem = ".".join(base + ([node.module] if node.module else []))
                targets |= {f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem
                            for alias in node.names}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        edges = set()
        for target in targets:
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target not in modules or target == name:
                continue
            edges.add(target)
            package_of = target.rsplit(".", 1)[0]  # entered from outside: its package's __init__ runs first
            if package_of in modules and package_of != package.name and not name.startswith(package_of + "."):
                edges.add(package_of)
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_imports_form_no_cycle():
    graph = import_graph(PACKAGE)
    assert len(graph) > 40 and "powerflow_lite.samplers.rollouts" in graph["powerflow_lite.logprobs"]
    assert cycles(graph) == []


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_function_level_import_closes_a_cycle(tmp_path):
    package = write_package(tmp_path / "pkg", {
        "__init__.py": "", "a.py": "from .b import f\n",
        "b.py": "def f():\n    from .a import g  # imported here: a imports b\n"})
    assert cycles(import_graph(package)) == [["pkg.a", "pkg.b"]]


def test_entering_a_subpackage_runs_its_init(tmp_path):
    # kernel -> sub.types runs sub/__init__, which imports sub.impl, which imports kernel: a cycle at import time
    package = write_package(tmp_path / "pkg", {
        "__init__.py": "", "kernel.py": "from .sub.types import T\n", "sub/__init__.py": "from .impl import run\n",
        "sub/types.py": "T = int\n", "sub/impl.py": "from ..kernel import T\n"})
    assert cycles(import_graph(package)) == [["pkg.kernel", "pkg.sub", "pkg.sub.impl"]]
    package = write_package(tmp_path / "pkg", {"sub/__init__.py": "", "typed.py": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .kernel import T\n")})
    assert cycles(import_graph(package)) == []  # an empty __init__; annotations only


COMMANDS = [
    ["--help"],
    ["train", "--help"],
    ["eval", "--help"],
    ["sample", "--help"],
    ["preview", "--help"],
    ["train", "--no-such-flag"],
    ["train", "--model", "m", "--prompts", "p.jsonl", "--alpha", "2", "--lr", "-1"],
    ["train", "--model", "m", "--prompts", "p.jsonl", "--alpha", "2", "--sampler", "power-mcmc"],
    ["eval", "--model", "m", "--data", "d.jsonl", "--task", "creative", "-k", "1"],
    ["preview", "--model", "m", "--prompts", "p.jsonl", "--alphas", "0,1"],
    ["sample", "--model", "m"],
    ["merge-adapter", "--model", "m"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_help_and_bad_flags_import_no_heavy_library(args):
    probe = (f"import json, sys\nfrom powerflow_lite.cli import main\ncode = main({args!r})\n"
             f"print(json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules]]))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    code, heavy = json.loads(result.stdout.strip().splitlines()[-1])
    assert code == (0 if "--help" in args else 2), result.stderr
    assert heavy == [], f"{' '.join(args)} imported {heavy}"
