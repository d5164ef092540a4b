"""One `ota` run per documented exit code (docs/cli.md, cli/exit_codes.py), on real files, a real
file store, a real SeaweedFS and real processes. Mocks only where a real part cannot produce the
fault: a bug (1), a full disk (25), a lost publish race's timing (24), a missing package (34) and an
S3 server answering 501 (20)."""
from __future__ import annotations

import errno
import fcntl
import http.server
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli import exit_codes
from cli.main import cli
from device_agent.diff import apply_diff
from device_agent.manifest import Utterance, write_manifest
from device_agent.model_format import save_model
from device_agent.store import FileStore
from packager.trust import init_repository
from tests.tiny import TINY_CONFIG, tiny_device_model
from tests.test_publish_roundtrip import _diff_v2

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "base-v1.otam"
AUDIO = ROOT / "samples" / "audio" / "sample_00.wav"
FSDD = ROOT / "tests" / "data" / "fsdd" / "recordings"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _ota(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def _error_line(result: Result, code: int) -> str:
    """The one `Error: ...` line, last in the output (an agent command logs JSON lines before it)."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == code, (code, result.output, result.exception)
    if code == exit_codes.OK:
        return ""
    assert "Traceback" not in result.output and [line for line in lines if line.startswith("Error: ")] == lines[-1:], \
        result.output
    return lines[-1]


def _repo(tmp_path: Path) -> tuple[Path, Path]:
    """A signed file-store repository with one full bundle of the tiny model: (store, keys)."""
    from device_agent.model_format import encode_model
    from packager.bundle import encode_full_bundle
    from packager.publish import publish_bundle

    store = FileStore(tmp_path / "store", create=True)
    keys = tmp_path / "keys"
    (tmp_path / "root.json").write_bytes(init_repository(store, keys))
    model = tiny_device_model()
    publish_bundle(store, keys, encode_full_bundle(encode_model(model), model))
    return tmp_path / "store", keys


def _agent_toml(tmp_path: Path, trust_root: Path | None = None) -> Path:
    (tmp_path / "val.jsonl").write_text(json.dumps({"audio_filepath": str(AUDIO), "text": "one", "duration": 1.2})
                                        + "\n")
    path = tmp_path / "agent.toml"
    path.write_text(f'store_url = "file://{tmp_path / "store"}"\nmodel_id = "tiny"\ndevice_id = "dev-1"\n'
                    f'data_dir = "{tmp_path / "device"}"\ntrust_root = "{trust_root or tmp_path / "root.json"}"\n'
                    f'validation_manifest = "{tmp_path / "val.jsonl"}"\npoll_interval = 0.0\npoll_jitter = 0.0\n')
    return path


def _two_models(tmp_path: Path) -> tuple[Path, Path, Path]:
    """v1, v2 = v1 + a diff, and another v1 with other weights (same id and version)."""
    base, other = tiny_device_model(0), tiny_device_model(1)
    save_model(base, tmp_path / "v1.otam")
    save_model(apply_diff(base, _diff_v2(base)), tmp_path / "v2.otam")
    save_model(other, tmp_path / "other.otam")
    return tmp_path / "v1.otam", tmp_path / "v2.otam", tmp_path / "other.otam"


# --- one case per code: each returns the CliRunner result of one command ---------------------------
def ok(tmp_path: Path, monkeypatch) -> Result:
    return CliRunner().invoke(cli, ["model", "inspect", str(MODEL)])


def internal(tmp_path: Path, monkeypatch) -> Result:
    import packager.exact_diff

    def bug(*_: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(packager.exact_diff, "exact_diff", bug)
    monkeypatch.delenv("OTA_DEBUG", raising=False)
    return CliRunner().invoke(cli, ["bundle", "build", "--from", str(MODEL), "--to", str(MODEL),
                                    "--out", str(tmp_path / "x.otab")])


def usage(tmp_path: Path, monkeypatch) -> Result:
    return CliRunner().invoke(cli, ["model", "inspect", "--no-such-option", str(MODEL)])


def data_error(tmp_path: Path, monkeypatch) -> Result:
    (tmp_path / "store").mkdir()
    (tmp_path / "root.json").write_text("{}")
    (tmp_path / "device").mkdir()
    (tmp_path / "device" / "state.json").write_text("{broken")  # the agent's state, corrupted
    return CliRunner().invoke(cli, ["agent", "status", "--config", str(_agent_toml(tmp_path))])


def config_error(tmp_path: Path, monkeypatch) -> Result:
    (tmp_path / "keys").mkdir()
    return CliRunner().invoke(cli, ["releases", "list", "--store", "ftp://x/y", "--keys", str(tmp_path / "keys")])


def model_format_error(tmp_path: Path, monkeypatch) -> Result:
    (tmp_path / "bad.otam").write_bytes(b"garbage" * 10)
    return CliRunner().invoke(cli, ["model", "inspect", str(tmp_path / "bad.otam")])


def audio_error(tmp_path: Path, monkeypatch) -> Result:
    (tmp_path / "noise.wav").write_bytes(b"RIFF not really audio")
    return CliRunner().invoke(cli, ["transcribe", str(tmp_path / "noise.wav"), "--model", str(MODEL)])


def manifest_error(tmp_path: Path, monkeypatch) -> Result:
    (tmp_path / "bad.jsonl").write_text('{"audio_filepath": 5}\n')
    return CliRunner().invoke(cli, ["eval", "--model", str(MODEL), "--manifest", str(tmp_path / "bad.jsonl")])


def diff_error(tmp_path: Path, monkeypatch) -> Result:
    save_model(tiny_device_model(), tmp_path / "tiny.otam")  # another config: no diff can express the change
    return CliRunner().invoke(cli, ["bundle", "build", "--from", str(MODEL), "--to", str(tmp_path / "tiny.otam"),
                                    "--out", str(tmp_path / "d.otab")])


def bundle_error(tmp_path: Path, monkeypatch) -> Result:
    (tmp_path / "bad.otab").write_bytes(b"OTABNDL\0" + b"\xff" * 40)
    return CliRunner().invoke(cli, ["bundle", "verify", str(tmp_path / "bad.otab")])


def trust_error(tmp_path: Path, monkeypatch) -> Result:
    _repo(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    other_root = tmp_path / "other-root.json"  # a root of another repository: nothing verifies
    other_root.write_bytes(init_repository(FileStore(tmp_path / "elsewhere"), tmp_path / "other-keys"))
    return CliRunner().invoke(cli, ["agent", "check-once", "--config", str(_agent_toml(tmp_path, other_root))])


def lifecycle_error(tmp_path: Path, monkeypatch) -> Result:
    _repo(tmp_path)
    return CliRunner().invoke(cli, ["agent", "rollback", "--config", str(_agent_toml(tmp_path))])


def wrong_base(tmp_path: Path, monkeypatch) -> Result:
    v1, v2, other = _two_models(tmp_path)
    built = CliRunner().invoke(cli, ["bundle", "build", "--from", str(v1), "--to", str(v2),
                                     "--out", str(tmp_path / "d.otab")])
    assert built.exit_code == 0, built.output
    return CliRunner().invoke(cli, ["diff", "apply", str(tmp_path / "d.otab"), "--base", str(other),
                                    "--out", str(tmp_path / "v2b.otam")])


class _NotImplementedS3(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.send_response(501)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = do_PUT = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


def transport_error(tmp_path: Path, monkeypatch) -> Result:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotImplementedS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "scratch").mkdir()
        init_repository(FileStore(tmp_path / "scratch"), tmp_path / "keys")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
        url = f"s3://bucket/repo?endpoint=http://127.0.0.1:{server.server_address[1]}"
        return CliRunner().invoke(cli, ["releases", "list", "--store", url, "--keys", str(tmp_path / "keys")])
    finally:
        server.shutdown()


def _seaweed_case(case: str) -> Callable[..., Result]:
    def run(tmp_path: Path, monkeypatch, request: pytest.FixtureRequest) -> Result:
        seaweed, bucket = request.getfixturevalue("seaweed"), request.getfixturevalue("bucket")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
        (tmp_path / "scratch").mkdir()
        init_repository(FileStore(tmp_path / "scratch"), tmp_path / "keys")  # real keys: the store is what fails
        url = f"s3://{bucket}/repo?endpoint={seaweed.endpoint_url}"
        if case == "unreachable":
            url = f"s3://{bucket}/repo?endpoint=http://127.0.0.1:9"
        elif case == "no_bucket":
            url = f"s3://absent-bucket-xyz/repo?endpoint={seaweed.endpoint_url}"
        else:
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        return CliRunner().invoke(cli, ["releases", "list", "--store", url, "--keys", str(tmp_path / "keys")])
    run.needs_request = True  # type: ignore[attr-defined]
    return run


def store_conflict(tmp_path: Path, monkeypatch) -> Result:
    import packager.trust as trust
    from packager.publish import set_rollout

    store, keys = _repo(tmp_path)
    v1, v2, _ = _two_models(tmp_path)
    built = CliRunner().invoke(cli, ["bundle", "build", "--from", str(v1), "--to", str(v2),
                                     "--out", str(tmp_path / "d.otab")])
    assert built.exit_code == 0, built.output
    real_repo, sneaked = trust._Repo, {}

    class RacedRepo(real_repo):  # another publisher commits between our read and our commit
        def commit(self, **kwargs):  # type: ignore[no-untyped-def]
            if not sneaked:
                sneaked["done"] = True
                set_rollout(FileStore(store), keys, "tiny", "stable", 50.0)
            return super().commit(**kwargs)

    monkeypatch.setattr(trust, "_Repo", RacedRepo)
    return CliRunner().invoke(cli, ["publish", str(tmp_path / "d.otab"), "--store", f"file://{store}",
                                    "--keys", str(keys)])


def disk_full(tmp_path: Path, monkeypatch) -> Result:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # a real full disk cannot be made without privileges
    result = CliRunner().invoke(cli, ["bundle", "build", "--to", str(MODEL), "--out", str(tmp_path / "full.otab")])
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    return result


def agent_busy(tmp_path: Path, monkeypatch) -> Result:
    _repo(tmp_path)
    (tmp_path / "device").mkdir()
    with open(tmp_path / "device" / "agent.lock", "w") as lock:  # another agent process holds the folder
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return CliRunner().invoke(cli, ["agent", "check-once", "--config", str(_agent_toml(tmp_path))])


def file_not_found(tmp_path: Path, monkeypatch) -> Result:
    return CliRunner().invoke(cli, ["model", "inspect", str(tmp_path / "absent.otam")])


def wrong_path_kind(tmp_path: Path, monkeypatch) -> Result:
    return CliRunner().invoke(cli, ["model", "inspect", str(tmp_path)])


def permission_denied(tmp_path: Path, monkeypatch) -> Result:
    # sysfs refuses new files even to root: a real read-only place
    return CliRunner().invoke(cli, ["bundle", "build", "--to", str(MODEL), "--out", "/sys/ota-test.otab"])


def other_os_error(tmp_path: Path, monkeypatch) -> Result:
    # a file that exists and is readable, but reading it fails (EIO: address 0 is not mapped)
    return CliRunner().invoke(cli, ["model", "inspect", "/proc/self/mem"])


def missing_dependency(tmp_path: Path, monkeypatch) -> Result:
    real = importlib.import_module

    def without_matplotlib(name: str, *args: object):  # type: ignore[no-untyped-def]
        if name == "cli.demo_cmds":  # as on an install without the demo extras
            raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_matplotlib)
    listing = CliRunner().invoke(cli, ["--help"])  # listed as unavailable, not dropped
    assert listing.exit_code == 0 and "demo" in listing.output and "unavailable" in listing.output
    return CliRunner().invoke(cli, ["demo", "--tiny"])


def unreadable_format(tmp_path: Path, monkeypatch) -> Result:
    from device_agent.agent.heartbeat import Heartbeat, heartbeat_key

    store, keys = _repo(tmp_path)
    v1, v2, _ = _two_models(tmp_path)
    built = CliRunner().invoke(cli, ["bundle", "build", "--from", str(v1), "--to", str(v2), "--compact",
                                     "--out", str(tmp_path / "d.otab")])
    assert built.exit_code == 0, built.output
    old_agent = json.loads(Heartbeat("d1", "tiny", "stable", 1.0, 1, "no_update").to_json())
    del old_agent["bundle_formats"]  # as agents sent them before they listed the formats they read
    FileStore(store).put(heartbeat_key("tiny", "stable", "d1"), json.dumps(old_agent).encode())
    return CliRunner().invoke(cli, ["publish", str(tmp_path / "d.otab"), "--store", f"file://{store}",
                                    "--keys", str(keys)])


CASES: dict[int, Callable[..., Result]] = {
    exit_codes.OK: ok, exit_codes.INTERNAL: internal, exit_codes.USAGE: usage, 3: data_error, 4: config_error,
    5: model_format_error, 6: audio_error, 7: manifest_error, 8: diff_error, 9: bundle_error, 10: trust_error,
    11: lifecycle_error, 13: wrong_base, 14: unreadable_format, 20: transport_error, 21: _seaweed_case("unreachable"),
    22: _seaweed_case("bad_credentials"), 23: _seaweed_case("no_bucket"), 24: store_conflict, 25: disk_full,
    26: agent_busy, exit_codes.FILE_NOT_FOUND: file_not_found, exit_codes.IS_A_DIRECTORY: wrong_path_kind,
    exit_codes.PERMISSION_DENIED: permission_denied, exit_codes.OTHER_OS_ERROR: other_os_error,
    exit_codes.MISSING_DEPENDENCY: missing_dependency,
}
# Codes that need a process of their own: a lost rank (27) and Ctrl-C (130), below.
IN_PROCESSES = {27, exit_codes.INTERRUPTED}


def test_every_documented_code_has_a_run() -> None:
    assert set(CASES) | IN_PROCESSES == set(exit_codes.MEANINGS)


@pytest.mark.parametrize("code", sorted(CASES), ids=[f"exit-{c}" for c in sorted(CASES)])
def test_exit_code(code: int, tmp_path: Path, monkeypatch, request: pytest.FixtureRequest) -> None:
    case = CASES[code]
    result = case(tmp_path, monkeypatch, request) if getattr(case, "needs_request", False) else \
        case(tmp_path, monkeypatch)
    out = _error_line(result, code)
    meaning = exit_codes.MEANINGS[code]
    if "(" in meaning and meaning.endswith("Error)"):  # the class the table names is the one reported
        assert out.startswith(f"Error: {meaning.rsplit('(', 1)[1][:-1]}"), out


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    files = sorted(FSDD.glob("*_lucas_[0-1].wav"))
    words = "zero one two three four five six seven eight nine".split()
    return write_manifest(tmp_path / "train.jsonl", [Utterance(p, words[int(p.name[0])], 0.5, "lucas") for p in files])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PEER = """
import os, torch.distributed as dist
dist.init_process_group("gloo")  # joins the job as rank 1, then the node is lost
os._exit(0)
"""


def test_exit_code_a_lost_rank(tmp_path: Path, manifest: Path) -> None:
    (tmp_path / "tiny.json").write_text(json.dumps({"model": TINY_CONFIG.to_json(), "epochs": 1, "threads": 1}))
    world = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "LOCAL_WORLD_SIZE": "1"}
    peer = subprocess.Popen([sys.executable, "-c", PEER], env={**_env(), **world, "RANK": "1", "LOCAL_RANK": "0"})
    try:
        job = subprocess.run(_ota("train", "--config", "tiny.json", "--train", str(manifest), "--out", "run"),
                             cwd=tmp_path, env={**_env(), **world, "RANK": "0", "LOCAL_RANK": "0"},
                             capture_output=True, text=True, timeout=600)
    finally:
        peer.wait(timeout=60)
    assert job.returncode == 27, job.stderr[-2000:]
    assert job.stderr.strip().splitlines()[-1].startswith("Error: DistributedTrainingError: rank 0 of 2: another rank "
                                                          "stopped"), job.stderr[-2000:]


def test_exit_code_interrupted(tmp_path: Path) -> None:
    # far more files than can be decoded before the signal lands, whatever the machine's speed (the first
    # lines may reach the pipe only when the child's output buffer fills)
    # SIGINT at its default, as in a terminal: a test run started in the background of a shell ignores
    # SIGINT, and the child would inherit that
    proc = subprocess.Popen(_ota("transcribe", *[str(AUDIO)] * 5000, "--model", str(MODEL)), cwd=tmp_path,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().startswith(str(AUDIO))  # the command is running
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == exit_codes.INTERRUPTED, err[-2000:]
    assert err.strip() == "Error: interrupted", err[-2000:]
