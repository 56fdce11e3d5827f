"""Architecture rules: the engine never imports the host; the pack imports without ComfyUI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST_MODULES = {"comfy", "comfy_extras", "folder_paths", "server", "execution", "nodes", "comfy_api"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_engine_never_imports_comfyui():
    offenders = {_rel(p): _imports(p) & HOST_MODULES for p in (ROOT / "modules").rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_only_the_host_adapter_imports_comfyui_in_nodes():
    offenders = {p.name: _imports(p) & HOST_MODULES for p in (ROOT / "nodes").glob("*.py") if p.name != "host.py"}
    assert not {k: v for k, v in offenders.items() if v}


def test_pack_imports_without_comfyui_under_any_folder_name(tmp_path):
    # ComfyUI imports custom_nodes/<folder> as a package named after the folder; mimic that in a clean interpreter.
    link = tmp_path / "Some-Folder_Name"
    link.symlink_to(ROOT, target_is_directory=True)
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('Some-Folder_Name', r'{link / '__init__.py'}',"
            f" submodule_search_locations=[r'{link}'])\n"
            "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m)\n"
            "assert 'comfy' not in sys.modules\n"
            "print(sorted(m.NODE_CLASS_MAPPINGS))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "InflateUNetTemporal" in out.stdout and "SampleVideo" in out.stdout


# ------------------------------------------------------------------------------------- the engine's import graph
ENGINE = ROOT / "modules"
#: Packages every method builds on: they never import a method or the evaluation (nor, like all of modules/, a face).
SHARED_PACKAGES = ("files", "convert", "sampling", "networks", "training")
FACES = (ROOT / "nodes", ROOT / "cli.py", ROOT / "tiny.py", ROOT / "__init__.py")
MAX_ENGINE_LINES = 350


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _module_file(base: Path) -> Path | None:
    """The file a dotted module path names: ``base.py`` or the package ``base/__init__.py``."""
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _relative_imports(path: Path) -> list[tuple[int, Path, str]]:
    """``(line, imported file, imported name)`` for every relative import in ``path`` (also inside functions):
    ``from .a.b import c`` gives the file of ``a/b/c.py`` if ``c`` is a submodule, else that of ``a/b``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = path.parent
        for _ in range(node.level - 1):
            base = base.parent
        if node.module:
            base = base.joinpath(*node.module.split("."))
        for alias in node.names:
            target = _module_file(base / alias.name) or _module_file(base)
            if target is not None:
                out.append((node.lineno, target.resolve(), alias.name))
    return out


def _engine_files() -> list[Path]:
    return sorted(p.resolve() for p in ENGINE.rglob("*.py"))


def _engine_graph() -> dict[Path, set[Path]]:
    files = set(_engine_files())
    return {f: {t for _, t, _ in _relative_imports(f) if t in files and t != f} for f in files}


def _cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one file (Tarjan)."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in comps:  # shortest way back to the start inside the component (breadth first)
        start = min(comp)
        paths, seen, found = {start: [start]}, {start}, None
        queue = [start]
        while queue and found is None:
            v = queue.pop(0)
            for w in sorted(graph[v] & comp):
                if w == start:
                    found = paths[v] + [start]
                    break
                if w not in seen:
                    seen.add(w)
                    paths[w] = paths[v] + [w]
                    queue.append(w)
        cycles.append(found)
    return cycles


def test_no_import_circles_among_engine_files():
    cycles = _cycles(_engine_graph())
    assert not cycles, "import circles in modules/:\n" + "\n".join(" -> ".join(_rel(p) for p in c) for c in cycles)


def _is_shared(path: Path) -> bool:
    parts = path.relative_to(ENGINE.resolve()).parts
    return len(parts) == 1 or parts[0] in SHARED_PACKAGES


def test_shared_packages_never_import_methods_or_evaluation():
    banned = [ENGINE.resolve() / "methods", ENGINE.resolve() / "evaluation"]
    offenders = [f"{_rel(f)}:{line} imports {_rel(t)}" for f in _engine_files() if _is_shared(f)
                 for line, t, _ in _relative_imports(f) if any(t.is_relative_to(b) for b in banned)]
    assert not offenders, "a shared engine package imports a method or the evaluation:\n" + "\n".join(offenders)


def test_engine_never_imports_the_faces():
    faces = [p.resolve() for p in FACES]
    offenders = [f"{_rel(f)}:{line} imports {_rel(t)}" for f in _engine_files()
                 for line, t, _ in _relative_imports(f) if any(t == p or t.is_relative_to(p) for p in faces)]
    assert not offenders, "modules/ imports a face (nodes/, cli.py, tiny.py):\n" + "\n".join(offenders)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_name_is_imported_across_files():
    offenders = []
    for path in sorted([*ENGINE.rglob("*.py"), *(ROOT / "nodes").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                module = "." * node.level + (node.module or "")
                names = [a.name for a in node.names] + (node.module or "").split(".")
            elif isinstance(node, ast.Import):
                module, names = "", [part for a in node.names for part in a.name.split(".")]
            else:
                continue
            offenders += [f"{_rel(path)}:{node.lineno} imports {name} (from {module or name})"
                          for name in names if _private(name)]
    assert not offenders, "private names imported across files (make them public or move them):\n" + \
        "\n".join(offenders)


def test_no_engine_file_over_the_line_limit():
    long = {_rel(p): n for p in _engine_files() if (n := len(p.read_text().splitlines())) > MAX_ENGINE_LINES}
    assert not long, f"engine files over {MAX_ENGINE_LINES} lines (split them): {long}"


#: The engine's layers, bottom up (docs/ARCHITECTURE.md): a file imports only from its own package or a lower layer.
LAYERS = {
    "defaults": 0, "finite": 0,
    "files": 1, "sampling": 1,
    "convert": 2,
    "networks": 3,
    "video_unet": 4,
    "deltas": 5, "build": 5, "training": 5,
    "methods": 6, "evaluation": 6,
}


def _layer_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.resolve()).parts
    return parts[0] if len(parts) > 1 else Path(parts[0]).stem


def test_engine_packages_form_layers_and_no_import_runs_back_up():
    names = {_layer_name(f) for f in _engine_files()} - {"__init__"}
    missing = names - set(LAYERS)
    assert not missing, f"engine packages without a layer (add them to LAYERS and to the map): {missing}"
    upward = []
    for f, targets in _engine_graph().items():
        src = _layer_name(f)
        for t in targets:
            dst = _layer_name(t)
            if dst != src and dst != "__init__" and LAYERS[dst] >= LAYERS[src]:
                upward.append(f"{_rel(f)} -> {_rel(t)}")
    assert not upward, "imports that run sideways or back up the layers:\n" + "\n".join(sorted(upward))


def _method_of(path: Path) -> str | None:
    parts = path.relative_to(ENGINE.resolve()).parts
    return Path(parts[1]).stem if len(parts) >= 2 and parts[0] == "methods" else None


def test_a_method_never_imports_another_method():
    crossing = [f"{_rel(f)} -> {_rel(t)}" for f, targets in _engine_graph().items() for t in targets
                if _method_of(f) and _method_of(t) and _method_of(t) not in (_method_of(f), "__init__")]
    assert not crossing, "methods import each other:\n" + "\n".join(sorted(crossing))
