"""The labelling page served by `alignkit sxs serve`: HTML, CSS and script (served as /, /sxs.css, /sxs.js).

The script asks for the annotator id once (kept in localStorage), fetches the next item from /api/next, shows
the two answers as "A" (left) and "B" (right) with the model names hidden, and posts each choice to
/api/label; U takes back the latest label made on the page (/api/undo). An access token in the page's address
(`?token=...`) is sent with every API request as the X-Sxs-Token header.

Prompts and answers are rendered as a safe subset of Markdown (fenced code, inline code, bold, italic,
headings, lists, quotes, rules, paragraphs and line breaks, http(s) links): every piece of their text goes
into the page as a text node, never as HTML, so raw HTML in an answer shows as the text it is.

The interface speaks English or Chinese: one table of strings per language (EN, ZH in sxs/strings.py). html(lang) fills them
into the page, and script(lang) puts them in front of the script as `T`, so the server sends a page and a
script in one language and the Content-Security-Policy needs no inline script.
"""

import json
from html import escape

from alignkit.sxs.strings import EN, STRINGS, ZH  # noqa: F401  (the page's strings, one table a language)

# {name}: a string of the page's language, HTML-escaped by html(). No other braces may appear here.
HTML = """<!doctype html>
<html lang="{html_lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/sxs.css">
<script src="/sxs.js" defer></script>
</head>
<body>
<header>
  <h1>{title}</h1>
  <div id="progress-box" hidden>
    <progress id="progress-bar" max="1" value="0"></progress>
    <span id="progress"></span>
    <span class="who">{as} <b id="annotator-name"></b> (<a href="#" id="change-annotator">{change}</a>)</span>
  </div>
</header>

<form id="who" hidden>
  <label for="who-name">{who_label}</label>
  <input id="who-name" maxlength="64" autocomplete="username" required>
  <button type="submit">{start}</button>
</form>

<main id="task" hidden>
  <section class="prompt"><h2>{prompt}</h2><div id="prompt"></div></section>
  <div class="answers">
    <section class="answer"><h2>A</h2><div id="left" class="text md"></div></section>
    <section class="answer"><h2>B</h2><div id="right" class="text md"></div></section>
  </div>
  <div class="choices">
    <button type="button" data-choice="left" id="choose-left">{a_better} <kbd>1</kbd></button>
    <button type="button" data-choice="right" id="choose-right">{b_better} <kbd>2</kbd></button>
    <button type="button" data-choice="tie" id="choose-tie">{tie} <kbd>3</kbd></button>
    <button type="button" data-choice="both_bad" id="choose-both-bad">{both_bad} <kbd>4</kbd></button>
  </div>
  <label for="comment" class="comment-label">{comment_label}</label>
  <textarea id="comment" maxlength="2000" rows="2" placeholder="{comment_placeholder}"></textarea>
</main>

<p id="done" hidden>{done}</p>
<div class="undo-bar">
  <button type="button" id="undo" disabled>{undo} <kbd>U</kbd></button>
  <p id="status" role="status"></p>
</div>

<footer>
  {keys} <kbd>1</kbd> {or} <kbd>A</kbd> {a_better} &middot; <kbd>2</kbd> {or} <kbd>B</kbd> {b_better} &middot;
  <kbd>3</kbd> {or} <kbd>T</kbd> {tie} &middot; <kbd>4</kbd> {or} <kbd>X</kbd> {both_bad} &middot;
  <kbd>U</kbd> {key_undo} &middot;
  <kbd>C</kbd> {key_comment} <kbd>Enter</kbd> {key_enter} (<kbd>Shift</kbd>+<kbd>Enter</kbd> {key_newline}),
  {key_then} {blind_note}
</footer>
</body>
</html>
"""

