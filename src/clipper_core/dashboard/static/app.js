// The Clipper dashboard: one event stream in, tables and charts out, actions through the
// management API.  Everything here is plain JavaScript served from the Clipper package.

import * as api from "./api.js";
import { LineChart, PALETTE } from "./charts.js";
import { button, cell, setText, syncRows } from "./tables.js";

// the charts show at most the last five minutes (?window=SECONDS asks for less, down to 30)
const MIN_WINDOW_S = 30;
const WINDOW_S = Math.min(300, Math.max(MIN_WINDOW_S,
  parseInt(new URLSearchParams(location.search).get("window"), 10) || 300));
const RETRY_MS = 2000;
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ series kept for the charts

/** name -> array of [t, values]; only the last WINDOW_S seconds are kept. */
const series = { apps: new Map(), models: new Map(), weights: new Map() };
let frame = null;

function push(map, name, t, v) {
  let arr = map.get(name);
  if (!arr) map.set(name, (arr = []));
  arr.push([t, v]);
  const cut = t - WINDOW_S - 5;
  let drop = 0;
  while (drop < arr.length && arr[drop][0] < cut) drop++;
  if (drop) arr.splice(0, drop);
}

function addPoint(p) {
  for (const [name, v] of Object.entries(p.apps)) push(series.apps, name, p.t, v);
  for (const [name, v] of Object.entries(p.models)) push(series.models, name, p.t, v);
  for (const [name, v] of Object.entries(p.weights)) push(series.weights, name, p.t, v);
}

function prune(map, keep) {
  for (const k of [...map.keys()]) if (!keep.has(k)) map.delete(k);
}

function column(arr, i) {
  return (arr || []).map(([t, v]) => [t, v[i]]);
}

// ------------------------------------------------------------------ formatting

function ms(v) {
  if (v == null) return null;
  if (v < 1) return v.toFixed(2) + " ms";
  if (v < 100) return v.toFixed(1) + " ms";
  return Math.round(v) + " ms";
}
function rate(v) {
  if (v == null) return null;
  return v >= 100 ? Math.round(v).toLocaleString() : (Math.round(v * 10) / 10).toString();
}
function pct(v, digits = 1) {
  return v == null ? null : (v * 100).toFixed(digits) + " %";
}
function num(v) {
  return v == null ? null : (Math.round(v * 100) / 100).toString();
}
function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}
function bytes(n) {
  if (n == null) return "";
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}

// ------------------------------------------------------------------ connection and token

let controller = null;
let retryTimer = null;

function setConn(kind, text) {
  const c = $("conn");
  c.className = "pill pill-" + kind;
  c.textContent = text;
}

function needToken(message) {
  $("token-panel").hidden = false;
  $("token-message").textContent = message;
  setConn("bad", "token needed");
  $("token-input").focus();
}

function tokenAccepted() {
  $("token-panel").hidden = true;
  $("token-message").textContent = "";
  $("forget-token").hidden = !api.token();
}

function scheduleConnect(delay) {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, delay);
}

async function connect() {
  clearTimeout(retryTimer);
  if (controller) controller.abort();
  const mine = (controller = new AbortController());
  setConn("wait", "connecting…");
  try {
    await api.stream(onEvent, mine.signal);
  } catch (e) {
    if (mine.signal.aborted) return;
    if (e instanceof api.Refused && (e.status === 401 || e.status === 403)) {
      const had = api.token();
      api.setToken("");
      $("forget-token").hidden = true;
      needToken(had ? `The management API refused this token (${e.status}): ${e.message}`
                    : "");
      return;  // until a token is given
    }
  }
  if (mine.signal.aborted) return;
  setConn("bad", "disconnected, retrying…");
  scheduleConnect(RETRY_MS);
}

