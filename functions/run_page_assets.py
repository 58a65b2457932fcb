"""The live run page's HTML and script (functions/run_page.py serves them). The script fetches
/api/page/state every 2 s and writes text nodes only: nothing from the data becomes markup."""
from __future__ import annotations

import html

_STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
.failed{color:#a00}.succeeded{color:#070}.muted{color:#777}"""

PAGE_HTML = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Clean room: your runs</title>
<style>{_STYLE}</style></head>
<body>
<h1>Clean room: your contracts and runs</h1>
<p id="party" class="muted"></p>
<p id="connection" class="muted">loading…</p>
<h2>Contracts</h2>
<table><thead><tr><th>contract</th><th>your role</th><th>purpose</th><th>accepted</th></tr></thead>
<tbody id="contracts"></tbody></table>
<h2>Runs</h2>
<div id="runs"></div>
<script src="/api/page/app.js"></script>
</body></html>
"""

PAGE_SCRIPT = r"""'use strict';
const REFRESH_MS = 2000;
const FETCH_TIMEOUT_MS = 10000;
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function row(cells) {
  const tr = el('tr');
  for (const cell of cells) tr.appendChild(el('td', cell === null || cell === undefined ? '' : cell));
  return tr;
}
function progressText(progress) {
  if (!progress) return null;
  return 'epoch ' + progress.epoch + ' of ' + progress.epochs + ', epsilon spent so far ' +
    Number(progress.epsilon_spent).toFixed(3) + ' (at ' + progress.at + ')';
}
function renderRun(run) {
  const box = el('section');
  box.dataset.runId = run.run_id;
  box.appendChild(el('h3', run.run_id + ' (contract ' + run.contract_id + ')'));
  box.appendChild(el('p', 'status: ' + run.status + ', phase: ' + run.phase, 'state ' + (run.status || '')));
  const progress = progressText(run.progress);
  if (progress) box.appendChild(el('p', 'training: ' + progress, 'progress'));
  if (run.status === 'failed') box.appendChild(el('p', 'failed in ' + (run.failed_phase || run.phase) + ': ' +
    (run.reason || 'no reason recorded'), 'failed'));
  if (run.status === 'succeeded' && run.output_blob) box.appendChild(el('p', 'output: ' + run.output_blob));
  if (run.privacy_budget_spent) {
    const spent = Object.entries(run.privacy_budget_spent).map(([k, v]) => k + ' ' + Number(v).toFixed(3));
    box.appendChild(el('p', 'privacy budget spent: ' + spent.join(', ')));
  }
  const table = el('table');
  const head = el('tr');
  for (const name of ['phase', 'started', 'ended']) head.appendChild(el('th', name));
  table.appendChild(head);
  const phases = Object.entries(run.phases || {}).sort((a, b) => (a[1].started || '').localeCompare(b[1].started || ''));
  for (const [name, times] of phases) table.appendChild(row([name, times.started, times.ended]));
  box.appendChild(table);
  return box;
}
function render(state) {
  document.getElementById('party').textContent = 'signed in as ' + state.party;
  const contracts = document.getElementById('contracts');
  contracts.replaceChildren(...state.contracts.map(c => row([c.contract_id, c.role, c.purpose, c.accepted])));
  const runs = document.getElementById('runs');
  if (!state.runs.length) runs.replaceChildren(el('p', 'no runs yet', 'muted'));
  else runs.replaceChildren(...state.runs.map(renderRun));
}
async function refresh() {
  const connection = document.getElementById('connection');
  try {
    // a request the host never answers (it died holding it) must not stop the page's refreshes
    const response = await fetch('/api/page/state', {credentials: 'same-origin', cache: 'no-store',
                                                     signal: AbortSignal.timeout(FETCH_TIMEOUT_MS)});
    if (response.status === 401) {
      connection.textContent = 'signed out (session expired): run `ccr page` for a new link';
      return;
    }
    if (!response.ok) throw new Error('HTTP ' + response.status);
    render(await response.json());
    connection.textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (problem) {
    connection.textContent = 'cannot reach the clean room (' + problem.message + '); retrying';
  }
  setTimeout(refresh, REFRESH_MS);
}
refresh();
"""


def message_html(message: str) -> str:
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Clean room</title></head>"
            f"<body><p>{html.escape(message)}</p></body></html>")
