// The Sync screen: renders what the device's server pushes (server-sent events), and
// presses its buttons (POST). It decides nothing: every word and every state comes
// in the screen the server sends (replica.ui_screen), worded from the message catalog.
"use strict";

const $ = (id) => document.getElementById(id);
let screen = null;
let toastTimer = null;

function toast(message) {
  const box = $("toast");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, 6000);
}

async function press(path, body) {
  let answer;
  try {
    answer = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
  } catch (err) {
    toast(screen ? screen.text["app.reconnecting"] : String(err));
    return null;
  }
  const value = await answer.json().catch(() => null);
  if (!answer.ok) {
    const error = (value && value.error) || { code: "unknown", message: answer.statusText };
    const title = screen ? screen.text["error.title"] : "Not done";
    toast(`${title}: ${error.message} [${error.code}]`);
    return null;
  }
  return value;
}

function lines(parent, items) {
  parent.replaceChildren(...items.map((text) => {
    const line = document.createElement("div");
    line.textContent = text;
    return line;
  }));
}

function fillSelect(select, options) {
  const keep = select.value;
  select.replaceChildren(...options.map(([value, label]) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label;
    return option;
  }));
  if (options.some(([value]) => value === keep)) select.value = keep;
}

function formLabels() {
  if (!screen) return;
  const kind = $("form-kind").value || "household";
  $("form-name-label").textContent = screen.text[`form.name.${kind}`];
  $("form-number-label").textContent = screen.text[`form.number.${kind}`];
}

function render(s) {
  screen = s;
  const t = s.text;
  document.documentElement.lang = s.language;
  document.title = `${t["app.title"]} · ${s.device.name}`;
  $("title").textContent = t["app.title"];
  $("device-name").textContent = `${s.device.name} · ${t["app.campaign"]}`;
  $("login").textContent = s.login.logged_in ? t["login.out"] : t["login.button"];
  $("login-line").textContent = s.login.logged_in ? s.login.line : t["login.hint"];

  const card = s.card;
  $("card").dataset.headline = card.headline;
  $("card-title").textContent = card.title;
  $("card-count").textContent = card.count;
  lines($("card-lines"), card.lines);
  $("last-synced").textContent = card.last_synced;
  $("rejected").hidden = card.rejected.length === 0;
  $("rejected-title").textContent = card.rejected_title;
  $("rejected-list").replaceChildren(...card.rejected.map((item) => {
    const li = document.createElement("li");
    li.textContent = item.line;
    return li;
  }));

  $("sync").textContent = t["sync.button"];
  $("sync").disabled = !s.sync.enabled;
  $("sync-note").textContent = s.sync.note;
  $("live-label").textContent = t["live.label"];
  $("live").checked = s.live.on;
  $("live").disabled = !s.live.available;

  $("overlay").hidden = s.overlay === null;
  if (s.overlay) {
    $("overlay-title").textContent = s.overlay.title;
    lines($("overlay-lines"), s.overlay.lines);
    const p = s.overlay.progress;
    const total = p ? p.to_send + p.to_receive : 0;
    $("overlay-bar").style.width = total ? `${Math.round(100 * (p.sent + p.received) / total)}%` : "8%";
  }

  const popup = s.popup;
  $("popup").hidden = popup === null || s.overlay !== null;
  if (popup) {
    $("popup-icon").className = `popup-icon ${popup.kind}`;
    $("popup-icon").textContent = popup.kind === "failed" ? "!" : "✓";
    $("popup-title").textContent = popup.title;
    lines($("popup-lines"), popup.lines);
    $("popup-code").textContent = popup.code || "";
    $("popup-retry").hidden = popup.retry === null;
    $("popup-retry").textContent = popup.retry || "";
    $("popup-close").textContent = t["popup.close"];
  }

  $("peers-title").textContent = t["peers.title"];
  $("peers-none").textContent = s.peers.length ? "" : t["peers.none"];
  $("peers").replaceChildren(...s.peers.map((peer) => {
    const li = document.createElement("li");
    const about = document.createElement("div");
    const name = document.createElement("div");
    name.className = "peer-name";
    name.textContent = peer.name;
    const state = document.createElement("div");
    state.className = "peer-lines";
    state.textContent = peer.lines.join(" · ");
    about.append(name, state);
    li.append(about);
    if (peer.button) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary";
      button.textContent = peer.button;
      button.disabled = peer.busy || !s.sync.enabled && !s.live.on;
      button.addEventListener("click", () => press("peers/sync", { url: peer.url }));
      li.append(button);
    }
    return li;
  }));
  $("find").hidden = !s.discovery;
  $("find").textContent = t["peers.find"];

  $("form-title").textContent = t["form.title"];
  $("form-kind-label").textContent = t["form.kind"];
  $("form-area-label").textContent = t["form.area"];
  $("form-save").textContent = t["form.save"];
  fillSelect($("form-kind"), s.form.kinds.map((k) => [k.kind, k.label]));
  fillSelect($("form-area"), s.form.areas.map((a) => [a, a]));
  formLabels();
}

$("sync").addEventListener("click", () => press("sync"));
$("login").addEventListener("click", () => press(screen && screen.login.logged_in ? "logout" : "login"));
$("live").addEventListener("change", (event) => press("live", { on: event.target.checked }));
$("find").addEventListener("click", () => press("discover"));
$("popup-close").addEventListener("click", () => press("popup/close"));
$("popup-retry").addEventListener("click", () => {
  const peer = screen && screen.popup && screen.popup.peer_url;
  press(peer ? "peers/sync" : "sync", peer ? { url: peer } : {});
});
$("form-kind").addEventListener("change", formLabels);
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("form-name").value;
  $("form-name").value = "";  // ready for the next one at once; given back if the save fails
  const saved = await press("records", {
    kind: $("form-kind").value,
    area: $("form-area").value,
    name,
    number: Number($("form-number").value),
  });
  if (saved) {
    toast(saved.message);
  } else if (!$("form-name").value) {
    $("form-name").value = name;
  }
});

const source = new EventSource("events");
source.onmessage = (event) => render(JSON.parse(event.data));
source.onerror = () => { if (screen) toast(screen.text["app.reconnecting"]); };  // it reconnects by itself