function onEvent(name, data) {
  if (name === "history") {
    for (const p of data) addPoint(p);
    tokenAccepted();
    setConn("live", "live");
    return;
  }
  if (name !== "frame") return;
  frame = data;
  addPoint(data.point);
  if (!document.hidden) render();
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = $("token-input").value.trim();
  $("token-input").value = "";
  if (!value) return;
  api.setToken(value);
  $("token-message").textContent = "";
  connect();
});

$("forget-token").addEventListener("click", () => {
  api.setToken("");
  $("forget-token").hidden = true;
  connect();
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && frame) render();
});

// ------------------------------------------------------------------ actions

function showAnswer(what, res) {
  const box = $("answer");
  box.hidden = false;
  if (res.ok) {
    box.className = "answer ok";
    box.textContent = "✓ " + what + ": " + summarize(res.data);
  } else {
    const d = res.data || {};
    box.className = "answer bad";
    box.textContent = `✗ ${what} refused (${res.status} ${d.error || ""}): ${d.cause || ""}`;
    if (res.status === 401) {
      api.setToken("");
      needToken(`The management API refused the token (${res.status}): ${d.cause || ""}`);
    }
  }
}

function summarize(d) {
  if (d && d.model) {
    const m = d.model;
    return `model ${m.model_name} version ${m.model_version}, ${m.num_replicas} replica(s)`;
  }
  if (d && d.batching) {
    return Object.entries(d.batching).map(([k, v]) => `${k}=${v}`).join(", ");
  }
  return JSON.stringify(d);
}

async function act(what, route, body, btn) {
  if (btn) btn.disabled = true;
  try {
    showAnswer(what, await api.call(route, body));
  } catch (e) {
    showAnswer(what, { ok: false, status: 0, data: { error: "network", cause: String(e) } });
  } finally {
    if (btn) btn.disabled = false;
  }
}

$("batching-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const m = (frame?.models || []).find((x) => x.label === $("batching-model").value);
  if (!m) return;
  const body = { model_name: m.name, model_version: m.version };
  const size = $("batching-size").value, wait = $("batching-wait").value,
        inflight = $("batching-inflight").value;
  if (size !== "") body.batch_size = parseInt(size, 10);
  if (wait !== "") body.batch_wait_ms = parseFloat(wait);
  if (inflight !== "") body.max_in_flight = parseInt(inflight, 10);
  if (Object.keys(body).length === 2) {
    showAnswer("batching of " + m.label, { ok: false, status: 400,
      data: { error: "nothing_to_change", cause: "give a batch size, a wait or batches in flight" } });
    return;
  }
  act("batching of " + m.label, "/admin/set_batching", body, $("batching-apply"));
});

// ------------------------------------------------------------------ rendering

const charts = new Map();

function chart(id, container, opts) {
  let c = charts.get(id);
  if (!c) {
    c = new LineChart(container, { id, ...opts });
    charts.set(id, c);
  }
  c.seen = true;
  return c;
}

/** The charts' time span: what the page has seen, from 30 s up to five minutes. */
function span(now) {
  let first = now;
  for (const map of [series.apps, series.models])
    for (const arr of map.values()) if (arr.length && arr[0][0] < first) first = arr[0][0];
  return Math.min(WINDOW_S, Math.max(MIN_WINDOW_S, Math.ceil((now - first) / 10) * 10));
}

let windowS = MIN_WINDOW_S;

function render() {
  const f = frame;
  windowS = span(f.t);
  setText($("updated"), "updated " + clock(f.t));
  if (f.cache) {
    setText($("cache"), `cache ${bytes(f.cache.bytes_used)} of ${bytes(f.cache.capacity_bytes)}, ` +
                        `${f.cache.entries} entries`);
  }
  if (f.feed && f.feed.frames) {
    setText($("feed-cost"), `This page costs the server ${(f.feed.cpu_ms / f.feed.frames).toFixed(2)} ms ` +
                            `of CPU per frame.`);
  }
  for (const c of charts.values()) c.seen = false;
  renderApps(f);
  renderModels(f);
  renderReplicas(f);
  renderSelection(f);
  renderBatching(f);
  renderEvents(f);
  for (const [id, c] of charts) {
    if (!c.seen) {
      c.remove();
      charts.delete(id);
    }
  }
  prune(series.apps, new Set(f.apps.map((a) => a.name)));
  prune(series.models, new Set(f.models.map((m) => m.label)));
  prune(series.weights, new Set(Object.keys(f.selection)));
}

