// The ops page: polls /ops/api/* with the admin key from this tab's sessionStorage and draws
// what it reads. Every job field is written with textContent (never innerHTML): job fields are
// anyone's writing. Charts are plain SVG built with the DOM. No cookies; every call sends the
// key and the X-LVM-Ops header a cross-site form cannot send.
"use strict";

const POLL_MS = 2000;
const DEPTH_POINTS = 150; // the queue-depth chart keeps the last 5 minutes of polls
const SVG = "http://www.w3.org/2000/svg";
const depthHistory = new Map(); // queue -> [depth, ...]
const latencyHistory = new Map(); // queue -> {p50: [ms, ...], p99: [ms, ...]} end to end, per poll
let inspected = null;
let timer = null;

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
  }
  return node;
}

function say(text) {
  $("status").textContent = text;
}

function tell(text) { // an action's outcome: stays until the next action
  $("result").textContent = text;
}

async function api(path, method = "GET", body = undefined) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem("lvmq-admin-key"), "X-LVM-Ops": "1" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch("/ops/api" + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "omit",
  });
  const data = await reply.json().catch(() => ({}));
  if (!reply.ok) {
    if (reply.status === 401 || reply.status === 403) {
      sessionStorage.removeItem("lvmq-admin-key");
      $("main").hidden = true;
      $("login").hidden = false;
    }
    throw new Error(data.message || ("HTTP " + reply.status));
  }
  return data;
}

function line(svg, values, max, cls, width, height) {
  const n = values.length;
  const points = values.map((v, i) => {
    const x = n > 1 ? (i * width) / (n - 1) : 0;
    const y = height - 12 - ((height - 22) * v) / (max || 1);
    return x.toFixed(1) + "," + y.toFixed(1);
  });
  const poly = document.createElementNS(SVG, "polyline");
  poly.setAttribute("class", cls);
  poly.setAttribute("points", points.join(" "));
  poly.dataset.values = values.join(",");
  svg.append(poly);
}

function chart(title, series) {
  const width = 360, height = 90;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  for (const s of series) line(svg, s.values, max, s.cls, width, height);
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", "4");
  label.setAttribute("y", "10");
  label.textContent = `${title} (max ${max})`;
  svg.append(label);
  return svg;
}

function ms(v) {
  return v == null ? "–" : v.toFixed(1);
}

function pauseControls(q, model) {
  if (q.paused) {
    return el("p", {}, el("span", { class: "paused" }, "PAUSED"), ` by ${q.paused.by}: ${q.paused.reason} `,
      el("button", { type: "button", onclick: () => act(`/queues/${encodeURIComponent(model)}/resume`) }, "Resume"));
  }
  const reason = el("input", { type: "text", placeholder: "reason for the pause", "aria-label": "pause reason" });
  return el("p", {}, reason, " ", el("button", { type: "button", onclick: () => {
    if (!reason.value.trim()) { tell("say why: the reason is what refused callers read"); return; }
    act(`/queues/${encodeURIComponent(model)}/pause`, { reason: reason.value });
  } }, "Pause"));
}

function latencyTable(q) {
  const stages = ["queue_wait_ms", "encoding_ms", "lvm_inference_ms", "decoding_ms", "total_latency_ms"];
  return el("table", { class: "grid" },
    el("thead", {}, el("tr", {}, el("th", {}, "ms"), el("th", {}, "queue wait"), el("th", {}, "encode"),
      el("th", {}, "LVM"), el("th", {}, "decode"), el("th", {}, "end to end"))),
    el("tbody", {}, ...["p50", "p99"].map((p) => el("tr", {}, el("th", {}, p),
      ...stages.map((s) => el("td", {}, ms(q.latency_ms[s][p])))))));
}

// Cards are built once per queue and updated in place: the pause controls are rebuilt only when
// the pause changes, so a reason being typed survives the refreshes.
const cards = new Map();

function renderQueues(queues) {
  for (const q of queues) {
    const history = depthHistory.get(q.queue) || [];
    history.push(q.queued);
    if (history.length > DEPTH_POINTS) history.shift();
    depthHistory.set(q.queue, history);
    const lat = latencyHistory.get(q.queue) || { p50: [], p99: [] };
    for (const p of ["p50", "p99"]) {
      lat[p].push(Math.round(q.latency_ms.total_latency_ms[p] || 0));
      if (lat[p].length > DEPTH_POINTS) lat[p].shift();
    }
    latencyHistory.set(q.queue, lat);
    let c = cards.get(q.queue);
    if (!c) {
      c = { stats: el("p"), controls: el("div"), charts: el("div"), latency: el("div"), state: null };
      c.card = el("div", { class: "queue", "data-queue": q.queue }, el("h3", {}, q.queue), c.stats, c.controls,
        c.charts, c.latency);
      $("queues").append(c.card);
      cards.set(q.queue, c);
    }
    c.stats.textContent = `queued ${q.queued} · running ${q.running} · canceled (kept) ${q.canceled_kept} · ` +
      `latencies over the newest ${q.latency_ms.total_latency_ms.n} finished`;
    const state = q.paused ? JSON.stringify(q.paused) : "running";
    if (state !== c.state) {
      c.state = state;
      c.controls.replaceChildren(pauseControls(q, q.queue.replace(/^lvm-/, "")));
    }
    c.charts.replaceChildren(
      chart("jobs/min, 15 min: finished blue, failed red, refused orange", [
        { values: q.finished_per_min, cls: "finished" }, { values: q.failed_per_min, cls: "failed" },
        { values: q.refused_per_min, cls: "refused" }]),
      chart("queue depth, while open", [{ values: history, cls: "depth" }]),
      chart("end to end ms, while open: p50 green, p99 black", [
        { values: lat.p50, cls: "p50" }, { values: lat.p99, cls: "p99" }]));
    c.latency.replaceChildren(latencyTable(q));
  }
}

