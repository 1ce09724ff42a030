// Small DOM helpers. Every piece of text from the API goes in as a text node, never as markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function h(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

export function s(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function fmt(value, digits = 1, unit = "") {
  if (value === null || value === undefined || !Number.isFinite(value)) return "n/a";
  return `${value.toFixed(digits)}${unit}`;
}

export function ago(ts) {
  if (!ts) return "never";
  const seconds = Math.max(0, Date.now() / 1000 - ts);
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

export function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "";
}

export function shortSha(sha) {
  return sha ? sha.slice(0, 12) : "";
}

// A line of the last samples; the scale is fixed (min/max given) or fitted to the values.
export function sparkline(values, { min = null, max = null, width = 110, height = 24, label = "" } = {}) {
  const finite = values.filter((v) => Number.isFinite(v));
  const box = s("svg", {
    class: "spark", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": label, "data-points": finite.length,
  });
  if (finite.length === 0) return box;
  let lo = min ?? Math.min(...finite);
  let hi = max ?? Math.max(...finite);
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const step = values.length > 1 ? (width - 2) / (values.length - 1) : 0;
  const points = [];
  values.forEach((v, i) => {
    if (!Number.isFinite(v)) return;
    const x = 1 + i * step;
    const y = height - 2 - ((v - lo) / (hi - lo)) * (height - 4);
    points.push(`${x.toFixed(1)},${y.toFixed(1)}`);
  });
  box.append(s("title", {}, label));
  if (points.length === 1) {
    const [x, y] = points[0].split(",");
    box.append(s("circle", { cx: x, cy: y, r: 2 }));
  } else {
    box.append(s("polyline", { points: points.join(" ") }));
  }
  return box;
}

// Click a header to sort by that column (numbers by their data-sort value, the rest as text);
// click again to reverse. `keep` remembers the choice across re-renders of the same table.
export function makeSortable(table, keep = {}) {
  const heads = [...table.querySelectorAll("thead th")];
  const apply = () => {
    if (keep.column === undefined) return;
    const body = table.tBodies[0];
    if (!body) return;
    const rows = [...body.rows];
    const key = (row) => {
      const cell = row.cells[keep.column];
      if (!cell) return null;
      if (cell.dataset.sort !== undefined) return Number(cell.dataset.sort);
      return cell.textContent.trim().toLowerCase();
    };
    rows.sort((a, b) => {
      const ka = key(a);
      const kb = key(b);
      // Cells with nothing to sort by (failed rows) stay at the bottom either way.
      if (ka === null || ka === "n/a" || ka === "") return 1;
      if (kb === null || kb === "n/a" || kb === "") return -1;
      const order = typeof ka === "number" && typeof kb === "number"
        ? ka - kb
        : String(ka).localeCompare(String(kb), undefined, { numeric: true });
      return keep.descending ? -order : order;
    });
    body.append(...rows);
    heads.forEach((th, i) => {
      th.setAttribute("aria-sort", i === keep.column ? (keep.descending ? "descending" : "ascending") : "none");
    });
  };
  heads.forEach((th, index) => {
    th.classList.add("sortable");
    th.tabIndex = 0;
    const choose = () => {
      keep.descending = keep.column === index ? !keep.descending : false;
      keep.column = index;
      apply();
    };
    th.addEventListener("click", choose);
    th.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); choose(); } });
  });
  apply();
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
