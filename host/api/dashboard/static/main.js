// The dashboard: a hash router over three views, the fleet state every view shares, the live
// event stream, and the confirmation and token dialogs.

import { api, ApiError, setToken, streamEvents, takeTokenFromAddress, token } from "./api.js";
import { campaignListView, campaignView } from "./campaigns.js";
import { deploymentsView } from "./deployments.js";
import { debounce, h } from "./dom.js";
import { fleetView } from "./fleet.js";
import { searchListView, searchView } from "./searches.js";

const SAMPLES = 60; // telemetry points per device in a sparkline

// What the fleet page shows, kept whichever view is open so the sparklines fill from the start.
class Fleet {
  constructor() {
    this.devices = new Map(); // id -> {summary, status, telemetry: [{at, cpu, temp}]}
    this.listeners = new Set();
    this.loaded = false;
    this.refreshSoon = debounce(() => this.refresh(), 300);
  }

  entry(id) {
    if (!this.devices.has(id)) this.devices.set(id, { summary: null, status: null, telemetry: [] });
    return this.devices.get(id);
  }

  async refresh() {
    const [summaries, statuses] = await Promise.all([api("/devices"), api("/status")]);
    for (const summary of summaries) this.entry(summary.device_id).summary = summary;
    for (const status of statuses) this.entry(status.device_id).status = status;
    this.loaded = true;
    this.changed();
  }

  onEvent(type, data) {
    if (type === "device") {
      const device = this.entry(data.device_id);
      if (device.summary) {
        device.summary.online = data.online;
        device.summary.last_seen = data.last_seen;
      }
      if (device.status) device.status.online = data.online;
      this.changed();
      this.refreshSoon();
    } else if (type === "telemetry") {
      const device = this.entry(data.device_id);
      const samples = device.telemetry;
      if (samples.length && samples[samples.length - 1].at >= data.at) return;
      samples.push({ at: data.at, cpu: data.cpu_percent, temp: data.temperature_c ?? null });
      if (samples.length > SAMPLES) samples.splice(0, samples.length - SAMPLES);
      if (device.summary) device.summary.online = true;
      const active = device.summary && device.summary.active_model;
      if ((active ? active.sha256 : null) !== (data.active_sha256 || null)) this.refreshSoon();
      this.changed();
    } else if (type === "deployment") {
      this.refreshSoon();
    }
  }

  changed() {
    for (const listener of this.listeners) listener();
  }

  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

// -------------------------------------------------------------------------------------------
// Dialogs and notices.

function notify(text, kind = "info", { sticky = false } = {}) {
  const box = document.getElementById("notices");
  const note = h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" },
    h("span", {}, text),
    h("button", { type: "button", class: "quiet", "aria-label": "dismiss", onclick: () => note.remove() }, "×"));
  box.append(note);
  if (!sticky && kind !== "error") setTimeout(() => note.remove(), 8000);
  return note;
}

// Resolves to the dialog's form data when confirmed, to null when cancelled.
function confirmAction({ title, body, confirmLabel = "Confirm", danger = false }) {
  const dialog = document.getElementById("confirm-dialog");
  dialog.querySelector(".title").textContent = title;
  dialog.querySelector(".body").replaceChildren(...[body].flat());
  const button = dialog.querySelector("button.confirm");
  button.textContent = confirmLabel;
  button.classList.toggle("danger", danger);
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm" ? new FormData(dialog.querySelector("form")) : null);
    }, { once: true });
    dialog.showModal();
    button.focus();
  });
}

function askToken(why = "") {
  const dialog = document.getElementById("token-dialog");
  const input = dialog.querySelector("input[name=token]");
  dialog.querySelector(".why").textContent = why;
  input.value = token();
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "save") setToken(input.value.trim());
      if (dialog.returnValue === "forget") setToken("");
      showTokenState();
      resolve(dialog.returnValue === "save");
    }, { once: true });
    dialog.showModal();
    input.focus();
  });
}

function showTokenState() {
  const button = document.getElementById("token-button");
  button.textContent = token() ? "API token ✓" : "API token";
  button.title = token() ? "a token is kept in this browser" : "no token: the service answers nothing";
}

// A read the service refused (no token, or one revoked): ask once, then read the page again.
let asking = null;
document.addEventListener("token-needed", async (event) => {
  if (asking) return;
  asking = askToken(event.detail);
  try {
    if (await asking) {
      route();
      app.fleet.refresh().catch((err) => notify(err.message, "error"));
    }
  } finally {
    asking = null;
  }
});

// Runs a mutation; a missing or refused token opens the token dialog and tries once more.
async function act(run) {
  try {
    return await run();
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      if (await askToken(err.message)) return run();
    }
    throw err;
  }
}

// -------------------------------------------------------------------------------------------
// Routing.

const app = {
  fleet: new Fleet(),
  eventListeners: new Set(),
  notify,
  confirmAction,
  act,
  onEvents(listener) {
    this.eventListeners.add(listener);
    return () => this.eventListeners.delete(listener);
  },
  go(hash) {
    location.hash = hash;
  },
};

let current = null;

function route() {
  const hash = location.hash.replace(/^#\/?/, "") || "fleet";
  const [page, ...rest] = hash.split("/");
  if (current && current.dispose) current.dispose();
  const root = document.getElementById("view");
  root.replaceChildren();
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("current", link.dataset.nav === page);
  }
  if (page === "campaigns" && rest.length) {
    current = campaignView(root, app, decodeURIComponent(rest.join("/")));
  } else if (page === "campaigns") {
    current = campaignListView(root, app);
  } else if (page === "searches" && rest.length) {
    current = searchView(root, app, decodeURIComponent(rest.join("/")));
  } else if (page === "searches") {
    current = searchListView(root, app);
  } else if (page === "deployments") {
    current = deploymentsView(root, app);
  } else {
    current = fleetView(root, app);
  }
}

function liveState(state, detail) {
  const live = document.getElementById("live");
  live.dataset.state = state;
  live.textContent = state === "live" ? "live" : "reconnecting…";
  live.title = detail || "";
  if (state === "live") app.fleet.refresh().catch((err) => notify(err.message, "error"));
}

takeTokenFromAddress();
showTokenState();
document.getElementById("token-button").addEventListener("click", () => askToken());
window.addEventListener("hashchange", route);
route();
app.fleet.refresh().catch((err) => notify(`could not read the fleet: ${err.message}`, "error"));
streamEvents((type, data) => {
  app.fleet.onEvent(type, data);
  for (const listener of app.eventListeners) listener(type, data);
}, liveState);
