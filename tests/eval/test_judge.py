"""`alignkit eval judge` against stand-in judges served over HTTP on 127.0.0.1, and the verdict/rating parsers."""

import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignkit.cli import main
from alignkit.eval.judge import outcome, parse_rating, parse_verdict
from conftest import write_jsonl


@contextlib.contextmanager
def judge_server(reply):
    """An OpenAI-compatible chat endpoint whose answer is reply(request body); yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            payload = json.dumps({"id": "chatcmpl-test", "object": "chat.completion", "created": 0,
                                  "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": reply(body)}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _answer(body, letter):
    text = body["messages"][-1]["content"]
    start, end = rf"\[The Start of Assistant {letter}'s Answer\]", rf"\[The End of Assistant {letter}'s Answer\]"
    return re.search(start + r"\n(.*?)\n" + end, text, re.S).group(1)


def prefer_longer(body):
    a, b = _answer(body, "A"), _answer(body, "B")
    return "Longer is better. [[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"


PROMPTS = ["Name a fruit.", "Name a colour.", "Name a river.", "Name a planet."]


def _answer_files(tmp_path, first, second):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": p, "answer": x} for p, x in zip(PROMPTS, first)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"question": p, "response": x} for p, x in zip(PROMPTS, second)])
    return str(a), str(b)


def _pairwise(url, a, b, out, *extra):
    main(["eval", "judge", "pairwise", "--answers", a, "--answers", b, "--judge-url", url, "--judge-model", "stand-in",
          "--out", str(out), *extra])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text())["metrics"]


def test_a_judge_that_always_says_a_gives_only_ties(tmp_path):
    """Position bias in its purest form: 'A' in both orders means model 1 wins once and loses once: a tie."""
    a, b = _answer_files(tmp_path, ["apple", "red", "Nile", "Mars"], ["a pear", "blue", "Danube", "Venus"])
    with judge_server(lambda body: "[[A]]") as url:
        rows, metrics = _pairwise(url, a, b, tmp_path / "out")
    assert [r["outcome"] for r in rows] == ["tie"] * 4
    assert (metrics["wins"], metrics["ties"], metrics["losses"], metrics["unparseable"]) == (0, 4, 0, 0)
    assert metrics["position_flips"] == 4
    assert metrics["win_rate"] == metrics["win_rate_low"] == metrics["win_rate_high"] == 0.5


def test_a_judge_preferring_longer_answers_picks_them_in_both_orders(tmp_path):
    """Model 1 is longer on three prompts, model 2 on one: 3 wins, 1 loss, win rate 3/4."""
    a, b = _answer_files(tmp_path, ["a ripe apple", "deep red", "the Nile", "Mars"],
                         ["pear", "blue", "Po", "planet Venus"])
    with judge_server(prefer_longer) as url:
        rows, metrics = _pairwise(url, a, b, tmp_path / "out")
    assert [r["outcome"] for r in rows] == ["win", "win", "win", "loss"]
    assert [(r["verdict_first"], r["verdict_swapped"]) for r in rows[:3]] == [("A", "B")] * 3
    assert (metrics["wins"], metrics["ties"], metrics["losses"]) == (3, 0, 1)
    assert metrics["win_rate"] == 0.75 and metrics["win_rate_low"] <= 0.75 <= metrics["win_rate_high"]


def test_unparseable_verdicts_are_retried_and_none_read_is_an_error(tmp_path, capsys):
    """The stand-in mumbles at temperature 0 and answers on a sampled retry: one retry recovers every verdict;
    with none allowed, no verdict is read at all, which is an error, not a win rate of 0.5 made of ties."""
    a, b = _answer_files(tmp_path, ["a ripe apple", "deep red", "the Nile", "Mars"],
                         ["pear", "blue", "Po", "planet Venus"])
    mumble = lambda body: "Hmm, hard to say." if body["temperature"] == 0 else prefer_longer(body)  # noqa: E731
    with judge_server(mumble) as url:
        rows, metrics = _pairwise(url, a, b, tmp_path / "retried", "--retries", "1")
        assert (metrics["wins"], metrics["losses"], metrics["unparseable"]) == (3, 1, 0)
        assert all(r["attempts"] == 4 for r in rows)  # two per order
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            _pairwise(url, a, b, tmp_path / "not-retried", "--retries", "0")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert "judge stand-in" in err and "readable verdict" in err and "Hmm, hard to say." in err
    assert not (tmp_path / "not-retried" / "summary.json").exists()


def test_some_unparseable_verdicts_are_counted_apart_as_ties(tmp_path):
    """The stand-in never gives a verdict on the river: that prompt is unparseable, reported on its own and
    scored as a tie; the other three are judged (two wins, one loss)."""
    a, b = _answer_files(tmp_path, ["a ripe apple", "deep red", "the Nile", "Mars"],
                         ["pear", "blue", "Po", "planet Venus"])
    river = lambda body: "Rivers, hmm." if "river" in body["messages"][-1]["content"] else prefer_longer(body)  # noqa
    with judge_server(river) as url:
        rows, metrics = _pairwise(url, a, b, tmp_path / "out", "--retries", "1")
    assert [r["outcome"] for r in rows] == ["win", "win", "unparseable", "loss"]
    assert (metrics["wins"], metrics["ties"], metrics["losses"], metrics["unparseable"]) == (2, 0, 1, 1)
    assert metrics["win_rate"] == (2 + 0.5) / 4


def test_single_grading_and_answers_from_a_local_model(tiny_model, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    out = tmp_path / "single"
    with judge_server(lambda body: "Clear and correct. Rating: [[8]]") as url:
        main(["eval", "judge", "single", "--model", str(tiny_model), "--prompts", str(prompts), "--max-new-tokens", "4",
              "--judge-url", url, "--judge-model", "stand-in", "--lang", "zh", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["prompt"] for r in rows] == PROMPTS and all(r["rating"] == 8.0 for r in rows)
    assert summary["metrics"]["mean_rating"] == 8.0 and summary["metrics"]["rated"] == 4


@pytest.mark.parametrize("text, rating", [
    ("Rating: [[7]]", 7), ("[[7]]", 7), ("7/10", 7), ("Score: 7", 7), ("I'd give it 8 out of 10.", 8),
    ("评分：[[6]]", 6), ("得分：9", 9), ("9", 9), ("A fine answer. Rating: 8.5/10", 8.5),
    ("Rating: [[11]]", None), ("No rating here.", None), ("", None),
])
def test_parse_rating(text, rating):
    assert parse_rating(text) == rating


@pytest.mark.parametrize("text, verdict", [
    ("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie"), ("[[tie]]", "tie"), ("My final verdict is [[B]].", "B"),
    ("Verdict: A", "A"), ("Final verdict: tie", "tie"), ("The verdict is a tie.", "tie"),
    ("Assistant A is better.", "A"), ("Assistant B's answer is better", "B"), ("Assistant A wins", "A"),
    ("A", "A"), ("**B**", "B"), ("It's a tie.", "tie"), ("助手A更好", "A"), ("结论：B", "B"), ("平局", "tie"),
    ("I cannot decide.", None), ("Both answers are fine.", None), ("", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_outcome_needs_both_orders_to_agree():
    assert outcome("A", "B") == "win"  # model 1 preferred when shown first and when shown second
    assert outcome("B", "A") == "loss"
    assert outcome("A", "A") == outcome("A", "tie") == outcome("tie", "tie") == "tie"
    assert outcome(None, "B") == outcome("A", None) == "unparseable"


@pytest.mark.parametrize("rows, expected", [
    ([{"prompt": "Name a fruit.", "answer": "apple"}, {"prompt": "Name a colour."}],
     r"a\.jsonl: row 2: field 'answer'"),
    ([{"prompt": "Name a fruit.", "answer": "apple"}, '{"prompt": '], r"a\.jsonl: row 2: malformed JSON"),
    ([{"answer": "apple"}], r"a\.jsonl: row 1: field 'prompt': missing"),
])
def test_bad_answer_files_are_one_line_errors(tmp_path, capsys, rows, expected):
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    with pytest.raises(SystemExit) as e:
        main(["eval", "judge", "single", "--answers", str(a), "--judge-url", "http://127.0.0.1:9/v1",
              "--judge-model", "x", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and re.search(expected, err), err


def test_pairwise_needs_two_sides(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "answer": "x"}])
    with pytest.raises(SystemExit):
        main(["eval", "judge", "pairwise", "--answers", str(a), "--judge-local", "x", "--out", str(tmp_path)])
    assert "pairwise needs 2 --answers file(s)" in capsys.readouterr().err