function renderWorkers(workers) {
  const body = $("workers").querySelector("tbody");
  body.replaceChildren(...workers.map((w) => el("tr", { "data-worker": w.worker },
    el("td", {}, w.worker), el("td", {}, w.host), el("td", {}, w.device), el("td", {}, w.model),
    el("td", {}, w.status),
    el("td", {}, `${w.last_batch_size ?? "–"} / ${w.mean_batch_size ?? "–"} / ${w.max_batch ?? "–"}`),
    el("td", {}, w.age_s == null ? "–" : `${w.age_s} s`), el("td", {}, w.jobs_done), el("td", {}, w.jobs_failed),
    el("td", {}, w.current_job ? JSON.stringify(w.current_job) : ""), el("td", {}, w.started_at),
    el("td", {}, w.load_seconds == null ? "–" : `${w.load_seconds} s`),
    el("td", {}, el("button", { type: "button", onclick: () => {
      if (confirm(`Drain ${w.worker}? It finishes its batch and exits.`)) {
        act(`/workers/${encodeURIComponent(w.worker)}/drain`);
      }
    } }, "Drain")))));
}

function renderFailed(rows, reasons) {
  $("reasons").textContent = Object.entries(reasons).map(([k, v]) => `${k} ${v}`).join(" · ") || "none";
  const body = $("failed").querySelector("tbody");
  body.replaceChildren(...rows.map((r) => el("tr", { class: "pick", "data-job": r.id, tabindex: "0",
    onclick: () => inspect(r.id), onkeydown: (e) => { if (e.key === "Enter") inspect(r.id); } },
    el("td", {}, r.id), el("td", {}, r.reason), el("td", {}, r.message), el("td", {}, r.ended_at),
    el("td", {}, r.tenant), el("td", {}, r.request_id))));
}

function renderAudit(entries) {
  const body = $("audit").querySelector("tbody");
  body.replaceChildren(...entries.map((a) => el("tr", {},
    el("td", {}, new Date(Number(a.at_ms)).toISOString()), el("td", {}, a.operator), el("td", {}, a.action),
    el("td", {}, a.target), el("td", {}, a.detail), el("td", {}, a.outcome))));
}

async function inspect(id) {
  try {
    const job = await api(`/jobs/${encodeURIComponent(id)}`);
    inspected = id;
    $("inspected").textContent = id;
    const rows = [];
    for (const [k, v] of Object.entries(job.fields)) rows.push(el("dt", {}, k), el("dd", {}, v));
    if (job.error) rows.push(el("dt", {}, "error"), el("dd", {}, `${job.error.error}: ${job.error.message}`));
    if (job.timings) {
      rows.push(el("dt", {}, "timings (ms)"),
        el("dd", {}, Object.entries(job.timings).map(([k, v]) => `${k.replace(/_ms$/, "")} ${ms(v)}`).join(" · ")));
    }
    $("fields").replaceChildren(...rows);
    $("text").hidden = true;
    $("text").textContent = "";
    $("text-hidden").hidden = false;
    $("inspector").hidden = false;
  } catch (err) {
    say(err.message);
  }
}

async function act(path, body) {
  try {
    const reply = await api(path, "POST", body === undefined ? {} : body);
    tell(`${path}: ${reply.outcome || reply.job_id || "done"}`);
    await refresh();
  } catch (err) {
    tell(`${path}: ${err.message}`);
  }
}

async function refresh() {
  try {
    const view = await api("/overview");
    renderQueues(view.queues);
    renderWorkers(view.workers);
    const reasons = {};
    const rows = [];
    for (const q of view.queues) {
      for (const [k, v] of Object.entries(q.failed_by_reason)) reasons[k] = (reasons[k] || 0) + v;
      rows.push(...q.failed);
    }
    renderFailed(rows, reasons);
    renderAudit(await api("/audit?limit=30"));
    say(`signed in as ${view.you} · updated ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    say(err.message);
  }
}

function start() {
  $("login").hidden = true;
  $("main").hidden = false;
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("lvmq-admin-key", $("adminkey").value);
    $("adminkey").value = "";
    start();
  });
  $("reveal").addEventListener("click", async () => {
    try {
      const request = await api(`/jobs/${encodeURIComponent(inspected)}/reveal`, "POST", {});
      $("text").textContent = JSON.stringify(request, null, 2);
      $("text").hidden = false;
      $("text-hidden").hidden = true;
    } catch (err) {
      say(err.message);
    }
  });
  $("replay").addEventListener("click", () => act(`/jobs/${encodeURIComponent(inspected)}/replay`));
  $("cancel").addEventListener("click", () => act(`/jobs/${encodeURIComponent(inspected)}/cancel`));
  $("close").addEventListener("click", () => { $("inspector").hidden = true; inspected = null; });
  if (sessionStorage.getItem("lvmq-admin-key")) start();
});