CSS = """
[hidden]{display:none!important}
body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
header{display:flex;justify-content:space-between;align-items:center;flex-wrap:wrap;gap:1em;margin-bottom:.8em}
h1{font-size:1.4em;margin:.3em 0}h2{font-size:1em;margin:0 0 .4em;color:#555}
#progress-box{display:flex;align-items:center;gap:.6em}.who{color:#666}
.prompt,.answer{border:1px solid #ddd;border-radius:6px;padding:.7em 1em;background:#fafafa}
.prompt{margin-bottom:1em;background:#f1f5fb}
.answers{display:grid;grid-template-columns:1fr 1fr;gap:1em}.answers>section{min-width:0}
@media (max-width:700px){.answers{grid-template-columns:1fr}}
.text,.message{overflow-wrap:anywhere;line-height:1.45}
.role{font-size:.8em;color:#777;text-transform:uppercase}
.md>:first-child{margin-top:0}.md>:last-child{margin-bottom:0}
.md p{margin:.5em 0;white-space:pre-wrap}
.md h3,.md h4,.md h5,.md h6{margin:.8em 0 .3em;color:#222}.md h3{font-size:1.15em}.md h4{font-size:1.05em}
.md h5,.md h6{font-size:1em}
.md pre{background:#f0f0f0;border:1px solid #ddd;border-radius:4px;padding:.5em .7em;overflow-x:auto;
white-space:pre;line-height:1.35}
.md pre[data-lang]::before{content:attr(data-lang);display:block;font-size:.75em;color:#888;margin-bottom:.2em}
.md code{font-family:ui-monospace,monospace;font-size:.92em}
.md :not(pre)>code{background:#e8e8e8;border-radius:3px;padding:0 .25em}
.md ul,.md ol{margin:.4em 0;padding-left:1.6em}.md li>p{margin:.15em 0}
.md blockquote{margin:.5em 0;padding-left:.8em;border-left:3px solid #ccc;color:#555}
.md hr{border:0;border-top:1px solid #ccc}.md a{color:#1a5fb4}
.choices{display:flex;gap:.6em;margin:1em 0 .6em;flex-wrap:wrap}
.choices button,#undo{font-size:1.05em;padding:.5em 1.1em;border-radius:6px;border:1px solid #888;
background:#fff;cursor:pointer}
.choices button:hover,#undo:hover{background:#eef}.choices button:disabled{opacity:.5;cursor:wait}
#undo{font-size:.9em;padding:.3em .8em}#undo:disabled{opacity:.4;cursor:default;background:#fff}
kbd{font-family:ui-monospace,monospace;font-size:.85em;border:1px solid #bbb;border-radius:3px;padding:0 .3em;
background:#f4f4f4}
textarea{width:100%;box-sizing:border-box;font:inherit}.comment-label{font-size:.9em;color:#555}
#who{margin:2em 0;display:flex;gap:.6em;align-items:center;flex-wrap:wrap}#who input{font:inherit;padding:.3em}
.undo-bar{display:flex;align-items:center;gap:1em;margin-top:.6em}
#status{min-height:1.3em;margin:0;color:#2a7a2a}#status.error{color:#c0392b}
footer{margin-top:1.5em;font-size:.85em;color:#666;line-height:1.8}#done{font-size:1.2em}
"""

