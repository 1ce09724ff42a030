// The fleet: one row per device with its status, board, runtimes, active versus desired model,
// CPU and temperature over the last minute, and a rollback.

import { api } from "./api.js";
import { ago, fmt, h, shortSha, sparkline } from "./dom.js";

// The active model by the name a person gave it: the deploy that put it there knows the
// candidate's name; an artifact's own name is often just its file name (the digest).
function activeName(summary, status) {
  const active = summary.active_model;
  if (!active) return null;
  const state = status && status.state;
  for (const target of [state && state.desired, state && state.last_deploy]) {
    if (target && target.sha256 === active.sha256 && target.label) return target.label;
  }
  if (active.label && !/^[0-9a-f]{64}(\.\w+)?$/.test(active.label)) return active.label;
  return shortSha(active.sha256);
}

function board(summary) {
  if (!summary) return "";
  const parts = [summary.arch, summary.cores ? `${summary.cores} cores` : null,
    summary.ram_mb ? `${Math.round(summary.ram_mb)} MB` : null].filter(Boolean);
  return parts.join(" · ");
}

function tags(summary) {
  const entries = Object.entries((summary && summary.tags) || {});
  return entries.length
    ? h("div", { class: "tags" }, entries.map(([k, v]) => h("span", { class: "tag", title: `${k}=${v}` }, `${k}=${v}`)))
    : null;
}

function desiredCell(status) {
  const state = status && status.state;
  if (!state) return h("td", { class: "desired" }, "");
  const desired = state.desired;
  const name = desired ? (desired.label || shortSha(desired.sha256)) : "none";
  return h("td", { class: `desired ${state.in_sync ? "in-sync" : "out-of-sync"}`, "data-in-sync": String(state.in_sync) },
    h("div", {}, h("span", { class: "model", title: desired ? desired.sha256 : "" }, name),
      desired ? h("span", { class: "muted" }, ` (${desired.state})`) : null,
      h("span", { class: state.in_sync ? "ok-mark" : "warn-mark" }, state.in_sync ? " ✓" : " ≠")),
    h("div", { class: "reason" }, state.reason));
}

function telemetryCells(samples) {
  const cpu = samples.map((x) => x.cpu);
  const temp = samples.map((x) => x.temp);
  const lastCpu = cpu.length ? cpu[cpu.length - 1] : null;
  const temps = temp.filter((v) => Number.isFinite(v));
  const lastTemp = temps.length ? temps[temps.length - 1] : null;
  return [
    h("td", { class: "cpu" },
      sparkline(cpu, { min: 0, max: 100, label: `CPU % over the last ${cpu.length} samples` }),
      h("span", { class: "last" }, fmt(lastCpu, 0, " %"))),
    h("td", { class: "temp" },
      temps.length ? sparkline(temp, { label: `temperature over the last ${temp.length} samples` }) : null,
      h("span", { class: "last", title: temps.length ? "" : "the board reports no temperature sensor" },
        temps.length ? fmt(lastTemp, 1, " °C") : "no sensor")),
  ];
}

