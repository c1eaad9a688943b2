"""The labelling page served by `alignkit sxs serve`: HTML, CSS and script (served as /, /sxs.css, /sxs.js).

The script asks for the annotator id once (kept in localStorage), fetches the next item from /api/next, shows
the two answers as "A" (left) and "B" (right) with the model names hidden, and posts each choice to
/api/label. An access token in the page's address (`?token=...`) is sent with every API request as the
X-Sxs-Token header. Text is inserted with textContent only, never as HTML.
"""

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Which answer is better?</title>
<link rel="stylesheet" href="/sxs.css">
<script src="/sxs.js" defer></script>
</head>
<body>
<header>
  <h1>Which answer is better?</h1>
  <div id="progress-box" hidden>
    <progress id="progress-bar" max="1" value="0"></progress>
    <span id="progress">0 of 0 labelled</span>
    <span class="who">as <b id="annotator-name"></b> (<a href="#" id="change-annotator">change</a>)</span>
  </div>
</header>

<form id="who" hidden>
  <label for="who-name">Your name or annotator id (asked once, kept in this browser):</label>
  <input id="who-name" maxlength="64" autocomplete="username" required>
  <button type="submit">Start</button>
</form>

<main id="task" hidden>
  <section class="prompt"><h2>Prompt</h2><div id="prompt"></div></section>
  <div class="answers">
    <section class="answer"><h2>A</h2><div id="left" class="text"></div></section>
    <section class="answer"><h2>B</h2><div id="right" class="text"></div></section>
  </div>
  <div class="choices">
    <button type="button" data-choice="left" id="choose-left">A better <kbd>1</kbd></button>
    <button type="button" data-choice="right" id="choose-right">B better <kbd>2</kbd></button>
    <button type="button" data-choice="tie" id="choose-tie">Tie <kbd>3</kbd></button>
    <button type="button" data-choice="both_bad" id="choose-both-bad">Both bad <kbd>4</kbd></button>
  </div>
  <label for="comment" class="comment-label">Comment (optional, sent with your choice):</label>
  <textarea id="comment" maxlength="2000" rows="2" placeholder="Why? (press C to type here)"></textarea>
</main>

<p id="done" hidden>All items are labelled. Thank you!</p>
<p id="status" role="status"></p>

<footer>
  Keys: <kbd>1</kbd> or <kbd>A</kbd> A better &middot; <kbd>2</kbd> or <kbd>B</kbd> B better &middot;
  <kbd>3</kbd> or <kbd>T</kbd> tie &middot; <kbd>4</kbd> or <kbd>X</kbd> both bad &middot;
  <kbd>C</kbd> write a comment, <kbd>Enter</kbd> to finish it (<kbd>Shift</kbd>+<kbd>Enter</kbd> for a new line),
  then choose. The order of the answers is random; model names are hidden.
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
.answers{display:grid;grid-template-columns:1fr 1fr;gap:1em}
@media (max-width:700px){.answers{grid-template-columns:1fr}}
.text,.message{white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.4}
.role{font-size:.8em;color:#777;text-transform:uppercase}
.choices{display:flex;gap:.6em;margin:1em 0 .6em;flex-wrap:wrap}
.choices button{font-size:1.05em;padding:.5em 1.1em;border-radius:6px;border:1px solid #888;background:#fff;
cursor:pointer}
.choices button:hover{background:#eef}.choices button:disabled{opacity:.5;cursor:wait}
kbd{font-family:ui-monospace,monospace;font-size:.85em;border:1px solid #bbb;border-radius:3px;padding:0 .3em;
background:#f4f4f4}
textarea{width:100%;box-sizing:border-box;font:inherit}.comment-label{font-size:.9em;color:#555}
#who{margin:2em 0;display:flex;gap:.6em;align-items:center;flex-wrap:wrap}#who input{font:inherit;padding:.3em}
#status{min-height:1.3em;color:#2a7a2a}#status.error{color:#c0392b}
footer{margin-top:1.5em;font-size:.85em;color:#666;line-height:1.8}#done{font-size:1.2em}
"""

SCRIPT = """
"use strict";
const TOKEN = new URLSearchParams(location.search).get("token") || "";
const STORE_KEY = "alignkit-sxs-annotator";
const KEYS = {"1": "left", "a": "left", "2": "right", "b": "right", "3": "tie", "t": "tie",
              "4": "both_bad", "x": "both_bad"};
const NAMES = {left: "A better", right: "B better", tie: "Tie", both_bad: "Both bad"};
const $ = (id) => document.getElementById(id);
let annotator = localStorage.getItem(STORE_KEY) || "";
let current = null;
let busy = false;

async function api(path, body) {
  const headers = {"Content-Type": "application/json"};
  if (TOKEN) headers["X-Sxs-Token"] = TOKEN;
  const init = body === undefined ? {headers} : {method: "POST", headers, body: JSON.stringify(body)};
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.status + " " + response.statusText);
  return data;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function showProgress(labelled, total) {
  $("progress").textContent = labelled + " of " + total + " labelled";
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
    text.className = "message";
    text.textContent = m.content;
    box.append(text);
  }
}

async function loadNext() {
  const data = await api("/api/next?annotator=" + encodeURIComponent(annotator));
  showProgress(data.labelled, data.total);
  current = data.done ? null : data;
  $("task").hidden = data.done;
  $("done").hidden = !data.done;
  if (data.done) return;
  showPrompt(data.prompt);
  $("left").textContent = data.left;
  $("right").textContent = data.right;
  $("comment").value = "";
  window.scrollTo(0, 0);
}

async function choose(choice) {
  if (!current || busy) return;
  busy = true;
  document.querySelectorAll(".choices button").forEach((b) => { b.disabled = true; });
  try {
    await api("/api/label", {annotator, pair_id: current.pair_id, choice, comment: $("comment").value});
    status("Saved: " + NAMES[choice] + ".");
    await loadNext();
  } catch (e) {
    status("Not saved: " + e.message, true);
  } finally {
    busy = false;
    document.querySelectorAll(".choices button").forEach((b) => { b.disabled = false; });
  }
}

function askWho() {
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
  $("comment").addEventListener("keydown", (e) => {
    if ((e.key === "Enter" && !e.shiftKey) || e.key === "Escape") {
      e.preventDefault();
      $("comment").blur();
      status($("comment").value.trim() ? "Comment ready: now choose (1-4)." : "");
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.closest("textarea, input") || e.ctrlKey || e.metaKey || e.altKey || !current) return;
    const key = e.key.toLowerCase();
    if (key === "c") {
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
