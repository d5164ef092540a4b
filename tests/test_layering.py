"""Packages follow deployment: `device_agent` is what ships to a device and
imports nothing else of the project; the server packages import it, never the
reverse; only the CLI uses click; a device install (no extras) runs
`ota transcribe` and the agent.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from demo.seaweed import SeaweedEndpoint
from device_agent.model_format import encode_model, load_model
from device_agent.store import S3Store
from packager.bundle import encode_full_bundle
from packager.publish import publish_bundle
from packager.trust import init_repository
from tests.tiny import tiny_device_model

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = ROOT / "models" / "base-v1.otam"
PROJECT = {"device_agent", "packager", "diffing", "demo", "cli", "bench", "tests"}


def _imports(path: Path) -> set[str]:
    """Top-level names of every absolute import in the file, also those inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def _violations(package: str, forbidden: set[str]) -> list[str]:
    return [f"{path.relative_to(ROOT)} imports {', '.join(sorted(found))}"
            for path in sorted((ROOT / package).rglob("*.py")) if (found := _imports(path) & forbidden)]


def test_device_agent_imports_no_other_project_package() -> None:
    assert _violations("device_agent", PROJECT - {"device_agent"}) == []


def test_server_packages_import_neither_the_cli_nor_the_demo() -> None:
    assert _violations("packager", {"diffing", "demo", "cli", "bench", "tests"}) == []
    assert _violations("diffing", {"demo", "cli", "bench", "tests"}) == []
    assert _violations("demo", {"cli", "bench", "tests"}) == []


def test_the_import_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from packager.store import open_store\n    import diffing.train\n"
                      "    importlib.import_module('cli.main')\n")
    assert _imports(source) == {"packager", "diffing", "cli"}


def test_libraries_do_not_import_click() -> None:
    for package in ("device_agent", "packager", "diffing", "demo"):
        assert _violations(package, {"click"}) == []


def _project_modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for package in ("device_agent", "packager", "diffing", "demo", "cli") for p in (ROOT / package).rglob("*.py")}


def _module_imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules `path` imports anywhere in the file (`from a.b import c` may name module a.b.c)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found & modules


def test_no_import_cycle_between_project_modules() -> None:
    """A cycle hidden in a function or at the bottom of a module is still a cycle."""
    modules = _project_modules()
    graph = {name: _module_imports(path, set(modules)) - {name} for name, path in modules.items()}
    cycles = []
    for start in graph:  # depth-first search back to `start` (a few hundred modules: cheap)
        todo, seen = [(start, (start,))], set()
        while todo:
            name, route = todo.pop()
            for nxt in graph[name]:
                if nxt == start:
                    cycles.append(" -> ".join((*route, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    todo.append((nxt, (*route, nxt)))
    assert cycles == []


def test_importing_every_device_module_loads_no_other_project_package() -> None:
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / "device_agent").rglob("*.py"))
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(PROJECT)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "['device_agent']"


# --- the device install ------------------------------------------------------------------------
def _requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _device_distributions() -> set[str]:
    """The project's plain dependencies and everything they pull in (no extras)."""
    todo = [_requirement_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue  # a platform-specific dependency not installed here
        todo += [_requirement_name(r) for r in requires if "extra" not in r.partition(";")[2]]
    return seen


def _extras_only_modules() -> list[str]:
    """Top-level modules installed here only because of the extras (test, demo, server)."""
    device = _device_distributions()
    return sorted(module for module, dists in md.packages_distributions().items()
                  if module not in PROJECT and not {_requirement_name(d) for d in dists} & device)


# Runs `ota ARGS...` with every extras-only module made unimportable, as on a device.
DEVICE_OTA = """
import importlib.abc, sys
blocked = set(sys.argv[1].split(","))
class NotOnDevice(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the device install)", name=name)
sys.meta_path.insert(0, NotOnDevice())
from cli.main import cli
cli(sys.argv[2:], prog_name="ota")
"""


def test_device_install_runs_transcribe_and_the_agent(s3_store: S3Store, seaweed: SeaweedEndpoint,
                                                      tmp_path: Path) -> None:
    blocked = _extras_only_modules()
    assert {"matplotlib", "pytest", "bsdiff4"} <= set(blocked)  # the extras really are left out

    def device_ota(*args: str) -> subprocess.CompletedProcess[str]:
        # an empty kernel cache, as on a fresh device: the first WER gate compiles the kernels
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
               "NUMBA_CACHE_DIR": str(tmp_path / "kernel-cache"), **seaweed.aws_env()}
        return subprocess.run([sys.executable, "-c", DEVICE_OTA, ",".join(blocked), *args],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)

    # server side, in this process: a signed repository with one full bundle
    model = tiny_device_model(0)
    model.floats["joint.out.bias"][0] = 1000.0  # blank wins every frame: fast, deterministic decoding
    root = init_repository(s3_store, tmp_path / "keys")
    (tmp_path / "root.json").write_bytes(root)
    publish_bundle(s3_store, tmp_path / "keys", encode_full_bundle(encode_model(model), model))
    audio = ROOT / "samples" / "audio" / "sample_00.wav"
    (tmp_path / "val.jsonl").write_text(json.dumps({"audio_filepath": str(audio), "text": "one", "duration": 1.2}) + "\n")
    (tmp_path / "agent.toml").write_text(
        f'store_url = "s3://{s3_store.bucket}/repo?endpoint={s3_store.endpoint_url}"\n'
        f'model_id = "{model.model_id}"\ndevice_id = "dev-1"\ndata_dir = "{tmp_path / "device"}"\n'
        f'trust_root = "{tmp_path / "root.json"}"\nvalidation_manifest = "{tmp_path / "val.jsonl"}"\n'
        "max_wer = 5.0\npoll_interval = 0.0\npoll_jitter = 0.0\n")

    installed = device_ota("agent", "check-once", "--config", "agent.toml")
    assert installed.returncode == 0, installed.stderr[-2000:]
    outcome = json.loads(installed.stdout)
    # downloaded, verified, applied, gated (the blank-only model: WER 1.0), activated and self-tested
    assert (outcome["outcome"], outcome["to_version"], outcome["wer_after"]) == ("committed", model.version,
                                                                                   1.0), installed.stderr[-3000:]

    heard = device_ota("transcribe", str(audio), "--model", str(SHIPPED_MODEL), "--json")
    assert heard.returncode == 0, heard.stderr[-2000:]
    line = json.loads(heard.stdout)
    assert line["model_hash"] == load_model(SHIPPED_MODEL).content_hash() and line["text"].strip()
