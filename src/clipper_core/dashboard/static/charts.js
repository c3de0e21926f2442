// Line charts in SVG, written for this page: time on x (a fixed window ending now), one path per
// series, optional dashed reference lines (the SLO).  Elements are created once and updated in
// place each second, so a page left open keeps the same DOM and a flat memory.

const NS = "http://www.w3.org/2000/svg";
const W = 480, H = 150;
const PAD = { left: 44, right: 10, top: 8, bottom: 18 };

export const PALETTE = ["#2f6fed", "#e8710a", "#1f9d57", "#9334e6", "#d01884", "#12a4af",
                        "#7a5c00", "#5f6368"];

function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 4, 5, 10]) if (v <= m * p) return m * p;  // halves stay round
  return 10 * p;
}

function fmt(v) {
  if (v === 0) return "0";
  if (Math.abs(v) >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k";
  if (Math.abs(v) >= 10) return Number.isInteger(v) ? v.toFixed(0) : v.toFixed(1);
  if (Math.abs(v) >= 1) return v.toFixed(1).replace(/\.0$/, "");
  return v.toPrecision(2);
}

export class LineChart {
  /**
   * container: element the chart goes into; opts: {title, unit, id, series: [{key, label,
   * color, dash}], refLabels: {key: label}, shares (values are mostly in [0, 1]),
   * capAt(refs) (the most the y axis shows)}
   */
  constructor(container, opts) {
    this.opts = opts;
    this.root = document.createElement("div");
    this.root.className = "chart";
    if (opts.id) this.root.dataset.chart = opts.id;
    const h = document.createElement("h3");
    h.textContent = opts.title;
    if (opts.unit) {
      const u = document.createElement("span");
      u.className = "muted";
      u.textContent = " · " + opts.unit;
      h.appendChild(u);
    }
    this.root.appendChild(h);
    this.legend = document.createElement("div");
    this.legend.className = "legend";
    this.root.appendChild(this.legend);
    this.svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.title });
    this.gridG = el("g", {}, this.svg);
    this.refG = el("g", {}, this.svg);
    this.seriesG = el("g", {}, this.svg);
    this.axisG = el("g", {}, this.svg);
    this.paths = new Map();
    this.refs = new Map();
    this.legendKeys = new Set();
    this.ticks = [];
    for (let i = 0; i < 3; i++) {
      const y = PAD.top + (H - PAD.top - PAD.bottom) * i / 2;
      el("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: y, y2: y }, this.gridG);
      const t = el("text", { class: "axis", x: PAD.left - 5, y: y + 3, "text-anchor": "end" },
                   this.axisG);
      this.ticks.push(t);
    }
    const x0 = el("text", { class: "axis", x: PAD.left, y: H - 4 }, this.axisG);
    const x1 = el("text", { class: "axis", x: W - PAD.right, y: H - 4, "text-anchor": "end" },
                  this.axisG);
    this.xLabels = [x0, x1];
    this.root.appendChild(this.svg);
    if (opts.capAt) {
      this.capNote = el("text", { class: "axis cap-note", x: PAD.left + 4, y: PAD.top + 9 },
                        this.axisG);
      this.capNote.textContent = "▲ above the scale";
    }
    container.appendChild(this.root);
    for (const s of opts.series || []) this.ensureSeries(s);
  }

  ensureSeries(s) {
    if (this.paths.has(s.key)) return this.paths.get(s.key);
    const color = s.color || PALETTE[this.paths.size % PALETTE.length];
    const p = el("path", { class: "series", stroke: color, d: "", "data-series": s.key },
                 this.seriesG);
    if (s.dash) p.setAttribute("stroke-dasharray", "3 3");
    this.paths.set(s.key, p);
    this.addLegend(s.key, s.label || s.key, color, false);
    return p;
  }

  addLegend(key, label, color, dashed) {
    if (this.legendKeys.has(key)) return;
    this.legendKeys.add(key);
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = color;
    if (dashed) {
      swatch.className = "dash";
      swatch.style.color = color;
    }
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(label));
    this.legend.appendChild(item);
  }

  remove() {
    this.root.remove();
  }

  /**
   * data: Map key -> array of [t (s), value|null]; refs: {key: value}; now and windowS in
   * seconds.  Gaps (null) break the line.
   */
  update(data, refs, now, windowS) {
    const t0 = now - windowS;
    let max = 0;
    for (const pts of data.values())
      for (const [t, v] of pts) if (t >= t0 && v != null && v > max) max = v;
    for (const v of Object.values(refs || {})) if (v != null && v > max) max = v;
    max = this.opts.shares && max <= 1 ? 1 : niceMax(max * 1.1);
    // a latency chart keeps its SLO line readable: values above the cap are drawn at the top
    const cap = this.opts.capAt ? this.opts.capAt(refs || {}) : null;
    const clipped = cap != null && max > cap;
    if (clipped) max = niceMax(cap);
    this.root.classList.toggle("clipped", clipped);
    const iw = W - PAD.left - PAD.right, ih = H - PAD.top - PAD.bottom;
    const x = (t) => PAD.left + iw * (t - t0) / windowS;
    const y = (v) => PAD.top + ih * (1 - Math.min(v, max) / max);
    for (const [key, pts] of data) {
      const path = this.ensureSeries({ key, label: key });
      const parts = [];
      let pen = "M";
      for (const [t, v] of pts) {
        if (t < t0) continue;
        if (v == null) { pen = "M"; continue; }
        parts.push(pen + x(t).toFixed(1) + "," + y(v).toFixed(1));
        pen = "L";
      }
      path.setAttribute("d", parts.join(""));
      const last = pts.length ? pts[pts.length - 1][1] : null;
      path.dataset.last = last == null ? "" : String(last);
    }
    for (const [key, v] of Object.entries(refs || {})) {
      let line = this.refs.get(key);
      if (!line) {
        line = el("line", { class: key, "data-ref": key }, this.refG);
        this.refs.set(key, line);
        this.addLegend("ref:" + key, (this.opts.refLabels || {})[key] || key,
                       "#d23f3f", true);
      }
      const yy = v == null ? -10 : y(v);
      line.setAttribute("x1", PAD.left);
      line.setAttribute("x2", W - PAD.right);
      line.setAttribute("y1", yy.toFixed(1));
      line.setAttribute("y2", yy.toFixed(1));
    }
    for (let i = 0; i < 3; i++) this.ticks[i].textContent = fmt(max * (1 - i / 2));
    this.xLabels[0].textContent = windowS >= 120 ? `−${Math.round(windowS / 60)} min`
                                                 : `−${Math.round(windowS)} s`;
    this.xLabels[1].textContent = "now";
  }
}
