"""The side-by-side page in a real headless Chromium (Playwright): an annotator labels five items, some with
the mouse and some with the keyboard shortcuts (one with a comment), then `sxs export` finds exactly those
five labels and writes a DPO file alignkit's loader accepts. Answers in Markdown render (code fences as <pre>)
and answers in HTML stay text; U undoes labels; Chinese items get a Chinese page.

Needs Debian's chromium (`apt-get install chromium`) and the `playwright` package (its driver only: never
`playwright install`); skipped without them.
"""

import json
import sqlite3
import subprocess
import sys

import pytest

from alignkit.cli import main
from conftest import ROOT, write_jsonl

from browser_testing import ARGS, CHROMIUM, sync_api  # skips this module without a browser

MODELS = ("model-alpha", "model-beta")  # must never appear on the page


def sums(n):
    return [{"id": f"q{i}", "prompt": f"What is {i} + {i + 2}?", "model_a": MODELS[0],
             "answer_a": f"{i} + {i + 2} = {2 * i + 2}.", "model_b": MODELS[1], "answer_b": f"It is {2 * i + 3}."}
            for i in range(n)]


@pytest.fixture
def serve(tmp_path):
    """serve(rows) -> (base url, items file, labels database) of `alignkit sxs serve` in a process of its own."""
    procs = []

    def start(rows):
        items = write_jsonl(tmp_path / "items.jsonl", rows)
        db = tmp_path / "labels.sqlite"
        proc = subprocess.Popen([sys.executable, "-m", "alignkit.cli", "sxs", "serve", "--pairs", str(items),
                                 "--db", str(db), "--host", "127.0.0.1", "--port", "0"], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        assert line.startswith(f"serving {len(rows)} items"), line
        return line.split(" at ")[1].split()[0], items, db

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def server(serve):
    return serve(sums(5))


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, base, errors, annotator="alice"):
    """A fresh page (its own localStorage) at base, signed in; page errors and dialogs go to `errors`."""
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (errors.append("dialog: " + d.message), d.dismiss()))
    page.goto(base)
    page.fill("#who-name", annotator)
    page.click("#who button")
    return page


def labels(db):
    conn = sqlite3.connect(db)
    try:
        return [tuple(r) for r in conn.execute("SELECT pair_id, choice, comment FROM labels ORDER BY created_at")]
    finally:
        conn.close()


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


def test_markdown_answers_render_and_html_in_them_stays_text(serve, browser):
    expect = sync_api.expect
    fence = "Like this:\n```python\nfor i in range(3):\n    print(i < 2)\n```\nDone."
    evil = "<img src=x onerror=\"document.title='pwned'\"> **bold** <script>document.title='pwned'</script> " \
           "[go](javascript:document.title='pwned') 2 < 3 > 1"
    base, _, _ = serve([{"id": "md", "prompt": "Print `i < 2` in **Python**", "model_a": MODELS[0],
                         "answer_a": fence, "model_b": MODELS[1], "answer_b": evil}])
    errors = []
    page = open_page(browser, base, errors)
    title = page.title()
    answers = page.locator("#left, #right")
    pre = answers.locator("pre")
    expect(pre).to_have_count(1)
    assert pre.inner_text() == "for i in range(3):\n    print(i < 2)" and pre.get_attribute("data-lang") == "python"
    assert pre.locator("code.language-python").inner_text() == "for i in range(3):\n    print(i < 2)"
    evil_side = page.locator("#left" if "bold" in page.locator("#left").inner_text() else "#right")
    text = evil_side.inner_text()
    assert text.startswith("<img src=x onerror=") and "<script>document.title='pwned'</script>" in text
    assert "[go](javascript:document.title='pwned')" in text and text.endswith("2 < 3 > 1")
    assert evil_side.locator("strong").inner_text() == "bold"
    assert page.locator("img, script:not([src]), iframe, a[href^=javascript]").count() == 0
    assert page.locator("#prompt code").inner_text() == "i < 2"
    assert page.locator("#prompt strong").inner_text() == "Python"
    page.wait_for_timeout(200)
    assert page.title() == title and errors == []


def test_undo_with_the_shortcut_and_the_button(serve, browser):
    expect = sync_api.expect
    base, _, db = serve(sums(3))
    errors = []
    page = open_page(browser, base, errors)
    progress, status, undo = page.locator("#progress"), page.locator("#status"), page.locator("#undo")
    expect(progress).to_have_text("0 of 3 labelled")
    expect(undo).to_be_disabled()  # nothing labelled on this page yet
    page.keyboard.press("u")
    expect(status).to_contain_text("Nothing to undo")
    shown = []
    for n, key in enumerate(("1", "2"), 1):
        shown.append(page.locator("#left").inner_text())
        if key == "2":  # a comment: undo gives it back
            page.keyboard.press("c")
            page.keyboard.type("close call")
            page.keyboard.press("Enter")
        page.keyboard.press(key)
        expect(progress).to_have_text(f"{n} of 3 labelled")
    assert [comment for _, _, comment in labels(db)] == ["", "close call"]
    page.keyboard.press("u")  # the second label goes, its item and comment come back
    expect(progress).to_have_text("1 of 3 labelled")
    expect(status).to_contain_text("Undone: B better.")
    assert page.locator("#left").inner_text() == shown[1]
    assert page.locator("#comment").input_value() == "close call"
    assert len(labels(db)) == 1
    undo.click()  # and the first, with the button
    expect(progress).to_have_text("0 of 3 labelled")
    assert page.locator("#left").inner_text() == shown[0] and labels(db) == []
    expect(undo).to_be_disabled()
    for n, key in enumerate(("3", "4", "1"), 1):  # all three, then undo the last from the "all labelled" screen
        page.keyboard.press(key)
        expect(progress).to_have_text(f"{n} of 3 labelled")
    expect(page.locator("#done")).to_be_visible()
    page.keyboard.press("u")
    expect(page.locator("#task")).to_be_visible()
    expect(progress).to_have_text("2 of 3 labelled")
    page.keyboard.press("2")
    expect(page.locator("#done")).to_be_visible()
    assert [choice for _, choice, _ in labels(db)][:2] == ["tie", "both_bad"] and len(labels(db)) == 3
    assert errors == []


def test_chinese_items_get_a_chinese_page(serve, browser):
    expect = sync_api.expect
    base, _, db = serve([{"id": f"z{i}", "prompt": f"请计算 {i} + {i}。", "model_a": MODELS[0],
                          "answer_a": f"{2 * i}", "model_b": MODELS[1], "answer_b": f"**{2 * i + 1}**"}
                         for i in range(2)])
    errors = []
    page = open_page(browser, base, errors, annotator="小明")
    expect(page.locator("h1")).to_have_text("哪个回答更好？")
    expect(page.locator("#progress")).to_have_text("已标注 0 / 2")
    expect(page.locator("#choose-left")).to_have_text("A 更好 1")
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    assert "撤销上一个标注" in page.locator("footer").inner_text()
    page.keyboard.press("1")
    expect(page.locator("#status")).to_have_text("已保存：A 更好。")
    page.keyboard.press("u")
    expect(page.locator("#status")).to_have_text("已撤销：A 更好。这一条已放回，请重新选择。")
    expect(page.locator("#progress")).to_have_text("已标注 0 / 2")
    assert labels(db) == [] and errors == []