function renderApps(f) {
  const tbody = $("apps-table").tBodies[0];
  $("apps-empty").hidden = f.apps.length > 0;
  syncRows(tbody, f.apps, (a) => a.name, () => {
    const tr = document.createElement("tr");
    for (let i = 0; i < 14; i++) cell(tr, i >= 5 ? "num" : "");
    return tr;
  }, (tr, a) => {
    const c = tr.cells;
    setText(c[0], a.name);
    setText(c[1], a.input_type);
    setText(c[2], a.policy);
    setText(c[3], a.models.join(", ") || "none linked");
    setText(c[4], JSON.stringify(a.default_output) ?? "none");
    setText(c[5], ms(a.slo_ms));
    setText(c[6], rate(a.rate));
    setText(c[7], ms(a.p50_ms));
    setText(c[8], ms(a.p99_ms), a.p99_ms == null ? "" :
            a.p99_ms > a.slo_ms ? "bad" : a.p99_ms > 0.8 * a.slo_ms ? "warn" : "good");
    setText(c[9], pct(a.within_slo, 2), a.within_slo == null ? "" :
            a.within_slo < 0.99 ? "bad" : a.within_slo < 0.999 ? "warn" : "good");
    setText(c[10], rate(a.default_rate), a.default_rate > 0 ? "warn" : "");
    setText(c[11], rate(a.shed_rate), a.shed_rate > 0 ? "bad" : "");
    setText(c[12], rate(a.error_rate), a.error_rate > 0 ? "bad" : "");
    setText(c[13], a.cache_enabled ? pct(a.cache_hit) : "off");
  });
  const box = $("app-charts");
  for (const a of f.apps) {
    const pts = series.apps.get(a.name);
    chart("app-rate:" + a.name, box, {
      title: `${a.name}: throughput`, unit: "queries/s",
      series: [{ key: "rate", label: "answered", color: PALETTE[0] }],
    }).update(new Map([["rate", column(pts, 0)]]), {}, f.t, windowS);
    chart("app-latency:" + a.name, box, {
      title: `${a.name}: latency`, unit: "ms",
      series: [{ key: "p50", label: "p50", color: PALETTE[2] },
               { key: "p99", label: "p99", color: PALETTE[1] }],
      refLabels: { slo: `SLO ${ms(a.slo_ms)}` },
      capAt: (refs) => 4 * refs.slo,
    }).update(new Map([["p50", column(pts, 1)], ["p99", column(pts, 2)]]),
              { slo: a.slo_ms }, f.t, windowS);
    chart("app-outcomes:" + a.name, box, {
      title: `${a.name}: not from a model`, unit: "queries/s",
      series: [{ key: "default", label: "default output", color: PALETTE[1] },
               { key: "shed", label: "shed", color: PALETTE[4] },
               { key: "error", label: "errors", color: PALETTE[7] }],
    }).update(new Map([["default", column(pts, 5)], ["shed", column(pts, 6)],
                       ["error", column(pts, 7)]]), {}, f.t, windowS);
  }
}

