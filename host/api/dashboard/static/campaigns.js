// Campaigns: the list and a form to start one; a campaign's page with live progress, and per
// device its choice, Pareto plot and sortable results table (rendered by the host's report
// templates), and deploying the choices.

import { api, fragment } from "./api.js";
import { debounce, h, makeSortable, when } from "./dom.js";

const FINAL = new Set(["ok", "failed", "offline"]);
const OBJECTIVES = ["max_metric", "min_latency", "min_size", "min_memory"];

function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, "data-status": status }, status);
}

function jobCounts(jobs) {
  const total = Object.values(jobs || {}).reduce((a, b) => a + b, 0);
  const finished = Object.entries(jobs || {}).filter(([k]) => FINAL.has(k)).reduce((a, [, v]) => a + v, 0);
  return { total, finished };
}

function field(label, input, hint = "") {
  return h("label", { class: "field" }, h("span", { class: "label" }, label), input,
    hint ? h("span", { class: "hint" }, hint) : null);
}

function lines(text) {
  return String(text || "").split(/[\n,]/).map((x) => x.trim()).filter(Boolean);
}

// -------------------------------------------------------------------------------------------

export function campaignListView(root, app) {
  const body = h("tbody");
  const devices = h("div", { class: "device-choices" });
  const form = h("form", { class: "new-campaign", autocomplete: "off" },
    h("h2", {}, "New campaign"),
    h("div", { class: "grid" },
      field("model", h("input", { name: "model", required: true, value: "builtin:digits_cnn", size: 32 }),
        "builtin:NAME, path/file.py:factory or pkg.module:factory"),
      field("data", h("input", { name: "data", required: true, value: "builtin:digits", size: 32 }),
        "builtin:digits, file.npz, an image folder or module:factory"),
      field("search space", h("input", { name: "space", required: true, value: "default", size: 32 }),
        "a named space (edgetailor compress --list), or pkg.mod:SPACE under a module the service allows"),
      field("objective", h("select", { name: "objective" }, OBJECTIVES.map((o) => h("option", { value: o }, o)))),
      field("constraints", h("textarea", { name: "constraints", rows: 2, cols: 32 }, "accuracy_drop<=0.02"),
        "one per line, e.g. latency_p90_ms<=5"),
      field("pretrain epochs", h("input", { name: "pretrain_epochs", type: "number", min: 0, value: 15 }),
        "train the model on the data first (zoo models start untrained)"),
    ),
    h("fieldset", { class: "devices" }, h("legend", {}, "devices"), devices),
    h("details", {}, h("summary", {}, "measurement"),
      h("div", { class: "grid" },
        field("timed runs", h("input", { name: "runs", type: "number", min: 1, value: 50 })),
        field("at least (s)", h("input", { name: "min_s", type: "number", min: 0, step: "any", value: 1.0 })),
        field("campaign id", h("input", { name: "campaign_id", pattern: "[A-Za-z0-9_.\\-]{1,64}", placeholder: "generated" })))),
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary" }, "Start campaign")));
  root.append(h("section", {}, h("h1", {}, "Campaigns"),
    h("table", { class: "campaigns" }, h("thead", {}, h("tr", {},
      ["campaign", "status", "model", "devices", "benchmarks", "created"].map((t) => h("th", {}, t)))), body),
    form));

  const checked = new Set();
  let shownDevices = null;
  function renderDevices() {
    const known = [...app.fleet.devices.entries()].filter(([, d]) => d.summary).sort(([a], [b]) => a.localeCompare(b));
    // Telemetry changes the fleet every few seconds; the choices only when a device or its
    // status does.
    const key = JSON.stringify(known.map(([id, d]) => [id, d.summary.online]));
    if (key === shownDevices) return;
    shownDevices = key;
    if (!known.length) {
      devices.replaceChildren(h("span", { class: "muted" }, "no device known yet"));
      return;
    }
    const before = new Set([...devices.querySelectorAll("input")].map((i) => i.value));
    devices.replaceChildren(...known.map(([id, d]) => {
      if (!before.has(id) && d.summary.online) checked.add(id);
      return h("label", { class: "choice" },
        h("input", { type: "checkbox", name: "devices", value: id, checked: checked.has(id),
          onchange: (e) => (e.target.checked ? checked.add(id) : checked.delete(id)) }),
        ` ${id} `, h("span", { class: `badge ${d.summary.online ? "online" : "offline"}` }, d.summary.online ? "online" : "offline"));
    }));
  }

  async function load() {
    const campaigns = await api("/campaigns");
    if (!campaigns.length) {
      body.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No campaign yet.")));
      return;
    }
    body.replaceChildren(...campaigns.map((c) => {
      const { total, finished } = jobCounts(c.jobs);
      return h("tr", { "data-campaign": c.campaign_id },
        h("td", {}, h("a", { href: `#/campaigns/${encodeURIComponent(c.campaign_id)}` }, c.campaign_id)),
        h("td", {}, statusBadge(c.job === "failed" || c.job === "cancelled" ? c.job : c.status)),
        h("td", {}, c.model || ""), h("td", {}, (c.devices || []).join(", ")),
        h("td", { class: "num" }, total ? `${finished} / ${total}` : "–"),
        h("td", {}, when(c.created)));
    }));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const chosen = data.getAll("devices");
    if (!chosen.length) {
      app.notify("choose at least one device", "error");
      return;
    }
    const body = {
      model: data.get("model").trim(), data: data.get("data").trim(), space: data.get("space").trim(),
      objective: data.get("objective"), constraints: lines(data.get("constraints")), devices: chosen,
      pretrain_epochs: Number(data.get("pretrain_epochs") || 0),
      runs: Number(data.get("runs") || 50), min_s: Number(data.get("min_s") || 0),
    };
    const id = String(data.get("campaign_id") || "").trim();
    if (id) body.campaign_id = id;
    try {
      const created = await app.act(() => api("/campaigns", { method: "POST", body }));
      app.notify(`campaign ${created.campaign_id} queued`, "success");
      app.go(`#/campaigns/${encodeURIComponent(created.campaign_id)}`);
    } catch (err) {
      app.notify(`the campaign was not started: ${err.message}`, "error");
    }
  });

  const refresh = debounce(() => load().catch((err) => app.notify(err.message, "error")), 500);
  const offFleet = app.fleet.subscribe(renderDevices);
  const offEvents = app.onEvents((type) => { if (type === "campaign") refresh(); });
  renderDevices();
  refresh();
  return { dispose() { offFleet(); offEvents(); } };
}