export function fleetView(root, app) {
  const count = h("p", { class: "muted count" }, "");
  const body = h("tbody");
  const table = h("table", { class: "fleet" },
    h("thead", {}, h("tr", {},
      ["device", "status", "board", "runtimes", "active model", "desired model", "CPU", "temperature", ""]
        .map((t) => h("th", {}, t)))),
    body);
  root.append(h("section", {}, h("h1", {}, "Fleet"), count, table));

  async function rollback(id, summary) {
    const active = activeName(summary, app.fleet.devices.get(id).status) || "its current model";
    const confirmed = await app.confirmAction({
      title: `Roll back ${id}?`,
      body: [
        h("p", {}, `${id} goes back to the model it ran before its last deploy, in place of ${active}.`),
        h("label", {}, "Reason (recorded on the device) ", h("input", { name: "reason", value: "rolled back from the dashboard", size: 36 })),
      ],
      confirmLabel: "Roll back",
      danger: true,
    });
    if (!confirmed) return;
    const waiting = app.notify(`rolling back ${id}: waiting for its answer…`, "info", { sticky: true });
    try {
      const outcome = await app.act(() => api(`/devices/${encodeURIComponent(id)}/rollback`, {
        method: "POST", body: { reason: String(confirmed.get("reason") || "") },
      }));
      const ok = outcome.outcome === "restored";
      app.notify(`${id}: ${outcome.outcome}${outcome.error_code ? ` [${outcome.error_code}]` : ""}${outcome.detail ? `: ${outcome.detail}` : ""}`,
        ok ? "success" : "error");
      app.fleet.refresh();
    } catch (err) {
      app.notify(`rollback of ${id} failed: ${err.message}`, "error");
    } finally {
      waiting.remove();
    }
  }

  function buildRow(id, d) {
    const summary = d.summary;
    const state = summary.online ? "online" : "offline";
    return h("tr", { "data-device": id, "data-online": String(summary.online), class: state },
      h("td", { class: "device" }, h("strong", {}, id), tags(summary)),
      h("td", { class: "status" }, h("span", { class: `badge ${state}` }, state),
        h("div", { class: "muted small seen" }, `seen ${ago(summary.last_seen)}`)),
      h("td", { class: "board" }, board(summary),
        summary.agent_version ? h("div", { class: "muted small" }, `agent ${summary.agent_version}`) : null),
      h("td", { class: "runtimes" }, (summary.runtimes || []).map((r) => h("div", {}, r))),
      h("td", { class: "active", "data-sha256": summary.active_model ? summary.active_model.sha256 : "" },
        h("span", { class: "model", title: summary.active_model ? summary.active_model.sha256 : "" },
          activeName(summary, d.status) || "none"),
        summary.active_model ? h("div", { class: "muted small sha" }, shortSha(summary.active_model.sha256)) : null),
      desiredCell(d.status),
      ...telemetryCells(d.telemetry),
      h("td", { class: "actions" }, h("button", {
        type: "button", class: "rollback", disabled: !summary.online,
        title: summary.online ? "restore the model it ran before its last deploy" : "the device is offline",
        onclick: () => rollback(id, summary),
      }, "Roll back")));
  }

  // Telemetry comes every few seconds per device: a row is rebuilt only when what it says
  // changed, otherwise its sparklines and "seen" text are updated in place, so a button is
  // never swapped under a pointer that is pressing it.
  const built = new Map(); // device -> {row, key}

  function render() {
    const devices = [...app.fleet.devices.entries()].filter(([, d]) => d.summary).sort(([a], [b]) => a.localeCompare(b));
    const online = devices.filter(([, d]) => d.summary.online).length;
    count.textContent = app.fleet.loaded
      ? `${devices.length} device${devices.length === 1 ? "" : "s"}, ${online} online`
      : "loading…";
    if (app.fleet.loaded && devices.length === 0) {
      built.clear();
      body.replaceChildren(h("tr", {}, h("td", { colspan: 9, class: "muted" },
        "No device has announced itself yet: start an agent with edgetailor-agent --broker ... --id NAME")));
      return;
    }
    const rows = devices.map(([id, d]) => {
      const { last_seen: _seen, last_telemetry_at: _at, ...stable } = d.summary;
      const key = JSON.stringify([stable, d.status && d.status.state]);
      const known = built.get(id);
      if (known && known.key === key) {
        known.row.querySelector(".seen").textContent = `seen ${ago(d.summary.last_seen)}`;
        const [cpu, temp] = telemetryCells(d.telemetry);
        known.row.querySelector("td.cpu").replaceWith(cpu);
        known.row.querySelector("td.temp").replaceWith(temp);
        return known.row;
      }
      const row = buildRow(id, d);
      built.set(id, { row, key });
      return row;
    });
    const current = [...body.children];
    if (rows.length !== current.length || rows.some((row, i) => row !== current[i])) {
      body.replaceChildren(...rows);
    }
  }

  const unsubscribe = app.fleet.subscribe(render);
  // "seen N s ago" moves on even when nothing else does.
  const ticker = setInterval(render, 5000);
  render();
  return {
    dispose() {
      unsubscribe();
      clearInterval(ticker);
    },
  };
}
