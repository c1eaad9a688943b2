"""The labelling page's Markdown renderer in a real headless Chromium (Playwright), on the page as the server
sends it (its Content-Security-Policy in force): Markdown in, the DOM it builds out, compared as HTML. Raw HTML
in an answer must come out as text.

Needs Debian's chromium and the `playwright` package, like test_sxs_browser.py; skipped without them.
"""

import threading

import pytest

from alignkit.sxs.items import load_items
from alignkit.sxs.server import make_server
from conftest import write_jsonl

from browser_testing import ARGS, CHROMIUM, sync_api  # skips this module without a browser


@pytest.fixture(scope="module")
def render(tmp_path_factory):
    """render(markdown) -> the innerHTML of the element renderMarkdown fills, on the served page."""
    tmp = tmp_path_factory.mktemp("sxs-page")
    items = load_items(str(write_jsonl(tmp / "items.jsonl", [
        {"prompt": "p", "model_a": "x", "answer_a": "1", "model_b": "y", "answer_b": "2"}])))
    server = make_server(items, tmp / "labels.sqlite", "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (errors.append("dialog: " + d.message), d.dismiss()))
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_function("typeof renderMarkdown === 'function'")

            def render(markdown: str) -> str:
                html = page.evaluate("""(text) => {
                    const box = document.createElement("div");
                    document.body.append(box);  // in the document: an <img> there would load, onerror would run
                    renderMarkdown(text, box);
                    return box.innerHTML;
                }""", markdown)
                page.wait_for_timeout(50)
                assert errors == [] and page.evaluate("window.pwned") is None
                return html

            render.page = page
            yield render
        finally:
            browser.close()
            server.shutdown()
            server.server_close()


LINK = '<a href="https://example.com/a?b=1&amp;c=2" title="https://example.com/a?b=1&amp;c=2" ' \
       'rel="noopener noreferrer" target="_blank">the <strong>docs</strong></a>'


@pytest.mark.parametrize("markdown, html", [
    # code
    ("```python\nif a < b:\n    print('<b>**x**</b>')\n```",
     '<pre data-lang="python"><code class="language-python">if a &lt; b:\n    print(\'&lt;b&gt;**x**&lt;/b&gt;\')'
     '</code></pre>'),
    ("~~~\nplain\n~~~", "<pre><code>plain</code></pre>"),
    ("```\nnever closed\n\nstill code", "<pre><code>never closed\n\nstill code</code></pre>"),
    ("Run:\n```sh\nls\n```\nthen",
     '<p>Run:</p><pre data-lang="sh"><code class="language-sh">ls</code></pre><p>then</p>'),
    ("Use `a<b>` or ``x ` y``.", "<p>Use <code>a&lt;b&gt;</code> or <code>x ` y</code>.</p>"),
    ("an unmatched ``` run", "<p>an unmatched ``` run</p>"),
    # emphasis, and what must not become emphasis
    ("**bold**, *italic*, __bold__, _italic_, ***both***",
     "<p><strong>bold</strong>, <em>italic</em>, <strong>bold</strong>, <em>italic</em>, "
     "<strong><em>both</em></strong></p>"),
    ("*a **b** c*", "<p><em>a <strong>b</strong> c</em></p>"),
    ("这是**重要**的", "<p>这是<strong>重要</strong>的</p>"),
    ("2*3*4 = 24, x**2**y, 2 * 3 * 4, snake_case_name", "<p>2*3*4 = 24, x**2**y, 2 * 3 * 4, snake_case_name</p>"),
    ("So 2*3*. And x**2**. And my_var_.", "<p>So 2*3*. And x**2**. And my_var_.</p>"),
    (r"\*not italic\*", "<p>*not italic*</p>"),
    # blocks
    ("# One\n## Two\n### Three ###\n#hashtag", "<h3>One</h3><h4>Two</h4><h5>Three</h5><p>#hashtag</p>"),
    ("line one\nline two\n\nnext paragraph", "<p>line one\nline two</p><p>next paragraph</p>"),
    ("Steps:\n- a\n- *b*", "<p>Steps:</p><ul><li><p>a</p></li><li><p><em>b</em></p></li></ul>"),
    ("1. one\n2. two", "<ol><li><p>one</p></li><li><p>two</p></li></ol>"),
    ("3) three\n4) four", '<ol start="3"><li><p>three</p></li><li><p>four</p></li></ol>'),
    ("1. **Step**\n   - detail\n     more\n2. next",
     "<ol><li><p><strong>Step</strong></p><ul><li><p>detail\nmore</p></li></ul></li><li><p>next</p></li></ol>"),
    ("- item\n  ```\n  code\n  ```", "<ul><li><p>item</p><pre><code>code</code></pre></li></ul>"),
    ("The sum is\n2. Done", "<p>The sum is\n2. Done</p>"),  # only a list starting at 1 breaks a paragraph
    ("> quoted **b**\n> more", "<blockquote><p>quoted <strong>b</strong>\nmore</p></blockquote>"),
    ("a\n\n---\n\nb", "<p>a</p><hr><p>b</p>"),
    # links: http(s) only
    ("[the **docs**](https://example.com/a?b=1&c=2)", f"<p>{LINK}</p>"),
    ("[x](javascript:alert(1)) [y](javascript:void%200) [z](data:text/html,hi) [w](/relative)",
     "<p>[x](javascript:alert(1)) [y](javascript:void%200) [z](data:text/html,hi) [w](/relative)</p>"),
    ("![logo](https://example.com/logo.png)", "<p>![logo](https://example.com/logo.png)</p>"),
    # raw HTML is text
    ("<img src=x onerror=window.pwned=1>", "<p>&lt;img src=x onerror=window.pwned=1&gt;</p>"),
    ("<script>window.pwned = 1</script>\n<b>not bold</b>",
     "<p>&lt;script&gt;window.pwned = 1&lt;/script&gt;\n&lt;b&gt;not bold&lt;/b&gt;</p>"),
    ("# <img src=x onerror=window.pwned=1>", "<h3>&lt;img src=x onerror=window.pwned=1&gt;</h3>"),
    ("- `<svg onload=window.pwned=1>`", "<ul><li><p><code>&lt;svg onload=window.pwned=1&gt;</code></p></li></ul>"),
    ("[<img src=x onerror=window.pwned=1>](https://example.com/)",
     '<p><a href="https://example.com/" title="https://example.com/" rel="noopener noreferrer" target="_blank">'
     "&lt;img src=x onerror=window.pwned=1&gt;</a></p>"),
    ("2 < 3 > 1 & 1 <= 2", "<p>2 &lt; 3 &gt; 1 &amp; 1 &lt;= 2</p>"),
])
def test_markdown_renders_to_safe_elements(render, markdown, html):
    assert render(markdown) == html


def test_deep_nesting_and_long_answers_still_render(render):
    # Lists and quotes nest at most 12 deep (the rest is text), so no answer costs more than 13 passes.
    nested = render("".join(" " * (2 * i) + f"- level {i}\n" for i in range(40)))
    assert nested.count("<ul>") == 13 and "- level 39" in nested
    assert render(">" * 5000 + " deep").count("<blockquote>") == 13
    long = render(("**a** *b* `c` 2*3 [d](https://e.com/) " * 2000 + "\n") * 5 + "*a " * 20000)
    assert long.count("<strong>") == 10000 and long.count("<a ") == 10000


def test_an_answer_the_renderer_fails_on_is_shown_as_text(render):
    render.page.evaluate("() => { window.saved = renderBlocks; renderBlocks = () => { throw new Error('bug'); }; }")
    try:
        assert render("**<b>x</b>**\n- y") == "<p>**&lt;b&gt;x&lt;/b&gt;**\n- y</p>"
    finally:
        render.page.evaluate("() => { renderBlocks = window.saved; }")
    assert render("**x**") == "<p><strong>x</strong></p>"
