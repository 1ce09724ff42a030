// Searches: the list, and a search's page followed live: per device the choice (always a board
// measurement), the trials with what was measured, predicted and skipped and why, and the
// predictor's figures against the board's.

import { api } from "./api.js";
import { debounce, fmt, h, makeSortable, when } from "./dom.js";

function badge(status) {
  return h("span", { class: `badge status-${status}`, "data-status": status }, status);
}

function counts(decisions) {
  return Object.entries(decisions || {}).sort().map(([k, v]) => `${v} ${k}`).join(", ") || "no trial yet";
}

export function searchListView(root, app) {
  const body = h("tbody");
  root.append(h("section", {}, h("h1", {}, "Searches"),
    h("p", { class: "muted" }, "Per-device searches with board measurements in the loop: ",
      h("code", {}, "edgetailor search"), " or POST /api/v1/searches."),
    h("table", { class: "searches" },
      h("thead", {}, h("tr", {}, ["search", "status", "model", "devices", "trials", "board measurements", "updated"].map((t) => h("th", {}, t)))),
      body)));

  async function load() {
    const searches = await api("/searches");
    body.replaceChildren(...searches.reverse().map((s) => h("tr", { "data-search": s.search_id },
      h("td", {}, h("a", { href: `#/searches/${encodeURIComponent(s.search_id)}` }, s.search_id)),
      h("td", {}, badge(s.status)), h("td", {}, s.model || ""), h("td", {}, s.devices.join(", ")),
      h("td", { class: "num" }, s.trials), h("td", { class: "num" }, s.measured),
      h("td", {}, when(s.updated)))));
    if (!searches.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "no search yet")));
  }
  const reload = debounce(() => load().catch((err) => app.notify(err.message, "error")), 300);
  reload();
  const off = app.onEvents((type) => { if (type === "search") reload(); });
  return { dispose: off };
}

function trialRow(t) {
  const p = t.prediction || {};
  const predicted = p.known ? fmt(p.latency_p90_ms, 3) : "unknown class";
  const interval = p.known && p.latency_interval ? `${fmt(p.latency_interval[0], 3)} – ${fmt(p.latency_interval[1], 3)}` : "";
  const steps = (t.recipe || []).map((s) => s.technique).join(" → ") || "baseline";
  return h("tr", { "data-decision": t.decision },
    h("td", { class: "num" }, t.trial), h("td", {}, h("span", { class: `badge state-${t.decision}` }, t.decision)),
    h("td", {}, steps), h("td", { class: "num" }, fmt((t.host || {}).metric_value, 4)),
    h("td", { class: "num" }, predicted), h("td", {}, interval), h("td", { class: "detail" }, t.reason));
}

function devicePanel(device, doc) {
  const sel = doc.selection || {};
  const cand = sel.candidate || {};
  const pairs = h("table", { class: "pairs" },
    h("thead", {}, h("tr", {}, ["trial", "predicted p90 ms", "measured p90 ms", "rel. error"].map((t) => h("th", {}, t)))),
    h("tbody", {}, (doc.measured_vs_predicted || []).map((p) => h("tr", {},
      h("td", { class: "num" }, p.trial), h("td", { class: "num" }, fmt(p.predicted_p90_ms, 3)),
      h("td", { class: "num" }, fmt(p.measured_p90_ms, 3)), h("td", { class: "num" }, `${fmt(100 * p.rel_error, 1)}%`)))));
  const trials = h("table", { class: "trials" },
    h("thead", {}, h("tr", {}, ["#", "decision", "steps", "host metric", "predicted p90 ms", "80% interval", "why"].map((t) => h("th", {}, t)))),
    h("tbody", {}, (doc.trials || []).map(trialRow)));
  makeSortable(trials);
  return h("section", { class: "search-device", "data-device": device },
    h("h2", {}, device),
    h("p", { class: "choice" }, h("strong", {}, sel.chosen || "nothing chosen yet"),
      cand.latency_ms ? ` — p90 ${fmt(cand.latency_ms.p90, 3)} ms, ${cand.metric} ${fmt(cand.metric_value, 4)} (measured on the board)` : ""),
    h("p", { class: "reason" }, sel.reason || ""),
    h("p", { class: "muted" }, `${doc.board_measurements} of ${doc.budget} board measurements; ${counts(doc.decisions)}`),
    h("h3", {}, "Measured against predicted"), pairs,
    h("h3", {}, "Trials"), trials);
}

export function searchView(root, app, id) {
  const head = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const panels = h("div", { class: "search-devices" });
  root.append(h("section", {}, h("h1", {}, "Search ", h("span", { class: "id" }, id)), head, panels));

  async function load() {
    const doc = await api(`/searches/${encodeURIComponent(id)}`);
    const s = doc.search;
    const predictor = doc.predictor || {};
    head.replaceChildren(...[
      h("p", {}, badge(s.status), ` ${s.spec.model} on ${s.spec.devices.join(", ")}; constraints: ${(s.spec.constraints || []).join(", ") || "none"}; objective ${s.spec.objective}`),
      s.error ? h("p", { class: "error" }, s.error) : null,
      predictor.median_rel_error != null
        ? h("p", { class: "muted" }, `predictor held-out error: median ${fmt(100 * predictor.median_rel_error, 1)}%, p90 ${fmt(100 * predictor.p90_rel_error, 1)}% over ${predictor.held_out} results`)
        : null,
      h("h2", {}, "Layer sensitivity"),
      h("table", { class: "sensitivity" },
        h("thead", {}, h("tr", {}, ["group", "params", "prune 50% drop", "int8 drop"].map((t) => h("th", {}, t)))),
        h("tbody", {}, (doc.sensitivity || []).map((g) => h("tr", {},
          h("td", {}, g.group.name), h("td", { class: "num" }, g.group.params),
          h("td", { class: "num" }, fmt(g.prune_drop, 4)), h("td", { class: "num" }, fmt(g.int8_drop, 4)))))),
    ].filter(Boolean));
    panels.replaceChildren(...Object.entries(doc.devices).map(([device, d]) => devicePanel(device, d)));
  }
  const reload = debounce(() => load().catch((err) => app.notify(err.message, "error")), 300);
  reload();
  const off = app.onEvents((type, data) => { if (type === "search" && data.search_id === id) reload(); });
  return { dispose: off };
}
