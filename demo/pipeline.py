"""`ota demo`: the whole pipeline on one machine, on embedded defaults.

1) build a built-in update (commands with names the base model never heard)
   plus base-domain replay and test data with the synthesizers;
2) start a local SeaweedFS S3 server (or use a file store) and a TUF repository;
3) publish the shipped base model as a full bundle; a device agent installs it;
4) learn a sparse-mask diff and a hashed diff against the exact deployed model,
   publish them (sparse on `stable`, hashed on `beta`), and let two device
   agents update through their WER gates;
5) print a summary and write a report folder (JSON + bytes-vs-WER plot).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from device_agent.agent import Agent, AgentConfig
from device_agent.agent.log import null_log
from device_agent.atomic import write_atomic
from device_agent.device_model import DeviceModel
from device_agent.diff import apply_diff
from device_agent.errors import ConfigError
from device_agent.manifest import read_manifest, write_manifest
from device_agent.model_format import encode_model, load_model
from device_agent.runtime import Int8Runtime
from device_agent.wer import evaluate
from diffing.diffs import HashedDiffConfig, SparseMaskDiffConfig, learn_diff
from packager.bundle import encode_diff_bundle, encode_full_bundle
from packager.publish import publish_bundle
from device_agent.store import FileStore, S3Store, Store
from packager.trust import init_repository

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "base-v1.otam"


@dataclass
class DemoConfig:
    out_dir: Path = Path("work/demo")
    store: str = "seaweedfs"  # or "file"
    base_model: Path = SHIPPED_MODEL
    update_kind: str = "novel_names"
    n_adapt: int = 400
    n_update_test: int = 80
    n_replay: int = 200
    n_original_test: int = 80
    n_device_validation: int = 20  # per domain, on the device
    budget: str | None = None  # default: 1.9% of the model file's bytes (the bundle stays under 2%)
    epochs: int = 12
    seed: int = 0

    @classmethod
    def tiny(cls, **settings: Any) -> "DemoConfig":
        """Seconds instead of minutes (tests, a first look): every step runs, the numbers mean nothing."""
        sizes = dict(epochs=1, n_adapt=8, n_update_test=4, n_replay=4, n_original_test=4, n_device_validation=2)
        return cls(**{**sizes, **settings})

    def __post_init__(self) -> None:
        if self.store not in ("seaweedfs", "file"):
            raise ConfigError(f"demo store must be 'seaweedfs' or 'file', got {self.store!r}")
        if not self.base_model.is_file():
            raise ConfigError(f"base model {self.base_model} not found; expected the shipped models/base-v1.otam")


@dataclass
class DemoReport:
    stages: dict[str, float] = field(default_factory=dict)
    full_model_bytes: int = 0
    full_bundle_bytes: int = 0
    base_version: int = 1
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model: bytes, WERs
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)

    def regressions(self) -> list[dict[str, Any]]:
        """Every measured set whose WER rose with an update: the diffs' test sets against the base
        model, and each device's own validation set across its update (a device's small set can
        miss a regression its gate should have seen; the reported sets and the fleet's reports
        are what catch it)."""
        found = []
        base = self.results.get("base", {})
        for name, r in self.results.items():
            for key in ("update_test", "original_test"):
                if name != "base" and key in base and r[key] > base[key]:
                    found.append({"model": name, "set": key, "before": base[key], "after": r[key]})
        for name, d in self.devices.items():
            update = d.get("update") or {}
            before, after = update.get("wer_before"), update.get("wer_after")
            if before is not None and after is not None and after > before:
                found.append({"model": f"{name} ({update.get('outcome')})", "set": "device validation",
                              "before": before, "after": after})
        return found


@contextmanager
def _stage(report: DemoReport, name: str, say: Callable[[str], None]) -> Iterator[None]:
    say(f"[{name}] ...")
    started = time.perf_counter()
    yield
    report.stages[name] = round(time.perf_counter() - started, 1)
    say(f"[{name}] done in {report.stages[name]:.1f} s")


def _build_data(cfg: DemoConfig, data: Path) -> dict[str, Path]:
    from diffing.synth.build import build_corpus, build_update_set

    update = build_update_set(data / "update", cfg.update_kind, n_adapt=cfg.n_adapt, n_test=cfg.n_update_test,
                              seed=cfg.seed + 1)
    base = build_corpus(data / "base", cfg.n_replay, cfg.n_original_test, seed=cfg.seed + 2)
    # the device's own validation set: a few utterances of each domain, not the reported test sets
    update_val = read_manifest(update["test"])[: cfg.n_device_validation]
    base_val = read_manifest(base["test"])[: cfg.n_device_validation]
    validation = write_manifest(data / "device_validation.jsonl", update_val + base_val)
    return {"adapt": update["adapt"], "update_test": update["test"], "replay": base["train"],
            "original_test": base["test"], "validation": validation}


def _wer(model: DeviceModel, manifest: Path, skip: int = 0) -> float:
    utts = read_manifest(manifest, model.tokenizer)[skip:]
    return round(evaluate(Int8Runtime(model).transcribe, utts).wer, 4)


def _device(cfg: DemoConfig, name: str, channel: str, store_url: str, root: Path, validation: Path) -> Agent:
    config = AgentConfig(store_url=store_url, model_id=load_model(cfg.base_model).model_id, device_id=name,
                         data_dir=cfg.out_dir / "devices" / name, trust_root=root, validation_manifest=validation,
                         channel=channel, max_wer=0.6, max_wer_regression=0.02, expected_wer_slack=0.1)
    return Agent(config, log=null_log)


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print) -> DemoReport:
    report = DemoReport()
    if cfg.out_dir.exists():
        shutil.rmtree(cfg.out_dir)
    cfg.out_dir.mkdir(parents=True)
    with ExitStack() as stack:
        with _stage(report, "data", say):
            data = _build_data(cfg, cfg.out_dir / "data")
        with _stage(report, "store", say):
            store, store_url = _open_store(cfg, stack)
            root = init_repository(store, cfg.out_dir / "keys")
            write_atomic(cfg.out_dir / "root.json", root)

        base = load_model(cfg.base_model)
        base_file = encode_model(base)
        report.full_model_bytes = len(base_file)
        with _stage(report, "publish_base", say):
            base_wer = {"update_test": _wer(base, data["update_test"]),
                        "original_test": _wer(base, data["original_test"])}
            full = encode_full_bundle(base_file, base)
            report.full_bundle_bytes = len(full)
            for channel in ("stable", "beta"):
                publish_bundle(store, cfg.out_dir / "keys", full, channel=channel,
                               expected_wer=base_wer["update_test"])
            report.results["base"] = {"bytes": len(full), **base_wer}
        devices = {"stable": _device(cfg, "device-stable", "stable", store_url, cfg.out_dir / "root.json",
                                     data["validation"]),
                   "beta": _device(cfg, "device-beta", "beta", store_url, cfg.out_dir / "root.json",
                                   data["validation"])}
        with _stage(report, "device_install_base", say):
            for name, agent in devices.items():
                report.devices[name] = {"install": agent.check_once(raise_errors=False)}

        budget = cfg.budget or "1.9%"
        methods = {"sparse": ("stable", SparseMaskDiffConfig(budget=budget, epochs=cfg.epochs, seed=cfg.seed)),
                   "hashed": ("beta", HashedDiffConfig(budget=budget, epochs=cfg.epochs, seed=cfg.seed))}
        for method, (channel, config) in methods.items():
            with _stage(report, f"learn_{method}", say):
                diff = learn_diff(base, data["adapt"], config, replay_manifest=data["replay"])
                bundle = encode_diff_bundle(diff, base)
                updated = apply_diff(base, diff)
                wers = {"update_test": _wer(updated, data["update_test"]),
                        "original_test": _wer(updated, data["original_test"])}
            with _stage(report, f"publish_{method}", say):
                publish_bundle(store, cfg.out_dir / "keys", bundle, channel=channel,
                               expected_wer=wers["update_test"])
            report.results[method] = {"bytes": len(bundle), "bytes_vs_full_model": round(len(bundle) / len(base_file), 5),
                                      "entries": diff.nonzero_entries(), "target_hash": diff.target_hash, **wers}
        with _stage(report, "device_update", say):
            for name, agent in devices.items():
                outcome = agent.check_once(raise_errors=False)
                report.devices[name].update(update=outcome, status=agent.status())
    _write_report(cfg, report)
    return report


def _open_store(cfg: DemoConfig, stack: ExitStack) -> tuple[Store, str]:
    if cfg.store == "file":
        (cfg.out_dir / "store").mkdir()
        path = (cfg.out_dir / "store").resolve()
        return FileStore(path), f"file://{path}"
    import boto3

    from demo.seaweed import local_seaweedfs

    endpoint = stack.enter_context(local_seaweedfs(cfg.out_dir / "seaweedfs"))
    for key, value in endpoint.aws_env().items():  # the agent opens the store from its URL
        stack.callback(_restore_env, key, os.environ.get(key))
        os.environ[key] = value
    boto3.client("s3", endpoint_url=endpoint.endpoint_url, aws_access_key_id=endpoint.access_key,
                 aws_secret_access_key=endpoint.secret_key, region_name=endpoint.region).create_bucket(Bucket="ota")
    store = S3Store("ota", "repo", endpoint_url=endpoint.endpoint_url, access_key=endpoint.access_key,
                    secret_key=endpoint.secret_key)
    return store, f"s3://ota/repo?endpoint={endpoint.endpoint_url}"


def _restore_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def _write_report(cfg: DemoConfig, report: DemoReport) -> None:
    folder = cfg.out_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    write_atomic(folder / "summary.json", json.dumps({"config": config, **asdict(report),
                                                      "regressions": report.regressions()}, indent=2,
                                                     default=str).encode())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in report.results.items():
        size = report.full_bundle_bytes if name == "base" else r["bytes"]
        ax.scatter(size, 100 * r["update_test"], s=60, label=f"{name} (update test)")
        ax.scatter(size, 100 * r["original_test"], s=60, marker="x", label=f"{name} (original test)")
    ax.set_xscale("log")
    ax.set_xlabel("bytes shipped to a device (log)")
    ax.set_ylabel("WER %")
    ax.set_title("Update bytes vs word error rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "bytes_vs_wer.png", dpi=120)
    plt.close(fig)
