"""Side-by-side labelling without a browser: the server under concurrent clients, bad requests, the access
token rule, the seeded sides, the export (win rates, bootstrap, a DPO file alignkit's loader accepts)."""

import json
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from alignkit.cli import main
from alignkit.eval.metrics import bootstrap_interval, win_rate
from alignkit.sxs.items import a_on_left, load_items
from alignkit.sxs.server import make_server
from conftest import ROOT, write_jsonl

TOKEN = "test-token-0123456789abcdef"


def write_items(path, n=10):
    return write_jsonl(path, [{"id": f"q{i}", "prompt": f"What is {i} + {i}?", "model_a": "base",
                               "answer_a": f"{i} + {i} = {2 * i + 1}", "model_b": "dpo",
                               "answer_b": f"{i} + {i} = {2 * i}"} for i in range(n)])


@pytest.fixture
def serve(tmp_path):
    """start(token=None) -> (base url, db path) of a server running in this process."""
    servers = []

    def start(token=None, n=10):
        items = load_items(str(write_items(tmp_path / "items.jsonl", n)))
        db = tmp_path / "labels.sqlite"
        server = make_server(items, db, "127.0.0.1", 0, token)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", db

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def call(url, body=None, headers=None, raw=None):
    """(status, JSON reply) of a GET, or of a POST when body or raw bytes are given."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def rows(db):
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM labels")]
    finally:
        conn.close()


def test_fifty_labels_from_five_concurrent_clients_are_all_stored(serve):
    base, db = serve()

    def annotate(who):
        for _ in range(10):
            status, item = call(f"{base}/api/next?annotator={who}")
            assert status == 200 and not item["done"]
            status, reply = call(f"{base}/api/label", {"annotator": who, "pair_id": item["pair_id"],
                                                        "choice": ["left", "right", "tie", "both_bad"][len(who) % 4]})
            assert status == 200 and reply["stored"] and not reply["replaced"]
        return call(f"{base}/api/next?annotator={who}")[1]

    with ThreadPoolExecutor(5) as pool:
        finals = list(pool.map(annotate, ["ann", "bea", "carl", "dorothea", "eve-01"]))
    assert all(f == {"done": True, "labelled": 10, "total": 10} for f in finals)
    stored = rows(db)
    assert len(stored) == 50
    assert len({(r["annotator"], r["pair_id"]) for r in stored}) == 50
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_choice_maps_back_to_the_real_model_and_the_sides_are_recorded(serve):
    base, db = serve()
    items = load_items(str(write_items(db.parent / "again.jsonl")))
    sides = {a_on_left(0, "ann", i) for i in items}
    assert sides == {True, False}, "ten items should land on both sides"
    for _ in range(10):
        item = call(f"{base}/api/next?annotator=ann")[1]
        assert "base" not in json.dumps(item) and "dpo" not in json.dumps(item), "model names are hidden"
        call(f"{base}/api/label", {"annotator": "ann", "pair_id": item["pair_id"], "choice": "left",
                                   "comment": " looks right "})
        label = next(r for r in rows(db) if r["pair_id"] == item["pair_id"])
        truth = items[item["pair_id"]]
        left_model = "base" if item["left"] == truth.answer_a else "dpo"
        assert label["left_model"] == label["winner"] == left_model
        assert label["right_model"] == ({"base", "dpo"} - {left_model}).pop()
        assert label["choice"] == ("a" if left_model == "base" else "b")
        assert label["comment"] == "looks right" and label["created_at"].endswith("+00:00")
    # Last wins: a second label on the same item replaces the first.
    status, reply = call(f"{base}/api/label", {"annotator": "ann", "pair_id": "q3", "choice": "tie"})
    assert status == 200 and reply["replaced"] and reply["labelled"] == 10
    label = [r for r in rows(db) if r["pair_id"] == "q3"]
    assert len(label) == 1 and label[0]["choice"] == "tie" and label[0]["winner"] is None


GOOD = {"annotator": "ann", "pair_id": "q1", "choice": "left"}


@pytest.mark.parametrize("name, body, raw, headers, status", [
    ("unknown pair id", {**GOOD, "pair_id": "nope"}, None, {}, 400),
    ("numeric pair id", {**GOOD, "pair_id": 1}, None, {}, 400),
    ("invalid choice", {**GOOD, "choice": "A"}, None, {}, 400),
    ("oversized comment", {**GOOD, "comment": "x" * 2001}, None, {}, 400),
    ("comment not a string", {**GOOD, "comment": ["x"]}, None, {}, 400),
    ("missing annotator", {**GOOD, "annotator": ""}, None, {}, 400),
    ("unknown field", {**GOOD, "winner": "dpo"}, None, {}, 400),
    ("malformed JSON", None, b'{"annotator": "ann",', {}, 400),
    ("not an object", None, b"[1, 2]", {}, 400),
    ("not JSON content", GOOD, None, {"Content-Type": "text/plain"}, 415),
    ("oversized body", None, b"x" * 70000, {}, 413),
])
def test_bad_labels_get_a_4xx_and_store_nothing(serve, name, body, raw, headers, status):
    base, db = serve()
    got, reply = call(f"{base}/api/label", body, headers, raw)
    assert got == status and isinstance(reply["error"], str)
    assert rows(db) == []


def test_the_token_is_required_when_set(serve):
    base, db = serve(token=TOKEN)
    assert call(f"{base}/api/next?annotator=ann")[0] == 401
    assert call(f"{base}/api/label", GOOD)[0] == 401
    assert call(f"{base}/api/label", GOOD, {"X-Sxs-Token": TOKEN + "x"})[0] == 401
    assert rows(db) == []
    assert call(f"{base}/api/label", GOOD, {"X-Sxs-Token": TOKEN})[0] == 200
    assert call(f"{base}/api/next?annotator=ann&token={TOKEN}")[1]["labelled"] == 1
    with urllib.request.urlopen(f"{base}/") as resp:  # the page itself holds no data and needs no token
        assert "Which answer is better?" in resp.read().decode()
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]


def test_without_a_token_only_loopback_host_names_are_answered(serve):
    base, db = serve()
    status, reply = call(f"{base}/api/next?annotator=ann", headers={"Host": "evil.example:80"})
    assert status == 403 and "loopback" in reply["error"]


def test_a_non_loopback_address_without_a_token_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ALIGNKIT_SXS_TOKEN", raising=False)
    items = write_items(tmp_path / "items.jsonl")
    with pytest.raises(SystemExit) as e:
        main(["sxs", "serve", "--pairs", str(items), "--db", str(tmp_path / "l.sqlite"), "--host", "0.0.0.0"])
    assert e.value.code == 2 and "needs an access token" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["sxs", "serve", "--pairs", str(items), "--host", "0.0.0.0", "--token", "short"])
    assert e.value.code == 2 and "at least 16 characters" in capsys.readouterr().err


def test_bad_items_files_name_the_row_and_field(tmp_path, capsys):
    good = {"prompt": "p", "model_a": "x", "answer_a": "1", "model_b": "y", "answer_b": "2"}
    for bad, field in [({**good, "model_b": "x"}, "'model_b'"), ({**good, "prompt": 3}, "'prompt'"),
                       ({k: v for k, v in good.items() if k != "answer_b"}, "'answer_b': missing")]:
        path = write_jsonl(tmp_path / "items.jsonl", [good, bad])
        with pytest.raises(SystemExit):
            main(["sxs", "serve", "--pairs", str(path), "--db", str(tmp_path / "l.sqlite")])
        assert f"items.jsonl: row 2: field {field}" in capsys.readouterr().err


def test_a_pairwise_judge_results_file_is_an_items_file(tmp_path):
    judged = tmp_path / "judge"
    judged.mkdir()
    (judged / "summary.json").write_text(json.dumps({"command": "eval judge pairwise", "model_1": "runs/dpo/final",
                                                     "model_2": "smollm2-135m-instruct", "metrics": {}}))
    write_jsonl(judged / "results.jsonl", [{"prompt": "What is 2 + 2?", "answer_1": "4", "answer_2": "5",
                                            "verdict_first": "A", "verdict_swapped": "B", "outcome": "win"}])
    [item] = load_items(str(judged / "results.jsonl")).values()
    assert (item.id, item.model_a, item.answer_a, item.model_b, item.answer_b) == (
        "1", "runs/dpo/final", "4", "smollm2-135m-instruct", "5")


def test_the_serve_command_answers(tmp_path):
    items = write_items(tmp_path / "items.jsonl", 3)
    proc = subprocess.Popen([sys.executable, "-m", "alignkit.cli", "sxs", "serve", "--pairs", str(items), "--db",
                             str(tmp_path / "l.sqlite"), "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving 3 items"), line
        base = line.split(" at ")[1].split()[0].rstrip("/")
        assert call(f"{base}/api/next?annotator=ann")[1]["total"] == 3
    finally:
        proc.terminate()
        proc.wait(10)


def test_win_rate_and_bootstrap_by_hand():
    """2 wins, 1 tie, 1 loss -> 2.5 / 4 = 0.625. With every label a win the interval is [1, 1]. 400 labels, half
    wins: the standard error is √(0.25 / 400) = 0.025, so the 95% interval is about 0.5 ± 1.96·0.025."""
    assert win_rate(2, 1, 1) == 0.625
    assert bootstrap_interval([1.0] * 7) == (1.0, 1.0)
    low, high = bootstrap_interval([1.0, 0.0] * 200, seed=3)
    assert low == pytest.approx(0.451, abs=0.01) and high == pytest.approx(0.549, abs=0.01)
    assert bootstrap_interval([1.0, 0.0] * 200, seed=3) == (low, high)
    # Grouped: two items, each labelled by 50 people who agree. Resampling items gives rates 0, ½ or 1 only;
    # resampling single labels would pretend to a much tighter interval.
    scores, groups = [1.0] * 50 + [0.0] * 50, ["x"] * 50 + ["y"] * 50
    assert bootstrap_interval(scores, groups=groups) == (0.0, 1.0)
    assert bootstrap_interval(scores)[1] - bootstrap_interval(scores)[0] < 0.3


def test_export_counts_win_rates_and_a_dpo_file_the_loader_accepts(serve, tmp_path, tokenizer, capsys):
    from alignkit.data.collate import load_pairs

    base, db = serve(n=6)
    items = load_items(str(tmp_path / "items.jsonl"))
    # Annotator "ann" prefers dpo on q0-q3, calls q4 a tie and q5 both bad; "bea" agrees on q0, disagrees on q1.
    wanted = {("ann", f"q{i}"): "dpo" for i in range(4)} | {("ann", "q4"): "tie", ("ann", "q5"): "both_bad",
                                                            ("bea", "q0"): "dpo", ("bea", "q1"): "base"}
    for (who, pair_id), want in wanted.items():
        if want in ("tie", "both_bad"):
            choice = want
        else:
            choice = "left" if a_on_left(0, who, pair_id) == (want == "base") else "right"
        assert call(f"{base}/api/label", {"annotator": who, "pair_id": pair_id, "choice": choice,
                                          "comment": "clearer" if pair_id == "q2" else ""})[0] == 200
    out = tmp_path / "export"
    main(["sxs", "export", "--db", str(db), "--pairs", str(tmp_path / "items.jsonl"), "--out", str(out)])
    assert "| base | dpo | 8 | 1 | 5 | 1 | 1 |" in capsys.readouterr().out
    report = json.loads((out / "sxs_report.json").read_text())
    [c] = report["comparisons"]
    assert (c["model"], c["opponent"], c["labels"], c["items"]) == ("base", "dpo", 8, 6)
    assert c["win_rate"] == pytest.approx((1 + 0.5 + 0.5) / 8)
    assert c["ci95"][0] <= c["win_rate"] <= c["ci95"][1]
    assert report["annotators"] == {"ann": 6, "bea": 2}
    assert report["dpo"] == {"rows": 3, "file": "dpo_pairs.jsonl",
                             "excluded": {"tie": 1, "both_bad": 1, "split": 1, "unusable": 0}}
    dpo = [json.loads(line) for line in (out / "dpo_pairs.jsonl").read_text().splitlines()]
    assert {r["metadata"]["pair_id"] for r in dpo} == {"q0", "q2", "q3"}
    for row in dpo:
        item = items[row["metadata"]["pair_id"]]
        assert row["chosen"] == [{"role": "assistant", "content": item.answer_b}]
        assert row["rejected"] == [{"role": "assistant", "content": item.answer_a}]
        assert row["prompt"] == [{"role": "user", "content": item.prompt[0]["content"]}]
    assert next(r for r in dpo if r["metadata"]["pair_id"] == "q2")["metadata"]["comments"] == ["clearer"]
    assert len(load_pairs(str(out / "dpo_pairs.jsonl"), tokenizer, 256, 128, strict=True)) == 3
    # An item edited after it was labelled: its labels are skipped and counted, not attributed to new text.
    edited = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    edited[0]["answer_b"] = "something else"
    write_jsonl(tmp_path / "edited.jsonl", edited)
    main(["sxs", "export", "--db", str(db), "--pairs", str(tmp_path / "edited.jsonl"), "--out", str(out)])
    report = json.loads((out / "sxs_report.json").read_text())
    assert report["labels"] == 6 and report["skipped_labels"] == {"unknown_item": 0, "changed_item": 2}
