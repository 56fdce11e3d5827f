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
    offenders = {p.name: _imports(p) & HOST_MODULES for p in (ROOT / "modules").glob("*.py")}
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
