"""Hugging Face hub ids for `model.path` and `data.train`, as transformers and datasets treat them: downloaded while
the hub answers, loaded from the cache while it is offline or out of reach, a one-line error when neither; local
paths and the built-in alias never touch the network.

There is no network here, so "the hub" is a stand-in on loopback (HF_ENDPOINT): it serves a tiny model and a small
preference dataset the way the hub's API does, and records every request. The commands run in subprocesses, since
huggingface_hub reads HF_ENDPOINT and HF_HOME when it is imported.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alignkit.cli import main
from conftest import ROOT

SHA = "0123456789abcdef0123456789abcdef01234567"
PAIRS = ROOT / "data" / "arith" / "train.jsonl"
HUB_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
           "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "HF_XET_CACHE")


class FakeHub:
    """The hub's file and API routes for the repos given ({"models/org/name" or "datasets/org/name": directory})."""

    def __init__(self, repos: dict[str, Path]):
        self.repos, self.requests = repos, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code, body=b"", headers=None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def route(self):
                hub.requests.append((self.command, self.path))
                if self.command == "POST":
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.handle(self)

            do_GET = do_HEAD = do_POST = route

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, h):
        parts = h.path.split("?")[0].strip("/").split("/")
        api = parts[0] == "api"
        parts = parts[1:] if api else parts if parts[0] == "datasets" else ["models", *parts]
        root = self.repos.get("/".join(parts[:3]))
        if root is None:
            return h.reply(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        rest = parts[3:]
        if not api and rest[:1] == ["resolve"]:  # /{repo}/resolve/{revision}/{file}
            f = root / "/".join(rest[2:])
            if not f.is_file():
                return h.reply(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": SHA})
            data = f.read_bytes()
            return h.reply(200, data, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": SHA})
        if api and rest[:1] == ["tree"]:  # /api/{type}/{repo}/tree/{revision}/{folder}
            folder = root / "/".join(rest[2:])
            if not folder.is_dir():
                return h.reply(404, b"", {"X-Error-Code": "EntryNotFound"})
            found = folder.rglob("*") if "recursive=true" in h.path else folder.iterdir()
            entries = [{"type": "file" if q.is_file() else "directory", "path": str(q.relative_to(root)),
                        "size": q.stat().st_size if q.is_file() else 0, "oid": SHA} for q in sorted(found)]
            return h.reply(200, json.dumps(entries).encode())
        if api and rest[:1] in ([], ["revision"]):  # repo info
            files = sorted(str(q.relative_to(root)) for q in root.rglob("*") if q.is_file())
            info = {"id": "/".join(parts[1:3]), "sha": SHA, "private": False, "gated": False, "disabled": False,
                    "tags": [], "siblings": [{"rfilename": f} for f in files]}
            return h.reply(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
        return h.reply(404, b"", {"X-Error-Code": "EntryNotFound"})

    def fetched(self) -> set[str]:
        """The files downloaded (GET of a resolve URL), by name."""
        return {p.split("?")[0].rsplit("/", 1)[-1] for m, p in self.requests if m == "GET" and "/resolve/" in p}

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alignkit(args, tmp_path, endpoint: str, offline: bool = False, timeout: float = 600):
    """`alignkit ARGS` in a subprocess with its own HF_HOME, the hub at `endpoint`, no token and no proxy."""
    env = {k: v for k, v in os.environ.items() if k not in HUB_ENV}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", PYTHONPATH=str(ROOT / "src"))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "alignkit.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.monotonic() - start


def _pairs_repo(tmp_path, rows: int = 6) -> Path:
    repo = tmp_path / "pairs-repo"
    repo.mkdir()
    lines = PAIRS.read_text(encoding="utf-8").splitlines()[:rows]
    (repo / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return repo


@pytest.mark.slow  # ~24 s; the offline and local-path rules stay in the default suite
def test_hub_ids_download_when_online_then_load_from_the_cache_offline_and_unreachable(tiny_model, tmp_path):
    hub = FakeHub({"models/alignkit-tests/tiny": tiny_model, "datasets/alignkit-tests/pairs": _pairs_repo(tmp_path)})
    args = ["logps", "--model", "alignkit-tests/tiny", "--data", "alignkit-tests/pairs"]
    try:
        online, _ = _alignkit([*args, "--out", "online.jsonl"], tmp_path, hub.url)
        assert online.returncode == 0, online.stderr
        assert "wrote 6 rows" in online.stdout
        assert {"config.json", "model.safetensors", "tokenizer.json", "train.jsonl"} <= hub.fetched()

        hub.requests.clear()
        offline, _ = _alignkit([*args, "--out", "offline.jsonl"], tmp_path, hub.url, offline=True)
        assert offline.returncode == 0, offline.stderr
        assert hub.requests == []  # HF_HUB_OFFLINE=1: the cache, and not one request
    finally:
        hub.stop()
    # The hub out of reach (connection refused), HF_HUB_OFFLINE unset: the cache again, without the libraries'
    # minutes of retries first.
    unreachable, seconds = _alignkit([*args, "--out", "unreachable.jsonl"], tmp_path, hub.url)
    assert unreachable.returncode == 0, unreachable.stderr
    assert "Retrying" not in unreachable.stderr and seconds < 120
    rows = [(tmp_path / f"{name}.jsonl").read_text() for name in ("online", "offline", "unreachable")]
    assert rows[0] == rows[1] == rows[2]


@pytest.mark.parametrize("what", ["model", "dataset"])
def test_an_unreachable_hub_and_no_cached_copy_is_one_line_and_quick(what, tiny_model, tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    model, data = ("alignkit-tests/not-cached", str(PAIRS)) if what == "model" else (str(tiny_model),
                                                                                     "alignkit-tests/not-cached")
    proc, seconds = _alignkit(["logps", "--model", model, "--data", data, "--out", "o.jsonl"], tmp_path, endpoint)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (f"error: {what} 'alignkit-tests/not-cached': not in the local Hugging Face cache (nor a "
                         f"local {'directory' if what == 'model' else 'file'}) and could not reach the hub at "
                         f"{endpoint} (ConnectError: [Errno 111] Connection refused)")
    assert "Traceback" not in proc.stderr and "Retrying" not in proc.stderr and seconds < 120


def test_a_hub_id_the_hub_does_not_have_is_one_line(tiny_model, tmp_path):
    hub = FakeHub({"datasets/alignkit-tests/pairs": _pairs_repo(tmp_path)})
    try:
        for args, what in ((["--model", "alignkit-tests/no-such-model", "--data", str(PAIRS)], "model"),
                           (["--model", str(tiny_model), "--data", "alignkit-tests/no-such-data"], "dataset")):
            proc, _ = _alignkit(["logps", *args, "--out", "o.jsonl"], tmp_path, hub.url)
            assert proc.returncode == 2
            assert "Traceback" not in proc.stderr
            last = proc.stderr.strip().splitlines()[-1]
            assert last.startswith(f"error: {what} 'alignkit-tests/no-such-")
            assert "not found on the Hugging Face hub" in last
    finally:
        hub.stop()


@pytest.mark.parametrize("what", ["model", "dataset"])
def test_offline_and_not_cached_is_one_line_through_the_cli(what, tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, data = ("alignkit-tests/never-cached", str(PAIRS)) if what == "model" else (str(tiny_model),
                                                                                       "alignkit-tests/never-cached")
    with pytest.raises(SystemExit) as exit:
        main(["logps", "--model", model, "--data", data, "--out", str(tmp_path / "o.jsonl")])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"error: {what} 'alignkit-tests/never-cached': not in the local Hugging Face cache (nor a local "
        f"{'directory' if what == 'model' else 'file'}) and the hub is offline (HF_HUB_OFFLINE=1)"]


def test_local_paths_and_the_alias_never_touch_the_network(tiny_model, tmp_path):
    """HF_HUB_OFFLINE unset and a hub that answers: a model directory, the built-in alias (its GGUF converted once
    when not yet cached), a data file and a saved dataset directory make not one request."""
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_list([json.loads(line) for line in PAIRS.read_text().splitlines()[:2]]).save_to_disk(saved)
    hub = FakeHub({})
    try:
        for model, data in ((str(tiny_model), str(saved)), ("smollm2-135m-instruct", str(_pairs_repo(tmp_path, 2) /
                                                                                          "train.jsonl"))):
            proc, _ = _alignkit(["logps", "--model", model, "--data", data, "--out", "o.jsonl"], tmp_path, hub.url)
            assert proc.returncode == 0, proc.stderr
            assert "wrote 2 rows" in proc.stdout
        assert hub.requests == []
    finally:
        hub.stop()


def test_a_path_like_name_that_is_not_a_hub_id_keeps_the_old_errors(tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["logps", "--model", str(tmp_path / "nomodel"), "--data", str(PAIRS), "--out", str(tmp_path / "o")])
    assert "nomodel': not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["logps", "--model", str(tiny_model), "--data", "data/missing.jsonl", "--out", str(tmp_path / "o")])
    assert "data/missing.jsonl: data file not found" in capsys.readouterr().err