function renderModels(f) {
  const tbody = $("models-table").tBodies[0];
  $("models-empty").hidden = f.models.length > 0;
  syncRows(tbody, f.models, (m) => m.label, (m) => {
    const tr = document.createElement("tr");
    for (let i = 0; i < 10; i++) cell(tr, i >= 3 ? "num" : "");
    const actions = cell(tr, "actions");
    const roll = button("Make current", (ev) => act(
      `make ${m.label} current`, "/admin/set_model_version",
      { model_name: m.name, model_version: m.version }, ev.target), "secondary");
    roll.dataset.action = "set-version";
    actions.appendChild(roll);
    if (m.kind !== "external") {
      const n = document.createElement("input");
      n.type = "number";
      n.min = "0";
      n.max = "256";
      n.value = String(m.target_replicas);
      n.setAttribute("aria-label", `replicas of ${m.label}`);
      const scale = button("Scale", (ev) => act(
        `scale ${m.label} to ${n.value}`, "/admin/set_num_replicas",
        { model_name: m.name, model_version: m.version, num_replicas: parseInt(n.value, 10) },
        ev.target));
      scale.dataset.action = "scale";
      actions.appendChild(n);
      actions.appendChild(scale);
    }
    return tr;
  }, (tr, m) => {
    const c = tr.cells;
    setText(c[0], m.name);
    if (c[1].dataset.v !== `${m.version}/${m.current}`) {
      c[1].dataset.v = `${m.version}/${m.current}`;
      c[1].textContent = m.version + " ";
      if (m.current) {
        const b = document.createElement("span");
        b.className = "badge current";
        b.textContent = "current";
        c[1].appendChild(b);
      }
    }
    tr.classList.toggle("current", m.current);
    setText(c[2], m.input_type);
    const up = m.up ?? 0;
    setText(c[3], m.kind === "external" ? `${up} up (external)` : `${up} up / ${m.target_replicas}`,
            up < (m.kind === "external" ? 1 : m.target_replicas) ? "bad" : "");
    setText(c[4], rate(m.rate));
    setText(c[5], m.queue_depth);
    setText(c[6], num(m.batch_mean));
    setText(c[7], Object.values(m.aimd || {}).join(", ") || null);
    setText(c[8], ms(m.compute_ms));
    setText(c[9], `${m.shed ?? 0} · ${m.expired ?? 0} · ${m.errors ?? 0}`);
    tr.querySelector('[data-action="set-version"]').hidden = m.current;
  });
  const box = $("model-charts");
  for (const m of f.models) {
    const pts = series.models.get(m.label);
    // a version that is not current shows charts only while it has had queries to show
    if (!m.current && !(pts || []).some(([, v]) => v[4] > 0 || v[1] > 0)) continue;
    chart("model-batch:" + m.label, box, {
      title: `${m.label}: batch size`, unit: "queries",
      series: [{ key: "mean", label: "mean per batch", color: PALETTE[0] },
               { key: "aimd", label: "AIMD maximum", color: PALETTE[3], dash: true }],
    }).update(new Map([["mean", column(pts, 0)], ["aimd", column(pts, 3)]]), {}, f.t, windowS);
    chart("model-queue:" + m.label, box, {
      title: `${m.label}: queue depth`, unit: "queries",
      series: [{ key: "queue", label: "waiting", color: PALETTE[4] }],
    }).update(new Map([["queue", column(pts, 1)]]), {}, f.t, windowS);
    chart("model-compute:" + m.label, box, {
      title: `${m.label}: model compute`, unit: "ms per batch",
      series: [{ key: "compute", label: "compute", color: PALETTE[2] }],
    }).update(new Map([["compute", column(pts, 2)]]), {}, f.t, windowS);
  }
}

function renderReplicas(f) {
  const aimd = {};
  for (const m of f.models) Object.assign(aimd, m.aimd || {});
  const rows = [...f.replicas].sort((a, b) =>
    `${a.model_name}:${a.model_version}:${a.instance_id}`.localeCompare(
      `${b.model_name}:${b.model_version}:${b.instance_id}`));
  $("replicas-empty").hidden = rows.length > 0;
  syncRows($("replicas-table").tBodies[0], rows, (r) => r.instance_id, () => {
    const tr = document.createElement("tr");
    for (let i = 0; i < 10; i++) cell(tr, [5, 8, 9].includes(i) ? "num" : "");
    return tr;
  }, (tr, r) => {
    const c = tr.cells;
    setText(c[0], `${r.model_name}:${r.model_version}`);
    setText(c[1], r.instance_id);
    setText(c[2], r.backend || r.manager || "–");
    setText(c[3], r.host || (r.manager === "local" ? "this machine" : null));
    setText(c[4], r.gpu ?? (r.gpus && r.gpus.length ? r.gpus.join(",") : null));
    setText(c[5], r.pid);
    setText(c[6], r.state);
    const health = r.healthy ? "healthy" : r.connected ? "suspect" : "not connected";
    setText(c[7], health, r.healthy ? "good" : r.connected ? "warn" : "bad");
    setText(c[8], r.restarts ?? 0, r.restarts > 0 ? "warn" : "");
    setText(c[9], aimd[r.instance_id]);
  });
}

