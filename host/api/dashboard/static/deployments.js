// Deployments: each rollout with its waves and every device's state, to roll back or cancel.

import { api } from "./api.js";
import { debounce, h, shortSha, when } from "./dom.js";

// Waves and the current one are counted from 1, as the API gives them.
function waveText(r) {
  const sizes = r.waves.map((w) => w.length).join(" + ");
  const now = r.current_wave ? `wave ${r.current_wave} of ${r.waves.length}` : "no wave started yet";
  return `${r.waves.length} wave${r.waves.length === 1 ? "" : "s"} (${sizes} devices), ${now}; ` +
    `at most ${r.max_failures} failure${r.max_failures === 1 ? "" : "s"} per wave; created ${when(r.created)}`;
}

export function deploymentsView(root, app) {
  const list = h("div", { class: "rollouts" }, h("p", { class: "muted" }, "Loading…"));
  root.append(h("section", {}, h("h1", {}, "Deployments"), list));

  async function act(rollout, action) {
    const rollback = action === "rollback";
    const confirmed = await app.confirmAction({
      title: rollback ? `Roll back rollout ${rollout.rollout_id}?` : `Cancel rollout ${rollout.rollout_id}?`,
      body: h("p", {}, rollback
        ? "Nothing more is sent, and every device this rollout committed on goes back to the model it ran before."
        : "Nothing more is sent; what was sent finishes (roll it back to undo it)."),
      confirmLabel: rollback ? "Roll back" : "Cancel rollout",
      danger: true,
    });
    if (!confirmed) return;
    try {
      const doc = await app.act(() => api(`/deployments/${encodeURIComponent(rollout.rollout_id)}/${action}`, { method: "POST" }));
      app.notify(`rollout ${doc.rollout_id}: ${doc.status}`, "success");
      refresh();
    } catch (err) {
      app.notify(err.message, "error");
    }
  }

  function card(r) {
    const devices = h("table", { class: "targets" },
      h("thead", {}, h("tr", {}, ["device", "wave", "model", "state", "stage", "detail"].map((t) => h("th", {}, t)))),
      h("tbody", {}, r.devices.map((d) => h("tr", { "data-device": d.device_id, "data-state": d.state },
        h("td", {}, d.device_id), h("td", { class: "num" }, d.wave),
        h("td", { title: d.sha256 }, d.label || shortSha(d.sha256)),
        h("td", {}, h("span", { class: `badge state-${d.state}` }, d.state)),
        h("td", {}, d.stage || ""), h("td", { class: "detail" }, d.detail || "")))));
    return h("article", { class: "rollout", "data-rollout": r.rollout_id, "data-status": r.status },
      h("header", {},
        h("h2", {}, r.label ? `campaign ${r.label} ` : "", h("span", { class: "id" }, r.rollout_id), " ",
          h("span", { class: `badge status-${r.status}` }, r.status)),
        h("div", { class: "muted" }, waveText(r)),
        r.reason ? h("div", { class: "reason" }, r.reason) : null),
      devices,
      h("div", { class: "buttons" },
        h("button", { type: "button", class: "rollback danger-outline", onclick: () => act(r, "rollback"),
          disabled: r.status === "rolled_back" }, "Roll back…"),
        h("button", { type: "button", class: "cancel", onclick: () => act(r, "cancel"),
          disabled: r.status !== "active" }, "Cancel…")));
  }

  async function load() {
    const rollouts = await api("/deployments");
    list.replaceChildren(...(rollouts.length
      ? rollouts.map(card)
      : [h("p", { class: "muted" }, "No deployment yet: deploy a campaign's choices from its page.")]));
  }

  const refresh = debounce(() => load().catch((err) => app.notify(err.message, "error")), 300);
  const offEvents = app.onEvents((type) => { if (type === "deployment") refresh(); });
  refresh();
  return { dispose() { offEvents(); } };
}
