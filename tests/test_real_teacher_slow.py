"""A real HTTP teacher: `alignkit serve` with SmolLM2-135M-Instruct on 127.0.0.1, and `pairs build` asking it
through the official openai client. Slow (real model on the CPU): run with `pytest -m slow`."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from alignkit.config import REVEAL_PHRASES, TaskConfig
from alignkit.pairs.verify import verify
from alignkit.tasks import make_task, task_items
from conftest import ROOT

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-c", "from alignkit.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pairs_from_a_real_model_behind_an_openai_compatible_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(CLI + ["serve", "--model", "smollm2-135m-instruct", "--port", str(port),
                                     "--name", "smollm2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    assert json.loads(r.read())["data"][0]["id"] == "smollm2"
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.time() < deadline, "server did not come up"
                time.sleep(1)
        task_cfg = {"name": "addition-2d", "split": "train", "limit": 8}
        cfg = {
            "task": task_cfg,
            "student": {"model": "smollm2-135m-instruct", "samples": 1, "max_new_tokens": 48},
            "teacher": {"kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "smollm2",
                        "attempts": 4, "temperature": 0.7, "max_tokens": 160, "concurrency": 4, "timeout": 300},
            "output_dir": str(tmp_path / "pairs"),
        }
        config = tmp_path / "pairs.yaml"
        config.write_text(yaml.safe_dump(cfg))
        run = subprocess.run(CLI + ["pairs", "build", "--config", str(config)], cwd=ROOT, capture_output=True,
                             text=True)
        assert run.returncode == 0, run.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
    summary = json.loads((tmp_path / "pairs" / "summary.json").read_text())
    print(summary)
    pairs = [json.loads(line) for line in (tmp_path / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == summary["pairs"] >= 1
    assert summary["done"] == 8
    task = make_task(TaskConfig(**task_cfg))
    items = {i.id: i for i in task_items(task, TaskConfig(**task_cfg))}
    for p in pairs:
        item = items[p["metadata"]["id"]]
        chosen = p["chosen"][0]["content"]
        assert p["metadata"]["teacher"].startswith("openai:smollm2@")
        assert verify(task, item, chosen, REVEAL_PHRASES, 12) == (chosen, None)  # every chosen verified again
        assert not task.evaluate(item, p["rejected"][0]["content"])
