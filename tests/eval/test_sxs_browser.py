"""The side-by-side page in a real headless Chromium (Playwright): an annotator labels five items, some with
the mouse and some with the keyboard shortcuts (one with a comment), then `sxs export` finds exactly those
five labels and writes a DPO file alignkit's loader accepts.

Needs Debian's chromium (`apt-get install chromium`) and the `playwright` package (its driver only: never
`playwright install`); skipped without them.
"""

import json
import shutil
import sqlite3
import subprocess
import sys

import pytest

from alignkit.cli import main
from conftest import ROOT, write_jsonl

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                                             "(pip install playwright; no browser download needed)")
if not shutil.which(CHROMIUM):
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

MODELS = ("model-alpha", "model-beta")  # must never appear on the page


@pytest.fixture
def server(tmp_path):
    items = write_jsonl(tmp_path / "items.jsonl", [
        {"id": f"q{i}", "prompt": f"What is {i} + {i + 2}?", "model_a": MODELS[0],
         "answer_a": f"{i} + {i + 2} = {2 * i + 2}.", "model_b": MODELS[1], "answer_b": f"It is {2 * i + 3}."}
        for i in range(5)])
    db = tmp_path / "labels.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "alignkit.cli", "sxs", "serve", "--pairs", str(items), "--db",
                             str(db), "--host", "127.0.0.1", "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving 5 items"), line
        yield line.split(" at ")[1].split()[0], items, db
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_annotator_labels_five_items_with_mouse_and_keyboard(server, tmp_path, tokenizer, capsys):
    from alignkit.data.collate import load_pairs

    expect = sync_api.expect
    base, items, db = server
    shown = []  # (left text, right text, choice) as the annotator saw them
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base)
            expect(page.locator("#who")).to_be_visible()  # asked once ...
            page.fill("#who-name", "alice")
            page.click("#who button")
            progress = page.locator("#progress")
            expect(progress).to_have_text("0 of 5 labelled")

            steps = [("click", "#choose-left", "left"), ("click", "#choose-tie", "tie"),
                     ("key", "2", "right"), ("comment", "a", "left"), ("key", "x", "both_bad")]
            for n, (how, what, choice) in enumerate(steps, 1):
                shown.append((page.locator("#left").inner_text(), page.locator("#right").inner_text(), choice))
                text = page.locator("body").inner_text()
                assert not any(m in text for m in MODELS), "model names must stay hidden"
                if how == "click":
                    page.click(what)
                elif how == "key":
                    page.keyboard.press(what)
                else:  # C opens the comment box, Enter finishes the comment, then a shortcut labels
                    page.keyboard.press("c")
                    page.keyboard.type("B gets the sum wrong")
                    page.keyboard.press("Enter")
                    expect(page.locator("#status")).to_contain_text("Comment ready")
                    page.keyboard.press(what)
                expect(progress).to_have_text(f"{n} of 5 labelled")
            expect(page.locator("#done")).to_be_visible()
            page.screenshot(path=str(tmp_path / "done.png"))
            page.reload()  # ... and remembered: no second question, straight to "all labelled"
            expect(page.locator("#done")).to_be_visible()
            expect(page.locator("#who")).to_be_hidden()
            assert errors == []
        finally:
            browser.close()

    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    labels = [dict(r) for r in conn.execute("SELECT * FROM labels ORDER BY created_at")]
    conn.close()
    assert len(labels) == 5 and {r["annotator"] for r in labels} == {"alice"}
    answers = {json.loads(line)["id"]: json.loads(line) for line in items.read_text().splitlines()}
    for label, (left, right, choice) in zip(labels, shown):
        item = answers[label["pair_id"]]
        assert left == item["answer_a" if label["left_model"] == MODELS[0] else "answer_b"]
        if choice in ("left", "right"):
            assert label["winner"] == (label["left_model"] if choice == "left" else label["right_model"])
        else:
            assert label["choice"] == choice and label["winner"] is None
    assert [r["comment"] for r in labels] == ["", "", "", "B gets the sum wrong", ""]

    out = tmp_path / "export"
    main(["sxs", "export", "--db", str(db), "--pairs", str(items), "--out", str(out)])
    report = json.loads((out / "sxs_report.json").read_text())
    assert report["labels"] == 5 and report["annotators"] == {"alice": 5}
    assert report["dpo"]["rows"] == 3 and report["dpo"]["excluded"]["tie"] == report["dpo"]["excluded"]["both_bad"] == 1
    assert len(load_pairs(str(out / "dpo_pairs.jsonl"), tokenizer, 256, 128, strict=True)) == 3