SCRIPT = """
// T, the interface strings in the page's language, is defined just above this line (page.script).
const TOKEN = new URLSearchParams(location.search).get("token") || "";
const STORE_KEY = "alignkit-sxs-annotator";
const KEYS = {"1": "left", "a": "left", "2": "right", "b": "right", "3": "tie", "t": "tie",
              "4": "both_bad", "x": "both_bad"};
const NAMES = {left: T.a_better, right: T.b_better, tie: T.tie, both_bad: T.both_bad};
const $ = (id) => document.getElementById(id);
let annotator = localStorage.getItem(STORE_KEY) || "";
let current = null;
let busy = false;
// The labels saved from this page since it was opened, latest last ({pair_id, choice}): what U takes back,
// one at a time. The server undoes a label only while it is the annotator's latest.
let undoable = [];

function fmt(template, values) {
  return template.replace(/\\{(\\w+)\\}/g, (all, name) => (name in values ? String(values[name]) : all));
}

// ---- Markdown, a safe subset -------------------------------------------------------------------------------
// Prompts and answers are model output or user data. Every piece of their text is appended as a text node
// (append(string), textContent), never parsed as HTML; elements come only from createElement with this
// code's own tag names, and links only for http(s) addresses. So `<img src=x onerror=...>` in an answer is
// shown as that text, and `2 < 3 > 1` too.

const FENCE = /^( {0,3})(`{3,}|~{3,})[ \\t]*([^\\s`]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})[ \\t]+(.*?)(?:[ \\t]+#+)?[ \\t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \\t]*\\1){2,}[ \\t]*$/;
const ITEM = /^([ \\t]*)([-*+]|(\\d{1,9})[.)])(?:([ \\t]+)(.*))?$/;  // indent, marker, number, gap, text
const QUOTE = /^ {0,3}> ?(.*)$/;
const MAX_DEPTH = 12;  // lists and quotes nested deeper are shown as text: bounded work for any answer

function indentOf(line) {
  let width = 0;
  for (const c of line) {
    if (c === " ") width += 1;
    else if (c === "\\t") width += 4 - (width % 4);
    else break;
  }
  return width;
}

function dedent(line, width) {  // the line less up to `width` columns of leading blanks
  let i = 0;
  for (let w = 0; i < line.length && w < width && (line[i] === " " || line[i] === "\\t"); i += 1) {
    w += line[i] === "\\t" ? 4 - (w % 4) : 1;
  }
  return line.slice(i);
}

function interrupts(line) {  // whether the line starts a block even right after a paragraph's line
  const item = ITEM.exec(line);
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
    (item !== null && item[5] !== undefined && item[5] !== "" && (!item[3] || item[3] === "1"));
}

function renderBlocks(lines, parent, depth = 0) {
  if (depth > MAX_DEPTH) {
    const p = document.createElement("p");
    p.textContent = lines.join("\\n").trim();
    parent.append(p);
    return;
  }
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) i += 1;
    else if ((m = FENCE.exec(line))) i = codeBlock(lines, i, m, parent);
    else if ((m = HEADING.exec(line))) i = heading(i, m, parent);
    else if (RULE.test(line)) i = rule(i, parent);
    else if (QUOTE.test(line)) i = quote(lines, i, parent, depth);
    else if (ITEM.test(line)) i = list(lines, i, parent, depth);
    else i = paragraph(lines, i, parent);
  }
}

function codeBlock(lines, start, m, parent) {
  const [, indent, fence, lang] = m;
  const close = new RegExp("^ {0,3}" + fence[0] + "{" + fence.length + ",}[ \\\\t]*$");
  let end = start + 1;
  while (end < lines.length && !close.test(lines[end])) end += 1;  // unclosed: to the end, as CommonMark
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  code.textContent = lines.slice(start + 1, end).map((line) => dedent(line, indent.length)).join("\\n");
  const name = lang.replace(/[^\\w+#.-]/g, "").slice(0, 30);
  if (name) {
    code.className = "language-" + name;
    pre.dataset.lang = name;  // shown above the code by the style sheet
  }
  pre.append(code);
  parent.append(pre);
  return end + 1;
}

function heading(i, m, parent) {  // # .. ###### -> h3 .. h6: the page's own headings are h1 and h2
  const h = document.createElement("h" + Math.min(m[1].length + 2, 6));
  renderInline(m[2], h);
  parent.append(h);
  return i + 1;
}

function rule(i, parent) {
  parent.append(document.createElement("hr"));
  return i + 1;
}

function quote(lines, start, parent, depth) {
  const inner = [];
  let i = start;
  for (let m; i < lines.length && (m = QUOTE.exec(lines[i])); i += 1) inner.push(m[1]);
  const box = document.createElement("blockquote");
  renderBlocks(inner, box, depth + 1);
  parent.append(box);
  return i;
}

function list(lines, start, parent, depth) {
  // Items are lines with a marker at most as indented as the first one; a line indented further belongs to
  // the item above (nested lists, code), without its indentation, and so does an unindented line straight
  // after the item's text (a lazy continuation). Each item's lines are rendered as blocks of their own.
  const first = ITEM.exec(lines[start]);
  const ordered = first[3] !== undefined;
  const box = document.createElement(ordered ? "ol" : "ul");
  if (ordered && Number(first[3]) !== 1) box.start = Number(first[3]);
  const base = indentOf(first[1]);
  const items = [];
  let i = start;
  for (let blank = false; i < lines.length; i += 1) {
    const line = lines[i];
    const m = ITEM.exec(line);
    const indent = indentOf(line);
    if (m && indent <= base && (m[3] !== undefined) === ordered) {
      const gap = m[4] ? Math.min(m[4].length, 4) : 1;
      items.push({lines: [m[5] || ""], width: indent + m[2].length + gap});
    } else if (!line.trim()) {
      items[items.length - 1].lines.push("");
    } else if (indent > base) {
      const item = items[items.length - 1];
      item.lines.push(dedent(line, item.width));
    } else if (!blank && !interrupts(line)) {
      items[items.length - 1].lines.push(line.trim());
    } else {
      break;
    }
    blank = !line.trim();
  }
  for (const item of items) {
    const li = document.createElement("li");
    renderBlocks(item.lines, li, depth + 1);
    box.append(li);
  }
  parent.append(box);
  return i;
}

function paragraph(lines, start, parent) {  // its line breaks stay line breaks (the style sheet: pre-wrap)
  let end = start + 1;
  while (end < lines.length && lines[end].trim() && !interrupts(lines[end])) end += 1;
  const p = document.createElement("p");
  renderInline(lines.slice(start, end).map((line) => line.trim()).join("\\n"), p);
  parent.append(p);
  return end;
}

const SPECIAL = /[\\\\`*_\\[!]/g;  // where something other than plain text may start
const ESCAPED = /\\\\([!-\\/:-@\\[-`{-~])/y;
const CODE = /(`+)(?!`)([\\s\\S]*?[^`])\\1(?!`)/y;
const TICKS = /`+/y;
// At most 1000 characters between the delimiters: an unmatched one then costs a bounded look-ahead, not a scan to
// the end of the paragraph (thousands of stray asterisks would take seconds).
const EMPHASIS = [["strong", /\\*\\*(?!\\s)([\\s\\S]{0,1000}?\\S)\\*\\*(?!\\*)/y],
                  ["strong", /__(?!\\s)([\\s\\S]{0,1000}?\\S)__(?!_)/y],
                  ["em", /\\*(?![\\s*])([\\s\\S]{0,1000}?[^\\s*])\\*(?!\\*)/y],
                  ["em", /_(?![\\s_])([\\s\\S]{0,1000}?[^\\s_])_(?!_)/y]];
const LINK = /\\[([^\\[\\]\\n]+)\\]\\(\\s*([^\\s()]+)\\s*\\)/y;
const IMAGE = /!\\[[^\\[\\]\\n]*\\]\\([^()\\n]*\\)/y;
const WORD = /[A-Za-z0-9]/;

function at(re, text, i) {
  re.lastIndex = i;
  return re.exec(text);
}

function renderInline(text, parent) {
  let done = 0;  // text before this is in the page
  let i = 0;
  while (i < text.length) {
    SPECIAL.lastIndex = i;
    const found = SPECIAL.exec(text);
    if (!found) break;
    i = found.index;
    const span = inlineAt(text, i);  // [length, node or text] or null: the character is plain text
    if (!span) {
      i += 1;
      continue;
    }
    if (i > done) parent.append(text.slice(done, i));
    parent.append(span[1]);
    i += span[0];
    done = i;
  }
  if (done < text.length) parent.append(text.slice(done));
}

function inlineAt(text, i) {
  const c = text[i];
  let m;
  if (c === "\\\\") return (m = at(ESCAPED, text, i)) ? [2, m[1]] : null;
  if (c === "`") {
    if ((m = at(CODE, text, i))) return [m[0].length, codeSpan(m[2])];
    const ticks = at(TICKS, text, i)[0];
    return [ticks.length, ticks];  // an unmatched run of backticks is text, all of it
  }
  if (c === "*" || c === "_") {
    // Not inside a word: 2*3*4, x**2 and snake_case_name stay as they are.
    if (WORD.test(text[i - 1] || "")) return null;
    for (const [tag, re] of EMPHASIS) {
      if ((m = at(re, text, i)) && !WORD.test(text[i + m[0].length] || "")) {
        return [m[0].length, element(tag, m[1])];
      }
    }
    return null;
  }
  if (c === "[" && (m = at(LINK, text, i))) {
    const a = link(m[1], m[2]);
    return a ? [m[0].length, a] : null;
  }
  if (c === "!" && (m = at(IMAGE, text, i))) return [m[0].length, m[0]];  // never loaded: shown as text
  return null;
}

function element(tag, inner) {
  const el = document.createElement(tag);
  renderInline(inner, el);
  return el;
}

function codeSpan(inner) {
  let text = inner.replace(/\\n/g, " ");
  if (/^ [\\s\\S]* $/.test(text) && text.trim()) text = text.slice(1, -1);
  const code = document.createElement("code");
  code.textContent = text;
  return code;
}

function link(label, url) {  // an <a> for an http(s) address; null (the markdown stays text) for any other
  let parsed;
  try {
    parsed = new URL(url);
  } catch (e) {
    return null;
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return null;
  const a = element("a", label);
  a.href = parsed.href;
  a.title = parsed.href;
  a.rel = "noopener noreferrer";
  a.target = "_blank";
  return a;
}

function renderMarkdown(text, box) {
  box.replaceChildren();
  try {
    renderBlocks(String(text).replace(/\\r\\n?/g, "\\n").split("\\n"), box);
  } catch (e) {  // a bug here must not hide an answer: then it is shown as it is, still only as text
    const p = document.createElement("p");
    p.textContent = text;
    box.replaceChildren(p);
  }
}

// ---- The page ------------------------------------------------------------------------------------------------

async function api(path, body) {
  const headers = {"Content-Type": "application/json"};
  if (TOKEN) headers["X-Sxs-Token"] = TOKEN;
  const init = body === undefined ? {headers} : {method: "POST", headers, body: JSON.stringify(body)};
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.error || response.status + " " + response.statusText);
    error.status = response.status;
    throw error;
  }
  return data;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function setBusy(flag) {
  busy = flag;
  document.querySelectorAll(".choices button").forEach((b) => { b.disabled = flag; });
  $("undo").disabled = flag || undoable.length === 0;
}

function showProgress(labelled, total) {
  $("progress").textContent = fmt(T.progress, {labelled, total});
  $("progress-bar").max = total;
  $("progress-bar").value = labelled;
  $("annotator-name").textContent = annotator;
  $("progress-box").hidden = false;
}

function showPrompt(messages) {
  const box = $("prompt");
  box.replaceChildren();
  const plain = messages.length === 1 && messages[0].role === "user";
  for (const m of messages) {
    if (!plain) {
      const role = document.createElement("div");
      role.className = "role";
      role.textContent = m.role;
      box.append(role);
    }
    const text = document.createElement("div");
    text.className = "message md";
    renderMarkdown(m.content, text);
    box.append(text);
  }
}

function show(data) {  // an answer of /api/next or /api/undo
  showProgress(data.labelled, data.total);
  current = data.done ? null : data;
  $("task").hidden = data.done;
  $("done").hidden = !data.done;
  if (data.done) return;
  showPrompt(data.prompt);
  renderMarkdown(data.left, $("left"));
  renderMarkdown(data.right, $("right"));
  $("comment").value = data.comment || "";  // an undone label gives its comment back
  window.scrollTo(0, 0);
}

async function loadNext() {
  show(await api("/api/next?annotator=" + encodeURIComponent(annotator)));
}

async function choose(choice) {
  if (!current || busy) return;
  setBusy(true);
  try {
    await api("/api/label", {annotator, pair_id: current.pair_id, choice, comment: $("comment").value});
    undoable.push({pair_id: current.pair_id, choice});
  } catch (e) {
    status(fmt(T.not_saved, {error: e.message}), true);
    setBusy(false);
    return;
  }
  try {  // "Saved" once the next item is up, so the page is ready for the next key (U included)
    await loadNext();
    status(fmt(T.saved, {choice: NAMES[choice]}));
  } catch (e) {
    status(e.message, true);  // saved, but the next item did not load
  } finally {
    setBusy(false);
  }
}

async function undo() {
  if (busy) return;
  const last = undoable[undoable.length - 1];
  if (!last) {
    status(T.nothing_to_undo, true);
    return;
  }
  setBusy(true);
  try {
    show(await api("/api/undo", {annotator, pair_id: last.pair_id}));
    undoable.pop();
    status(fmt(T.undone, {choice: NAMES[last.choice]}));
  } catch (e) {
    // 409: that label is no longer the annotator's latest (another tab labelled since): nothing here is.
    if (e.status === 409) undoable = [];
    status(fmt(T.not_undone, {error: e.message}), true);
  } finally {
    setBusy(false);
  }
}

function askWho() {
  undoable = [];  // another annotator's labels are not theirs to undo
  setBusy(false);
  $("task").hidden = true;
  $("done").hidden = true;
  $("who").hidden = false;
  $("who-name").value = annotator;
  $("who-name").focus();
}

async function start() {
  $("who").hidden = true;
  try {
    await loadNext();
    status("");
  } catch (e) {
    status(e.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("who").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("who-name").value.trim();
    if (!name) return;
    annotator = name;
    localStorage.setItem(STORE_KEY, annotator);
    start();
  });
  $("change-annotator").addEventListener("click", (e) => { e.preventDefault(); askWho(); });
  document.querySelectorAll(".choices button").forEach((b) => {
    b.addEventListener("click", () => choose(b.dataset.choice));
  });
  $("undo").addEventListener("click", () => undo());
  $("comment").addEventListener("keydown", (e) => {
    if ((e.key === "Enter" && !e.shiftKey) || e.key === "Escape") {
      e.preventDefault();
      $("comment").blur();
      status($("comment").value.trim() ? T.comment_ready : "");
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.closest("textarea, input") || e.ctrlKey || e.metaKey || e.altKey) return;
    const key = e.key.toLowerCase();
    if (key === "u" && $("who").hidden) {  // also on the "all labelled" screen, after the last item
      e.preventDefault();
      undo();
    } else if (!current) {
      return;
    } else if (key === "c") {
      e.preventDefault();
      $("comment").focus();
    } else if (KEYS[key]) {
      e.preventDefault();
      choose(KEYS[key]);
    }
  });
  if (annotator) start(); else askWho();
});
"""


def html(lang: str) -> str:
    """The page in this language ("en" or "zh"): every string escaped for HTML."""
    return HTML.format_map({name: escape(text) for name, text in STRINGS[lang].items()})


def script(lang: str) -> str:
    """The script with this language's strings in front of it as T (JSON is a JavaScript expression)."""
    return '"use strict";\nconst T = ' + json.dumps(STRINGS[lang], ensure_ascii=False) + ";\n" + SCRIPT