// -------------------------------------------------------------------------------------------

export function campaignView(root, app, id) {
  const title = h("h1", {}, "Campaign ", h("span", { class: "id" }, id), " ");
  const meta = h("dl", { class: "meta" });
  const bar = h("progress", { max: 1, value: 0 });
  const progressText = h("span", { class: "progress-text" }, "");
  const stage = h("div", { class: "stage muted" }, "");
  const error = h("div", { class: "error", hidden: true });
  const deployButton = h("button", { type: "button", class: "primary deploy", disabled: true }, "Deploy the choices…");
  const cancelButton = h("button", { type: "button", class: "cancel", hidden: true }, "Cancel campaign…");
  const report = h("div", { class: "panels" }, h("p", { class: "muted" }, "No result yet."));
  root.append(h("section", { class: "campaign", "data-campaign": id },
    h("p", {}, h("a", { href: "#/campaigns" }, "← campaigns")), title, meta,
    h("div", { class: "progress" }, bar, " ", progressText, stage), error,
    h("div", { class: "buttons" }, deployButton, cancelButton), report));

  let detail = null;
  let shownJobs = "";
  const sorts = new Map(); // device -> sort choice, kept across refreshes

  function renderDetail() {
    const c = detail;
    const status = c.job === "failed" || c.job === "cancelled" || c.job === "cancelling" ? c.job : c.status;
    title.replaceChildren("Campaign ", h("span", { class: "id" }, c.campaign_id), " ", statusBadge(status));
    const spec = c.spec || {};
    meta.replaceChildren(...[
      ["model", c.model], ["data", c.data], ["search space", spec.space],
      ["devices", (c.devices || []).join(", ")], ["constraints", (spec.constraints || []).join(", ") || "none"],
      ["objective", spec.objective], ["created", when(c.created)],
    ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "")]));
    const { total, finished } = jobCounts(c.jobs);
    const progress = c.progress || {};
    if (total) {
      bar.max = total;
      bar.value = finished;
      const failed = (c.jobs.failed || 0) + (c.jobs.offline || 0);
      progressText.textContent = `${finished} of ${total} benchmarks finished${failed ? ` (${failed} failed)` : ""}`;
    } else if (progress.total) {
      bar.max = progress.total;
      bar.value = progress.index ?? progress.done ?? 0;
      progressText.textContent = `compressing: ${bar.value} of ${progress.total} candidates`;
    } else {
      bar.removeAttribute("value"); // indeterminate while nothing can be counted yet
      progressText.textContent = c.job === "queued" ? "queued" : c.status;
    }
    if (status === "done") {
      bar.max = 1;
      bar.value = 1;
    }
    stage.textContent = status === "done" ? "" : (progress.message || "");
    error.hidden = !c.error;
    error.textContent = c.error ? `the campaign failed: ${c.error}` : "";
    const chosen = Object.values(c.selection || {}).filter((s) => s && s.candidate).length;
    deployButton.disabled = !(c.status === "done" && chosen);
    deployButton.title = deployButton.disabled ? "once the campaign is done and a device has a choice" : "";
    cancelButton.hidden = !["queued", "running"].includes(c.job);
  }

  async function loadPanels() {
    const html = await fragment(`dashboard/campaigns/${encodeURIComponent(id)}/panels`);
    const template = document.createElement("template");
    template.innerHTML = html; // the host's templates escaped every value in it
    if (!template.content.querySelector("section.device")) return;
    report.replaceChildren(template.content);
    for (const section of report.querySelectorAll("section.device")) {
      const device = section.dataset.device;
      if (!sorts.has(device)) sorts.set(device, {});
      const table = section.querySelector("table.results");
      if (table) makeSortable(table, sorts.get(device));
    }
  }

  async function load() {
    detail = await api(`/campaigns/${encodeURIComponent(id)}`);
    renderDetail();
    const jobs = JSON.stringify([detail.status, detail.jobs]);
    if (jobs !== shownJobs) {
      shownJobs = jobs;
      await loadPanels();
    }
  }

  deployButton.addEventListener("click", async () => {
    const selection = Object.entries(detail.selection || {}).filter(([, s]) => s && s.candidate);
    const confirmed = await app.confirmAction({
      title: "Deploy the choices?",
      body: [
        h("p", {}, "Each device gets its chosen candidate, after a health check on the device; a device that fails it keeps its model."),
        h("ul", { class: "plan" }, selection.map(([device, s]) => h("li", {}, h("strong", {}, device), ` ← ${s.candidate}`))),
        h("label", {}, "Waves ", h("input", { name: "waves", value: "1,25%,100%", size: 14 }),
          h("span", { class: "hint" }, " devices per wave: counts or percentages")),
        h("label", {}, " Failures a wave may have ", h("input", { name: "max_failures", type: "number", min: 0, value: 0 })),
      ],
      confirmLabel: "Deploy",
    });
    if (!confirmed) return;
    try {
      const rollout = await app.act(() => api("/deployments", {
        method: "POST",
        body: { campaign_id: id, waves: String(confirmed.get("waves") || "100%"), max_failures: Number(confirmed.get("max_failures") || 0) },
      }));
      app.notify(`rollout ${rollout.rollout_id} created: ${rollout.devices.length} device(s)`, "success");
      app.go("#/deployments");
    } catch (err) {
      app.notify(`nothing was deployed: ${err.message}`, "error");
    }
  });

  cancelButton.addEventListener("click", async () => {
    const confirmed = await app.confirmAction({
      title: `Cancel campaign ${id}?`,
      body: h("p", {}, "A queued campaign never starts; a running one stops at its next device step and keeps what was measured."),
      confirmLabel: "Cancel campaign", danger: true,
    });
    if (!confirmed) return;
    try {
      await app.act(() => api(`/campaigns/${encodeURIComponent(id)}/cancel`, { method: "POST" }));
      refresh();
    } catch (err) {
      app.notify(err.message, "error");
    }
  });

  const refresh = debounce(() => load().catch((err) => app.notify(err.message, "error")), 400);
  const offEvents = app.onEvents((type, data) => {
    if (type === "campaign" && data.campaign_id === id) refresh();
  });
  refresh();
  return { dispose() { offEvents(); } };
}
