// replica demo's page: the devices' own screens (iframes), and the relay's view and the
// field day as the demo's server pushes them (server-sent events). It decides nothing.
"use strict";

const $ = (id) => document.getElementById(id);
let view = null;
let toastTimer = null;

function toast(message) {
  $("toast").textContent = message;
  $("toast").hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { $("toast").hidden = true; }, 6000);
}

async function press(path, body) {
  const answer = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}),
  }).catch(() => null);
  if (answer === null) { toast("The demo is not running any more."); return; }
  if (!answer.ok) {
    const value = await answer.json().catch(() => null);
    const error = (value && value.error) || { code: "unknown", message: answer.statusText };
    toast(`Not done: ${error.message} [${error.code}]`);
  }
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function render(v) {
  const first = view === null;
  view = v;
  if (first) {
    $("phones").replaceChildren(...v.devices.map((device) => {
      const frame = document.createElement("div");
      frame.className = "phone-frame";
      const caption = document.createElement("div");
      caption.className = "caption";
      caption.textContent = `${device.name} · ${device.replica_id}`;
      const iframe = document.createElement("iframe");
      iframe.src = `devices/${device.key}/`;
      iframe.title = device.name;
      iframe.name = device.key;
      frame.append(caption, iframe);
      return frame;
    }));
  }
  $("all-synced").hidden = !v.all_synced;
  $("steps").replaceChildren(...v.steps.map((step) => {
    const li = document.createElement("li");
    li.className = step.state;
    li.append(step.title);
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = step.text;
    li.append(what);
    if (step.result) {
      const result = document.createElement("span");
      result.className = "result";
      result.textContent = step.result;
      li.append(result);
    }
    return li;
  }));
  $("failure").hidden = !v.failure;
  $("failure").textContent = v.failure || "";
  $("step").disabled = v.playing || v.over;
  $("play").disabled = v.playing || v.over;
  $("relay-state").textContent = v.relay.up ? "up" : "down";
  $("relay-state").className = v.relay.up ? "pill" : "pill down";
  $("relay-url").textContent = `${v.relay.replica_id} at ${v.relay.url}`;
  $("relay-toggle").textContent = v.relay.up ? "Stop the relay" : "Start the relay";
  $("holdings").replaceChildren(...v.devices.map((device) => {
    const tr = document.createElement("tr");
    tr.append(
      cell(device.name),
      cell(String(device.on_relay)),
      cell(device.headline === "synced" ? device.title : String(device.unsynced), device.headline),
      cell(String(device.rejected)),
    );
    return tr;
  }));
  showKnown(v);
}

function ago(seconds) {
  if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

function credential(row, now) {
  if (row.revoked) return "revoked";
  if (row.expires_at === null) return "none issued";
  if (row.expired) return "expired";
  return `expires in ${Math.round((row.expires_at - now) / 3600)} h`;
}

function showKnown(v) {
  $("known").replaceChildren(...v.known.map((row) => {
    const tr = document.createElement("tr");
    const outcome = row.outcome === null ? "never" : row.code ? `${row.outcome} (${row.code})` : row.outcome;
    tr.append(
      cell(row.replica_id),
      cell(row.last_contact === null ? "never" : ago(v.now - row.last_contact)),
      cell(outcome, row.code ? "failed" : ""),
      cell(credential(row, v.now), row.revoked || row.expired ? "failed" : ""),
    );
    return tr;
  }));
}

$("step").addEventListener("click", () => press("demo/step"));
$("play").addEventListener("click", () => press("demo/play"));
$("relay-toggle").addEventListener("click", () => press("demo/relay", { up: !(view && view.relay.up) }));
$("widen").addEventListener("click", () => press("demo/credential", { device: "bello" }));

const source = new EventSource("demo/events");
source.onmessage = (event) => render(JSON.parse(event.data));
