"""The package's layers, read from the source: no import cycles, imports only go down.

Every ``import`` statement counts, including those inside functions (a cycle
hidden in a function is still a cycle). Importing ``pkg.mod`` is an edge to
``pkg.mod`` only: the parent packages' ``__init__`` files are facades.
"""
import ast
import pathlib

import fastprune

ROOT = pathlib.Path(fastprune.__file__).parent

# Layer of each top-level part of the package (higher layers build on lower ones).
LAYERS = {
    "_version": 0,
    "_C": 0,
    "progress": 0,
    "ops": 1,
    "core": 2,
    "schedule": 3,
    "maskset": 3,
    "at_init": 3,
    "lottery": 3,
    "lightning": 3,
    "structured": 3,
    "distributed": 3,
    "llm": 3,
    "shipping": 3,
    "transformers_callback": 3,
    "bench": 4,
}


def _modules():
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["fastprune", *parts])] = path
    out["fastprune._C"] = ROOT / "_C"  # the compiled extension (imports nothing of the package)
    return out


def _imports(name, path, modules):
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fastprune"):
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("fastprune"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name}


def _graph():
    modules = _modules()
    return {name: (_imports(name, path, modules) if path.suffix == ".py" else set()) for name, path in modules.items()}


def _layer(module):
    parts = module.split(".")
    if len(parts) == 1:
        return 5  # the top-level facade re-exports everything
    return LAYERS[parts[1]]


def test_every_part_of_the_package_has_a_layer():
    for name in _graph():
        _layer(name)  # KeyError names a part this test does not know


def test_no_import_cycles():
    graph = _graph()
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_imports_only_go_down_the_layers():
    bad = []
    for name, deps in _graph().items():
        for dep in deps:
            if dep == "fastprune":
                if _layer(name) < 4:  # tooling may run the public API; nothing inside the package may
                    bad.append(f"{name} imports the top-level package")
            elif _layer(dep) > _layer(name):
                bad.append(f"{name} (layer {_layer(name)}) imports {dep} (layer {_layer(dep)})")
    assert not bad, "\n".join(bad)


def test_all_is_torchs_names_plus_the_extras():
    import torch.nn.utils.prune as torch_prune

    from fastprune.core import api
    from fastprune.core.patch import PATCHED_NAMES

    torch_names = [n for n in dir(torch_prune) if not n.startswith("__")]
    torch_names = [n for n in torch_names if callable(getattr(torch_prune, n)) and getattr(
        getattr(torch_prune, n), "__module__", "") == torch_prune.__name__]
    assert set(torch_names) <= set(api.__all__)
    assert fastprune.__all__[: len(api.__all__)] == api.__all__
    assert len(set(fastprune.__all__)) == len(fastprune.__all__)
    for name in fastprune.__all__:
        assert hasattr(fastprune, name), name
    assert set(PATCHED_NAMES) == set(api.__all__) - {"_compute_norm"}
