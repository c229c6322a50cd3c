// The lvm-queue chat page: the conversation lives here, in the browser. Each turn posts the
// conversation so far to /v1/chat, then follows the job's server-sent events (read with fetch, so
// the API key travels in a header, never in a URL) until the answer or the error arrives.
"use strict";

const MAX_MESSAGES = 32; // the wire schema's limit: older turns are dropped from the request
const $ = (id) => document.getElementById(id);
let turns = [];
let conversationId = newId();
let busy = false;

function newId() {
  return (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()).replace(/-/g, "");
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

function addEntry(kind, text, meta) {
  const li = document.createElement("li");
  li.className = kind;
  const who = document.createElement("span");
  who.className = "visually-hidden";
  who.textContent = kind === "user" ? "You said: " : kind === "bot" ? "Answer: " : "Error: ";
  li.appendChild(who);
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  li.appendChild(body);
  if (meta) {
    const m = document.createElement("span");
    m.className = "meta";
    m.textContent = meta;
    li.appendChild(m);
  }
  $("log").appendChild(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function ms(x) { return (Math.round(x * 10) / 10).toFixed(1) + " ms"; }

function describeResult(r) {
  const l = r.latency_breakdown;
  return `confidence ${r.confidence.toFixed(3)} · queue ${ms(l.queue_wait_ms)} · encode ${ms(l.encoding_ms)} · ` +
    `LVM ${ms(l.lvm_inference_ms)} · decode ${ms(l.decoding_ms)} · total ${ms(l.total_latency_ms)}`;
}

async function readableError(resp) {
  let body = {};
  try { body = await resp.json(); } catch (e) { /* not JSON */ }
  const fields = (body.fields || []).map((f) => `${f.field}: ${f.reason}`).join("; ");
  if (resp.status === 429) {
    const wait = resp.headers.get("Retry-After") || body.retry_after_s || "a few";
    return `Too many requests: try again in ${wait} s.`;
  }
  if (resp.status === 401 || resp.status === 403) {
    $("apikey").focus();
    return `Not allowed: ${body.message || resp.statusText}. Enter an API key above.`;
  }
  if (resp.status === 422) return `The request was refused: ${fields || body.message}.`;
  if (resp.status === 413) return "That message is too long.";
  if (resp.status === 503) return "The service is unavailable right now; please retry shortly.";
  return body.message || `The gateway answered ${resp.status}.`;
}

function describeFailure(err) {
  if (!err) return "The request failed.";
  const fields = (err.fields || []).map((f) => `${f.field}: ${f.reason}`).join("; ");
  return `The model could not answer (${err.error}): ${err.message}${fields ? " — " + fields : ""}`;
}

// Follows one job; resolves with its final view ({status, result | error}).
async function follow(eventsUrl, statusUrl) {
  try {
    // A closed tab closes the stream: the gateway then cancels the job, so nobody computes it.
    const resp = await fetch(eventsUrl + "?cancel_on_disconnect=true", { headers: headers() });
    if (!resp.ok || !resp.body) throw new Error("no event stream");
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (!data) continue;
        const view = JSON.parse(data);
        if (event === "queued") {
          setStatus(view.position_in_queue ? `waiting (position ${view.position_in_queue})` : "waiting");
        } else if (event === "started") {
          setStatus("thinking");
        } else if (event === "finished" || event === "failed") {
          reader.cancel();
          return view;
        }
      }
    }
  } catch (e) {
    // fall through: ask with ?wait, for proxies that do not pass event streams
  }
  for (;;) {
    const resp = await fetch(statusUrl + "?wait=25", { headers: headers() });
    if (!resp.ok) return { status: "failed", error: { error: "gateway", message: await readableError(resp) } };
    const view = await resp.json();
    if (["finished", "failed", "stopped", "canceled"].includes(view.status)) return view;
  }
}

async function send(text) {
  busy = true;
  $("send").setAttribute("aria-disabled", "true");
  turns.push(text);
  addEntry("user", text);
  setStatus("sending");
  const request = {
    messages: turns.slice(-MAX_MESSAGES),
    conversation_id: conversationId,
    model: $("model").value,
    response_sentences: Math.max(1, Math.min(8, parseInt($("sentences").value, 10) || 1)),
  };
  try {
    const resp = await fetch("/v1/chat", { method: "POST", headers: headers(), body: JSON.stringify(request) });
    if (resp.status !== 202) {
      turns.pop();
      addEntry("error", await readableError(resp));
      return;
    }
    const job = await resp.json();
    const view = await follow(job.events_url, job.status_url);
    if (view.status === "finished" && view.result) {
      turns.push(view.result.response);
      addEntry("bot", view.result.response, describeResult(view.result));
    } else {
      turns.pop();
      addEntry("error", describeFailure(view.error));
    }
  } catch (e) {
    turns.pop();
    addEntry("error", "The gateway could not be reached: " + e.message);
  } finally {
    setStatus("");
    busy = false;
    $("send").removeAttribute("aria-disabled");
  }
}

async function loadModels() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (!resp.ok) return;
    // OpenAI's list shape: [{id, object, created, owned_by, ready}]; the embedding model is not a chat model
    const models = (await resp.json()).data.filter((m) => m.kind !== "embedding");
    const select = $("model");
    const chosen = select.value;
    select.replaceChildren(...models.map((m) => {
      const o = document.createElement("option");
      o.value = m.id;
      o.textContent = m.ready ? m.id : `${m.id} (no worker ready)`;
      return o;
    }));
    if (models.some((m) => m.id === chosen)) select.value = chosen;
  } catch (e) { /* keep the default option */ }
}

document.addEventListener("DOMContentLoaded", () => {
  $("apikey").value = sessionStorage.getItem("lvmq-key") || "";
  $("apikey").addEventListener("change", () => { sessionStorage.setItem("lvmq-key", $("apikey").value.trim()); loadModels(); });
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("message").value.trim();
    if (!text || busy) return;
    $("message").value = "";
    send(text);
    $("message").focus();
  });
  $("message").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("composer").requestSubmit(); }
  });
  $("reset").addEventListener("click", () => {
    turns = [];
    conversationId = newId();
    $("log").replaceChildren();
    setStatus("new conversation");
    $("message").focus();
  });
  loadModels();
  $("message").focus();
});
