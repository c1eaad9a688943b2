"""Side-by-side labelling without a browser: the server under concurrent clients, bad requests, the access
token rule, the seeded sides, undo, the page's language, the export (win rates, bootstrap, a DPO file alignkit's
loader accepts, undone labels left out)."""

import re

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
from alignkit.sxs import page
from alignkit.sxs.items import a_on_left, load_items, mostly_chinese
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

    def start(token=None, n=10, rows=None, lang="auto"):
        path = write_jsonl(tmp_path / "items.jsonl", rows) if rows else write_items(tmp_path / "items.jsonl", n)
        items = load_items(str(path))
        db = tmp_path / "labels.sqlite"
        server = make_server(items, db, "127.0.0.1", 0, token, lang=lang)
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


def rows(db, table="labels"):
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]
    finally:
        conn.close()


def fetch(url):
    """(body text, headers) of a GET."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode(), resp.headers


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
                             str(tmp_path / "l.sqlite"), "--port", "0", "--lang", "zh"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving 3 items") and line.rstrip().endswith("page language: zh)"), line
        base = line.split(" at ")[1].split()[0].rstrip("/")
        assert call(f"{base}/api/next?annotator=ann")[1]["total"] == 3
        assert '<html lang="zh-CN">' in fetch(f"{base}/")[0]
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


# Undo: an annotator takes back their latest label.

def label(base, who, pair_id, choice="left", comment=""):
    status, reply = call(f"{base}/api/label", {"annotator": who, "pair_id": pair_id, "choice": choice,
                                               "comment": comment})
    assert status == 200, reply


def test_undo_takes_back_the_latest_label_and_the_item_comes_back(serve):
    base, db = serve(n=4)
    first = call(f"{base}/api/next?annotator=ann")[1]
    label(base, "ann", first["pair_id"], "left")
    second = call(f"{base}/api/next?annotator=ann")[1]
    label(base, "ann", second["pair_id"], "tie", " too close ")
    label(base, "bea", second["pair_id"], "right")  # another annotator's label of the same item stays
    status, reply = call(f"{base}/api/undo", {"annotator": "ann", "pair_id": second["pair_id"]})
    assert status == 200 and reply["undone"] and reply["comment"] == "too close"
    # The reply shows the item again, sides as before, and the progress without the undone label.
    assert {k: reply[k] for k in second} == {**second, "labelled": 1}
    assert call(f"{base}/api/next?annotator=ann")[1] == second
    assert {(r["annotator"], r["pair_id"]) for r in rows(db)} == {("ann", first["pair_id"]),
                                                                  ("bea", second["pair_id"])}
    [undone] = rows(db, "undone_labels")  # kept for the record
    assert (undone["annotator"], undone["pair_id"], undone["choice"]) == ("ann", second["pair_id"], "tie")
    assert undone["undone_at"] >= undone["created_at"]
    # Again: the first label is now the latest; labelling the item again makes it the latest instead.
    label(base, "ann", second["pair_id"], "right")
    assert call(f"{base}/api/undo", {"annotator": "ann", "pair_id": first["pair_id"]})[0] == 409
    assert call(f"{base}/api/undo", {"annotator": "ann", "pair_id": second["pair_id"]})[0] == 200
    assert call(f"{base}/api/undo", {"annotator": "ann", "pair_id": first["pair_id"]})[0] == 200
    assert call(f"{base}/api/next?annotator=ann")[1] == {**first, "labelled": 0}
    assert [r["annotator"] for r in rows(db)] == ["bea"] and len(rows(db, "undone_labels")) == 3


def test_only_the_annotators_own_latest_label_can_be_undone(serve):
    base, db = serve(n=4)
    label(base, "ann", "q1")
    label(base, "ann", "q2")
    for who, pair_id in [("ann", "q1"),  # not the latest
                         ("bea", "q2"),  # not bea's label: bea has none
                         ("ann", "q3")]:  # never labelled
        status, reply = call(f"{base}/api/undo", {"annotator": who, "pair_id": pair_id})
        assert status == 409 and "latest label" in reply["error"]
    assert {r["pair_id"] for r in rows(db)} == {"q1", "q2"} and rows(db, "undone_labels") == []


UNDO = {"annotator": "ann", "pair_id": "q1"}


@pytest.mark.parametrize("name, body, raw, headers, status", [
    ("unknown pair id", {**UNDO, "pair_id": "nope"}, None, {}, 400),
    ("no pair id", {"annotator": "ann"}, None, {}, 400),
    ("missing annotator", {"pair_id": "q1"}, None, {}, 400),
    ("unknown field", {**UNDO, "choice": "left"}, None, {}, 400),
    ("malformed JSON", None, b'{"annotator": "ann",', {}, 400),
    ("not an object", None, b'["ann", "q1"]', {}, 400),
    ("not JSON content", UNDO, None, {"Content-Type": "text/plain"}, 415),
    ("a foreign Host", UNDO, None, {"Host": "evil.example"}, 403),
    ("oversized body", None, b"x" * 70000, {}, 413),
    ("GET", None, None, {}, 404),
])
def test_bad_undos_get_a_4xx_and_change_nothing(serve, name, body, raw, headers, status):
    base, db = serve()
    label(base, "ann", "q1")
    got, reply = call(f"{base}/api/undo", body, headers, raw)
    assert got == status and isinstance(reply["error"], str)
    assert [r["pair_id"] for r in rows(db)] == ["q1"] and rows(db, "undone_labels") == []


def test_undo_needs_the_token_when_one_is_set(serve):
    base, db = serve(token=TOKEN)
    assert call(f"{base}/api/label", GOOD, {"X-Sxs-Token": TOKEN})[0] == 200
    assert call(f"{base}/api/undo", UNDO)[0] == 401
    assert call(f"{base}/api/undo", UNDO, {"X-Sxs-Token": TOKEN[:-1]})[0] == 401
    assert len(rows(db)) == 1
    assert call(f"{base}/api/undo", UNDO, {"X-Sxs-Token": TOKEN})[0] == 200
    assert rows(db) == []


def test_export_leaves_undone_labels_out(serve, tmp_path, capsys):
    base, db = serve(n=3)
    for pair_id in ("q0", "q1"):  # ann: dpo better on both, then takes q1 back
        label(base, "ann", pair_id, "right" if a_on_left(0, "ann", pair_id) else "left")
    assert call(f"{base}/api/undo", {"annotator": "ann", "pair_id": "q1"})[0] == 200
    out = tmp_path / "export"
    main(["sxs", "export", "--db", str(db), "--pairs", str(tmp_path / "items.jsonl"), "--out", str(out)])
    assert "Undone by their annotators, and not counted: 1 label(s)." in capsys.readouterr().out
    report = json.loads((out / "sxs_report.json").read_text())
    [c] = report["comparisons"]
    assert (report["labels"], report["undone_labels"], c["labels"], c["losses"]) == (1, 1, 1, 1)
    assert [json.loads(line)["metadata"]["pair_id"] for line in (out / "dpo_pairs.jsonl").read_text().splitlines()] \
        == ["q0"]
    # Labelled again after the undo: counted once, as the new label says.
    label(base, "ann", "q1", "tie")
    main(["sxs", "export", "--db", str(db), "--pairs", str(tmp_path / "items.jsonl"), "--out", str(out)])
    [c] = json.loads((out / "sxs_report.json").read_text())["comparisons"]
    assert (c["labels"], c["losses"], c["ties"]) == (2, 1, 1)


# The page: its language, and answers that try to be HTML.

def chinese_items(n=4, japanese=False):
    prompt = "次の計算をしてください：{i} + {i}" if japanese else "请计算：{i} + {i} 等于多少？"
    return [{"id": f"q{i}", "prompt": prompt.format(i=i), "model_a": "base", "answer_a": f"{2 * i}",
             "model_b": "dpo", "answer_b": f"{2 * i + 1}"} for i in range(n)]


@pytest.mark.parametrize("rows_, lang, expected", [
    (chinese_items(), "auto", "zh"),
    (chinese_items(3) + [{"id": "e", "prompt": "What is 1 + 1?", "model_a": "base", "answer_a": "2",
                          "model_b": "dpo", "answer_b": "3"}], "auto", "zh"),  # most prompts are Chinese
    (chinese_items(japanese=True), "auto", "en"),  # kana: Japanese, not Chinese
    (None, "auto", "en"),
    (chinese_items(), "en", "en"),
    (None, "zh", "zh"),
])
def test_the_page_speaks_chinese_when_the_items_are_chinese(serve, rows_, lang, expected):
    base, _ = serve(rows=rows_, lang=lang)
    html, headers = fetch(f"{base}/")
    script, _ = fetch(f"{base}/sxs.js")
    strings = page.STRINGS[expected]
    assert f'<html lang="{strings["html_lang"]}">' in html
    for name in ("title", "a_better", "b_better", "tie", "both_bad", "undo", "done", "key_undo", "blind_note"):
        assert strings[name] in html, name
    for name in ("progress", "saved", "undone", "comment_ready", "nothing_to_undo"):
        assert json.dumps(strings[name], ensure_ascii=False) in script, name
    other = page.STRINGS["en" if expected == "zh" else "zh"]
    assert other["title"] not in html and other["progress"] not in script
    assert "'unsafe-inline'" not in headers["Content-Security-Policy"] and "<script>" not in html


def test_the_two_string_tables_match():
    assert page.EN.keys() == page.ZH.keys()
    for name in page.EN:  # the same {placeholders}, or the script would show a literal {labelled}
        assert set(re.findall(r"{(\w+)}", page.EN[name])) == set(re.findall(r"{(\w+)}", page.ZH[name])), name
    assert set(re.findall(r"{(\w+)}", page.HTML)) <= page.EN.keys()
    assert all(re.search("[\u4e00-\u9fff]", text) for name, text in page.ZH.items() if name != "html_lang")


def test_chinese_detection_and_a_bad_lang(tmp_path, capsys):
    assert mostly_chinese(load_items(str(write_jsonl(tmp_path / "zh.jsonl", chinese_items()))))
    assert not mostly_chinese(load_items(str(write_items(tmp_path / "en.jsonl"))))
    with pytest.raises(SystemExit) as e:
        main(["sxs", "serve", "--pairs", str(tmp_path / "zh.jsonl"), "--db", str(tmp_path / "l.sqlite"),
              "--lang", "fr"])
    assert e.value.code == 2 and "--lang fr: expected one of auto, en, zh" in capsys.readouterr().err


EVIL = ["<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "```html\n<iframe src=javascript:alert(1)>\n```",
        "[click](javascript:alert(1))", "2 < 3 > 1"]


def test_markup_in_answers_is_data_the_page_renders_as_text(serve):
    """The server sends answers only as JSON strings (never inside the page), and the page's script has no way
    to turn a string into markup: no innerHTML and the like, no eval. How the script renders Markdown, and
    that raw HTML comes out as text, is tested in a real browser (test_sxs_page.py, test_sxs_browser.py)."""
    base, _ = serve(rows=[{"id": f"e{i}", "prompt": evil, "model_a": "base", "answer_a": evil, "model_b": "dpo",
                           "answer_b": f"**{evil}**"} for i, evil in enumerate(EVIL)])
    html, headers = fetch(f"{base}/")
    script, _ = fetch(f"{base}/sxs.js")
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    assert "alert" not in html + script
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(",
                 "DOMParser", "createContextualFragment", "srcdoc", "setAttribute("):
        assert sink not in script, sink
    seen = set()
    for _ in EVIL:
        with urllib.request.urlopen(f"{base}/api/next?annotator=ann", timeout=10) as resp:
            assert resp.headers.get_content_type() == "application/json"
            item = json.loads(resp.read())
        assert item["prompt"][0]["content"] in EVIL and {item["left"], item["right"]} == {
            item["prompt"][0]["content"], f"**{item['prompt'][0]['content']}**"}  # unchanged, not escaped twice
        seen.add(item["pair_id"])
        label(base, "ann", item["pair_id"])
    assert len(seen) == len(EVIL)
