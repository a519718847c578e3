"""The package's shape: no import cycle, and argparse only in the command-line layer."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "refgen"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every module of refgen -> the modules it imports, at any level (a function-level import
    is an edge too: it can close a cycle at run time)."""
    modules = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                deps.add(base)
                # `from refgen import verify` imports the module refgen.verify
                deps |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
        graph[name] = {d for d in deps if d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by depth-first search over refgen's own modules."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                found.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = imports()
    assert {"refgen.cli", "refgen.verify", "refgen.artifact", "refgen.lock"} <= set(graph)
    assert cycles(graph) == []


def test_the_checker_finds_a_cycle() -> None:
    """The check above can fail: the old cli <-> verify import is reported."""
    graph = {"refgen.cli": {"refgen.verify"}, "refgen.verify": {"refgen.cli", "json"}}
    assert cycles(graph) == [["refgen.cli", "refgen.verify", "refgen.cli"]]


def test_argparse_only_in_cli() -> None:
    users = sorted(name for name, deps in imports().items() if "argparse" in deps)
    assert users == ["refgen.cli"]


def test_generate_does_not_depend_on_the_auditor() -> None:
    graph = imports()
    seen: set[str] = set()
    todo = ["refgen.generate"]
    while todo:
        node = todo.pop()
        if node in seen or node not in graph:
            continue
        seen.add(node)
        todo += graph[node]
    assert "refgen.verify" not in seen and "refgen.cli" not in seen
    # nor on the comparison (it once did, for one text helper now in refgen.text)
    assert not any(node == "refgen.compare" or node.startswith("refgen.compare.") for node in seen)


def test_the_file_set_does_not_audit() -> None:
    """refgen.artifact is the file set and its commit only: the checks an auditor runs live in
    refgen.audit, and what a run protects is passed in by generate (no hub, no manifest)."""
    graph = imports()
    assert "refgen.artifact" in graph["refgen.audit"]
    assert not {"refgen.audit", "refgen.hub", "refgen.manifest"} & graph["refgen.artifact"]