function renderSelection(f) {
  const rows = [];
  for (const [app, s] of Object.entries(f.selection)) {
    for (const [model, m] of Object.entries(s.models)) rows.push({ app, policy: s.policy, model, ...m });
  }
  $("selection-empty").hidden = rows.length > 0;
  syncRows($("selection-table").tBodies[0], rows, (r) => r.app + "/" + r.model, () => {
    const tr = document.createElement("tr");
    for (let i = 0; i < 8; i++) cell(tr, i >= 3 ? "num" : "");
    return tr;
  }, (tr, r) => {
    const c = tr.cells;
    setText(c[0], r.app);
    setText(c[1], r.policy);
    setText(c[2], r.model);
    setText(c[3], r.weight == null ? null : r.weight.toFixed(3));
    setText(c[4], r.selected);
    setText(c[5], rate(r.selected_rate));
    setText(c[6], r.feedback);
    setText(c[7], r.mean_loss == null ? null : r.mean_loss.toFixed(3));
  });
  const box = $("selection-charts");
  for (const [app, s] of Object.entries(f.selection)) {
    const models = Object.keys(s.models);
    if (models.length < 2 && s.policy === "single") continue;
    const pts = series.weights.get(app) || [];
    const data = new Map(models.map((m) => [m, pts.map(([t, w]) => [t, w[m] ?? null])]));
    chart("weights:" + app, box, {
      title: `${app}: ${s.policy} weights`, unit: "per model", shares: true,
    }).update(data, {}, f.t, windowS);
  }
}

function renderBatching(f) {
  const sel = $("batching-model");
  const labels = f.models.map((m) => m.label);
  const have = [...sel.options].map((o) => o.value);
  if (have.join("\n") !== labels.join("\n")) {
    const keep = sel.value;
    sel.replaceChildren(...labels.map((l) => new Option(l, l)));
    if (labels.includes(keep)) sel.value = keep;
    else {
      const cur = f.models.find((m) => m.current);
      if (cur) sel.value = cur.label;
    }
  }
  const m = f.models.find((x) => x.label === sel.value);
  const b = m && m.batching;
  setText($("batching-now"), b ? `Now: maximum batch size ${b.batch_size === -1 ? "adaptive (AIMD)" : b.batch_size}, ` +
    `wait ${b.batch_wait_ms == null ? "automatic" : b.batch_wait_ms + " ms"}, ` +
    `${b.max_in_flight} batch(es) in flight per replica, AIMD step ${b.aimd_step}.` : "");
}

$("batching-model").addEventListener("change", () => frame && renderBatching(frame));

function renderEvents(f) {
  const list = $("events-list");
  const evs = [...f.events].reverse();
  $("events-empty").hidden = evs.length > 0;
  syncRows(list, evs, (e) => String(e.seq), () => {
    const li = document.createElement("li");
    for (let i = 0; i < 3; i++) li.appendChild(document.createElement("span"));
    return li;
  }, (li, e) => {
    const c = li.children;
    setText(c[0], clock(e.time));
    setText(c[1], e.level === "INFO" ? "refused" : e.level.toLowerCase(),
            e.level === "INFO" ? "warn" : "bad");
    setText(c[2], e.message + (e.count > 1 ? `  ×${e.count}` : ""));
  });
}

connect();
