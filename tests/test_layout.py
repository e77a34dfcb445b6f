"""The package's shape, checked on its source: imports run downward by stage, no circle, no
file over 600 lines, adapters use only the plugin API (docs/architecture.md states the rules)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "varbench"

# Lowest first: a module may import its own layer (without a circle) and the layers below it.
LAYERS = [
    ("varbench", "varbench.errors"),
    ("varbench.core",),
    ("varbench.encoders",),
    ("varbench.metrics",),
    ("varbench.plan",),
    ("varbench.adapter",),
    ("varbench.runs",),
    ("varbench.generate",),
    ("varbench.score",),
    ("varbench.study",),
    ("varbench.present",),
    ("varbench.runner",),
    ("varbench.cli", "varbench.__main__"),
]
# metrics: engines import no family; the per-point cache imports engines only
ENGINES = ("varbench.metrics.base", "varbench.metrics.gaussian", "varbench.metrics.kmeans",
           "varbench.metrics.knn")  # fmt: skip
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(path: Path, name: str) -> set[str]:
    """Every varbench module ``path`` imports, at module top or inside a function."""
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    known = modules()
    return {m for m in out if m in known and m != name}


def layer(name: str) -> int:
    """Index of the layer whose prefix matches ``name`` most closely."""
    found = [
        (len(p), i)
        for i, prefixes in enumerate(LAYERS)
        for p in prefixes
        if name == p or (name.startswith(p + ".") and p != "varbench")
    ]
    assert found, f"{name}: module outside every layer; add its package to LAYERS"
    return max(found)[1]


def graph() -> dict[str, set[str]]:
    return {n: imports_of(p, n) for n, p in modules().items()}


def test_imports_run_downward():
    wrong = []
    for name, deps in graph().items():
        for dep in deps:
            if dep != "varbench" and layer(dep) > layer(name):
                wrong.append(f"{name} -> {dep}")
    assert not wrong, "imports that run back up:\n" + "\n".join(sorted(wrong))


def test_no_import_circle():
    g = graph()
    # a package's __init__ importing its own submodules is the usual registration, not a circle
    # unless a submodule imports the package's names back
    state: dict[str, int] = {}
    cycles = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for d in sorted(g.get(n, ())):
            if d == "varbench" or n.startswith(d + "."):
                continue  # importing an ancestor package runs its __init__ first, always
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d) :] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in g:
        if n not in state:
            visit(n, [n])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_metric_engines_import_no_family_and_the_cache_only_engines():
    g = graph()
    for name, deps in g.items():
        fam = {d for d in deps if d.startswith("varbench.metrics.") and not d.startswith(ENGINES)}
        if name.startswith(ENGINES) or name == "varbench.metrics.pointcache":
            assert not fam, f"{name} imports metric families {sorted(fam)}"


def test_no_source_file_over_600_lines():
    files = [*PKG.rglob("*.py"), *(ROOT / "adapters").glob("*.py")]
    long = {
        str(p.relative_to(ROOT)): n
        for p in files
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_every_package_says_its_job():
    for init in PKG.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, (
            f"{init.relative_to(ROOT)}: docstring with its job and imports"
        )


def test_adapters_use_only_the_plugin_api():
    allowed = {"varbench.adapter", "varbench.errors", "varbench"}
    wrong = []
    for path in (ROOT / "adapters").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                mods = [node.module or ""]
            wrong += [
                f"{path.name}: {m}"
                for m in mods
                if m.split(".")[0] == "varbench" and m not in allowed
            ]
    assert not wrong, "adapters import beyond varbench.adapter/varbench.errors:\n" + "\n".join(
        wrong
    )


def test_every_package_is_in_pyprojects_explicit_list():
    """A package missing from ``[tool.setuptools] packages`` would be absent from the wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {module_name(p) for p in PKG.rglob("__init__.py")}
    assert found <= listed, f"add to pyproject's packages: {sorted(found - listed)}"
