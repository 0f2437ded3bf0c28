"""The package layout stays what the README's Layout section says: no import cycles between
thinwire's modules, few top-level modules, and no module far over ~400 lines without saying why."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"thinwire": "thinwire", "server": "thinwire.server", "client": "thinwire.client",
            "compression": "thinwire.compression", "protos": "thinwire.protos"}


def modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((pkg, *rel[:-1])) if rel[-1] == "__init__" else ".".join((pkg, *rel))
            out[name] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """thinwire modules `name` imports anywhere in its body (function-level imports too; not under
    `if TYPE_CHECKING:`). `from pkg import sub` counts as importing the submodule."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:
                    out.add(sub)
                elif base in known:
                    out.add(base)
    out.discard(name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def test_no_import_cycles():
    mods = modules()
    known = set(mods)
    # a package's __init__ that only re-exports its own submodules is not a dependency of them
    graph = {m: {d for d in imports(p, m, known) if not (m.startswith(d + ".") and mods[d].name == "__init__.py")}
             for m, p in mods.items()}
    assert cycles(graph) == []


def test_top_level_is_small():
    top = sorted(p.name for p in (ROOT / "thinwire").glob("*.py"))
    assert len(top) <= 15, top


def test_long_modules_say_why():
    for name, path in modules().items():
        text = path.read_text()
        if "_pb2" in name or len(text.splitlines()) <= 420:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert "one job" in doc.lower(), f"{name} has {len(text.splitlines())} lines and no 'one job' reason"
