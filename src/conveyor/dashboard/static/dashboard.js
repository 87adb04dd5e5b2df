// conveyor dashboard: fills <main> from /api/<page> every second (no framework, no CDN).
"use strict";
const config = JSON.parse(document.body.dataset.config);
const main = document.getElementById("main");
let last = "";

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function time(t) { return t ? new Date(t * 1000).toLocaleTimeString() : ""; }
function table(columns, rows, cell) {
  if (!rows.length) return '<p class="muted">none</p>';
  const head = columns.map((c) => `<th>${esc(c)}</th>`).join("");
  const body = rows.map((r) => `<tr>${columns.map((c) => `<td>${cell(r, c)}</td>`).join("")}</tr>`).join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}
function form(action, label, extra = "", cls = "") {
  return `<form method="post" action="${esc(action)}" class="inline"><input type="hidden" name="csrf" value="${esc(config.csrf)}">${extra}<button class="${cls}">${esc(label)}</button></form>`;
}
function taskLink(id) { return `<a href="/tasks?id=${encodeURIComponent(id)}" class="mono">${esc(id)}</a>`; }
function events(rows) {
  return table(["time", "event", "task", "id", "runtime"], rows, (r, c) =>
    c === "time" ? time(r.at) : c === "event" ? `<span class="kind ${esc(r.kind)}">${esc(r.kind)}</span>`
      : c === "id" ? taskLink(r.id) : c === "runtime" ? (r.runtime == null ? "" : r.runtime.toFixed(3) + " s") : esc(r[c]));
}
function queues(rows) {
  return table(["queue", "ready", "scheduled", "in_flight", "dead", "paused", "actions"], rows, (q, c) => {
    if (c === "paused") return q.paused ? '<span class="bad">paused</span>' : "serving";
    if (c !== "actions") return esc(q[c]);
    const base = `/queues/${encodeURIComponent(q.queue)}/`;
    return (q.paused ? form(base + "resume", "Resume") : form(base + "pause", "Pause")) + form(base + "purge", "Purge", "", "danger");
  });
}
function sparkline(counts) {
  const max = Math.max(1, ...counts);
  return `<div class="spark">${counts.map((n) => `<i style="height:${(100 * n) / max}%" title="${n}/s"></i>`).join("")}</div>`;
}

const render = {
  overview: (d) => `<section class="cards">
      <div><b id="succeeded">${d.succeeded_last_minute}</b> succeeded / min</div>
      <div><b id="failed" class="${d.failed_last_minute ? "bad" : ""}">${d.failed_last_minute}</b> failed / min</div>
      <div><b>${d.workers}</b> live worker(s)</div><div class="muted">${esc(d.broker)}</div></section>
    ${sparkline(d.per_second)}<h2>Queues</h2>${queues(d.queues)}<h2>Latest task events</h2><div id="feed">${events(d.events)}</div>`,
  queues: (d) => `<h2>Queues</h2>${queues(d.queues)}<p class="muted">Pausing stops every worker from taking tasks from the queue within a second; running tasks finish.</p>`,
  workers: (d) => `<h2>Workers</h2>` + table(["id", "hostname", "pid", "pool", "concurrency", "queues", "processed", "failed", "heartbeat_age", "running"], d.workers,
    (w, c) => c === "queues" ? esc(w.queues.join(", ")) : c === "running" ? esc(w.running.join(", ")) : c === "heartbeat_age" ? esc(w[c]) + " s" : esc(w[c])),
  tasks: (d) => d.task !== undefined ? taskDetail(d.task) : `<h2>Tasks</h2>
    <form method="get" action="/tasks" class="search"><input name="id" placeholder="task id"><input name="name" placeholder="task name" value="${esc(params.get("name"))}">
    <select name="state"><option value="">any event</option>${["task-succeeded", "task-failed", "task-retried", "task-revoked", "task-dead-lettered", "task-received", "task-started"].map((k) => `<option ${params.get("state") === k ? "selected" : ""}>${k}</option>`).join("")}</select><button>Search</button></form>
    ${events(d.tasks)}`,
  dead: (d) => `<h2>Dead letters</h2><form method="post" action="/dead/requeue" id="dead-form"><input type="hidden" name="csrf" value="${esc(config.csrf)}">` +
    table(["", "id", "task", "queue", "reason", "deliveries", "died", "args"], d.dead_letters, (r, c) =>
      c === "" ? `<input type="checkbox" name="id" value="${esc(r.id)}">` : c === "id" ? taskLink(r.id) : c === "died" ? time(r.dead_at)
        : c === "args" ? `<code>${esc(JSON.stringify(r.args))} ${esc(JSON.stringify(r.kwargs))}</code>` : esc(r[c])) +
    `<button id="requeue">Requeue ticked (all if none)</button> <button formaction="/dead/purge" class="danger">Purge ticked (all if none)</button></form>`,
  periodic: (d) => `<h2>Periodic entries</h2><p>leading beat: <b id="leader">${d.leader ? esc(d.leader) : "none (no beat runs)"}</b></p>` + table(["name", "task", "schedule", "next_run", "last_fired", "missed"], d.periodic, (e, c) => esc(e[c])),
};

function taskDetail(t) {
  if (!t) return '<p class="muted">no record of this task (never run, expired, or unknown id)</p>';
  const errors = (t.errors || []).map((e) => `<h3>attempt ${esc(e.attempt)}: ${esc(e.type)}: ${esc(e.message)}</h3><pre>${esc(e.traceback)}</pre>`).join("");
  const rows = ["id", "task", "state", "attempt", "worker", "progress", "note", "queue", "dead_reason"].filter((k) => t[k] !== undefined && t[k] !== null && t[k] !== "")
    .map((k) => `<tr><th>${k}</th><td>${esc(t[k])}</td></tr>`).join("");
  const args = t.args !== undefined ? `<h3>Arguments</h3><pre>${esc(JSON.stringify({ args: t.args, kwargs: t.kwargs }, null, 2))}</pre>` : "";
  return `<h2>Task</h2><table>${rows}<tr><th>started</th><td>${time(t.started)}</td></tr><tr><th>finished</th><td>${time(t.finished)}</td></tr></table>
    <h3>Result</h3><pre>${esc(JSON.stringify(t.result, null, 2))}</pre>${args}${errors ? "<h2>Attempts that failed</h2>" + errors : ""}`;
}

const params = new URLSearchParams(location.search);
async function refresh() {
  try {
    const response = await fetch(`/api/${config.page}${location.search}`, { credentials: "same-origin" });
    const text = await response.text();
    if (text !== last && !main.contains(document.activeElement) || last === "") {
      last = text;
      main.innerHTML = render[config.page](JSON.parse(text));
    }
  } catch (err) {
    main.insertAdjacentHTML("afterbegin", `<p class="bad">${esc(err)}</p>`);
  }
}
refresh();
setInterval(refresh, 1000);
