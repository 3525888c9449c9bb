"""No import cycle in ``fiftyone_cass/`` (issue 19): every import statement counts, also those
inside functions, relative and absolute, and ``from pkg import name`` where ``name`` is a
submodule. The layers point one way: config, core <- models, methods <- fo <- protocols, app <- cli."""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = "fiftyone_cass"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PKG


def _modules():
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


def _resolve(mod, is_pkg, level, module):
    if level == 0:
        return module
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph():
    """``{module: {imported package module: line}}`` over every import statement of the package."""
    mods = _modules()
    graph = {}
    for mod, (path, is_pkg) in mods.items():
        edges = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node.level, node.module)
                # ``from pkg import sub`` imports the submodule ``pkg.sub``
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                # ``pkg`` itself counts unless only its submodules are imported
                targets = subs + ([base] if len(subs) < len(node.names) else [])
            for t in targets:
                # importing ``a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``: each is an edge, except an
                # ancestor package of this module that is only passed through (Python initialises
                # it before this module runs); a name taken from an ancestor package counts
                parts = t.split(".")
                for i in range(1, len(parts) + 1):
                    name = ".".join(parts[:i])
                    through = name != t and mod.startswith(name + ".")
                    if name in mods and name != mod and not through:
                        edges.setdefault(name, node.lineno)
        graph[mod] = edges
    return graph


def find_cycle(graph):
    """One cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_graph_counts_imports_in_functions_and_submodules():
    g = import_graph()
    # a lazy import inside a function is an edge (the package's ``__getattr__``)
    assert "fiftyone_cass.fo.apply" in g[PKG]
    # ``from fiftyone_cass.methods import cass`` imports the submodule
    assert "fiftyone_cass.methods.cass" in g["fiftyone_cass.methods"]
    # a name taken from the package root (``from fiftyone_cass import __version__``) is an edge
    assert PKG in g["fiftyone_cass.cli"]
    # a relative import resolves (``from . import x`` style is resolved against the package)
    assert _resolve("fiftyone_cass.fo.apply", False, 2, "models") == "fiftyone_cass.models"
    assert _resolve("fiftyone_cass.fo", True, 1, "apply") == "fiftyone_cass.fo.apply"


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_import_cycle():
    g = import_graph()
    cycle = find_cycle(g)
    if cycle:
        path = " -> ".join(f"{a} (line {g[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"
        pytest.fail(f"import cycle: {path}")


# rank of each layer; an import may only go to a lower or equal rank. ``errors``, ``fileio``,
# ``images`` and ``bootstrap`` (the process environment: hub offline mode, logging) import nothing
# of the package's layers: they sit with config and core.
_LAYERS = {
    "config": 0, "core": 0, "errors": 0, "fileio": 0, "images": 0, "bootstrap": 0,
    "models": 1, "methods": 1,
    "fo": 2,
    "protocols": 3, "app": 3,
    "cli": 4, "__main__": 4,
}


def _layer(mod):
    parts = mod.split(".")
    if len(parts) == 1:
        return None  # the package root re-exports; its imports are checked by the cycle test
    if parts[1] in ("integrations", "settings", "schema", "shards"):
        return None  # old-path aliases (README, "Old import paths") import only their target
    return parts[1]


def test_layers_point_one_way():
    bad = []
    for mod, edges in import_graph().items():
        src = _layer(mod)
        if src is None:
            continue
        for dst_mod, line in edges.items():
            dst = _layer(dst_mod)
            if dst is None or dst == src:
                if dst is None and dst_mod != PKG:
                    bad.append(f"{mod}:{line} imports old path {dst_mod}")
                continue
            if _LAYERS[dst] > _LAYERS[src]:
                bad.append(f"{mod}:{line} ({src}) imports {dst_mod} ({dst})")
    assert not bad, "\n".join(bad)


def test_alias_modules_import_only_their_target():
    g = import_graph()
    for mod in g:
        if _layer(mod) is None and mod != PKG and not mod.endswith("integrations"):
            assert len(g[mod]) <= 2, (mod, g[mod])  # the target (and its package)


OLD_PATHS = {
    "fiftyone_cass.settings": "fiftyone_cass.config.settings",
    "fiftyone_cass.schema": "fiftyone_cass.config.schema",
    "fiftyone_cass.shards": "fiftyone_cass.fo.shards",
    "fiftyone_cass.integrations.fo_model": "fiftyone_cass.fo.model",
    "fiftyone_cass.integrations.apply": "fiftyone_cass.fo.apply",
    "fiftyone_cass.integrations.fo_evaluation": "fiftyone_cass.fo.evaluation",
    "fiftyone_cass.integrations.evaluation": "fiftyone_cass.fo.metrics",
    "fiftyone_cass.integrations.protocol": "fiftyone_cass.protocols.runner",
    "fiftyone_cass.integrations.label_plugin": "fiftyone_cass.app.label_operators",
    "fiftyone_cass.integrations.app_support": "fiftyone_cass.app.support",
}


@pytest.mark.parametrize("old, new", sorted(OLD_PATHS.items()))
def test_old_import_paths_are_the_moved_modules_themselves(old, new):
    """README "Old import paths": for one release an old path is the very module object of the new
    one, so attributes and monkeypatches agree."""
    import importlib

    assert importlib.import_module(old) is importlib.import_module(new)
