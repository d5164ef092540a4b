"""Device code never imports training code; the CLI is the only click user."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_device_agent_does_not_import_training_code() -> None:
    for path in list((ROOT / "device_agent").rglob("*.py")) + [ROOT / "packager" / "trust_client.py"]:
        if path.exists():
            assert "diffing" not in _imports(path), f"{path.relative_to(ROOT)} imports diffing"


def test_libraries_do_not_import_click() -> None:
    for package in ("device_agent", "packager", "diffing"):
        for path in (ROOT / package).rglob("*.py"):
            assert "click" not in _imports(path), f"{path.relative_to(ROOT)} imports click"


def test_importing_the_runtime_loads_no_training_module() -> None:
    code = ("import sys, device_agent.runtime, device_agent.model_format, device_agent.audio;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'diffing'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
