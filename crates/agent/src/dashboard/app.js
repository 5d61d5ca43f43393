// pgwarden dashboard: renders the view GET /events pushes (server-sent
// events) and runs operations through the agents' API with the token kept
// in sessionStorage. No library, nothing fetched from elsewhere.
"use strict";

const WINDOW_MS = 5 * 60 * 1000;
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"];
const DASHES = ["", "6 3", "2 3", "8 3 2 3", "1 2", "10 4", "4 4"];

const $ = (id) => document.getElementById(id);
const samples = new Map(); // member -> [{t, bytes, secs}]
let view = null;
let viewAt = 0;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function bytes(n) {
  if (n == null) return "–";
  const u = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function secs(s) { return s == null ? "–" : s < 10 ? s.toFixed(2) + " s" : s.toFixed(0) + " s"; }

function roleText(r) {
  return { leader: "Leader", sync_standby: "Sync standby", replica: "Replica",
    primary: "Primary (no lease)", stopped: "Stopped", uninitialized: "Uninitialized" }[r] || r;
}

function replication(m, v) {
  if (m.role === "leader") return "primary";
  if (m.state !== "streaming") return m.state === "running" ? "not streaming" : m.state;
  if (m.role === "sync_standby") return v.sync_mode === "quorum" ? "streaming, quorum" : "streaming, sync";
  return "streaming, async";
}

// ---- the live view --------------------------------------------------

function connect() {
  const es = new EventSource("/events");
  es.addEventListener("view", (e) => {
    let v;
    try { v = JSON.parse(e.data); } catch (_) { return; }
    if (v.error) { setConn("lost", "agent: " + v.error); return; }
    setConn("live", v.fresh ? "live" : "live (DCS not answering: last known state)");
    view = v; viewAt = Date.now();
    record(v);
    render(v);
  });
  es.onerror = () => setConn("lost", "connection lost: reconnecting…");
}

function setConn(state, text) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = text;
}

function record(v) {
  const now = Date.now();
  for (const m of v.cluster.members) {
    const n = v.nodes[m.name] && v.nodes[m.name].info;
    const lagB = m.role === "leader" ? 0 : m.lag;
    const lagS = m.role === "leader" ? 0 : n ? n.replay_delay_s : null;
    if (!samples.has(m.name)) samples.set(m.name, []);
    samples.get(m.name).push({ t: now, bytes: lagB, secs: lagS });
  }
  for (const [k, arr] of samples) {
    while (arr.length && arr[0].t < now - WINDOW_MS) arr.shift();
    if (!arr.length) samples.delete(k);
  }
}

function render(v) {
  const c = v.cluster;
  document.body.dataset.leader = c.leader || "";
  $("served-by").textContent = v.served_by;
  $("lease-holder").textContent = c.leader || "none (no leader)";
  $("lease-epoch").textContent = c.epoch == null ? "–" : c.epoch;
  $("paused").textContent = c.paused ? "ON: no automatic failover" : "off";
  $("paused").className = c.paused ? "yes" : "";
  $("sync-mode").textContent = v.sync_mode;
  $("pending").textContent = c.pending ? pendingText(c.pending) : "none";
  renderExpiry();
  renderMembers(v);
  renderProxies(c.proxies || { proxies: [] });
  renderCandidates(v);
  renderHistory(v.history);
  renderCharts();
}

function pendingText(p) {
  const to = p.candidate || p.chosen || "the best standby";
  return (p.leader ? "switchover from " + p.leader : "failover") + " to " + to +
    (p.scheduled_at_ms ? " at " + new Date(p.scheduled_at_ms).toLocaleString() : "");
}

function renderExpiry() {
  const out = $("lease-expiry");
  if (!view || !view.cluster.leader) { out.textContent = "–"; return; }
  const n = view.nodes[view.cluster.leader];
  const info = n && n.info;
  if (!info || info.lease_remaining_ms == null) { out.textContent = "unknown"; return; }
  const left = info.lease_remaining_ms - n.age_ms - (Date.now() - viewAt);
  out.textContent = left > 0 ? (left / 1000).toFixed(1) + " s (renewed every loop)" : "expired or renewing";
}

function renderMembers(v) {
  const rows = [];
  const sorted = [...v.cluster.members].sort((a, b) => a.name.localeCompare(b.name));
  for (const m of sorted) {
    const node = v.nodes[m.name] || {};
    const info = node.info;
    const disk = info && info.disk
      ? bytes(info.disk.data_dir_bytes) + " / " + bytes(info.disk.wal_bytes) + " / " + bytes(info.disk.fs_free_bytes)
      : node.error ? "unreachable" : info && info.disk_error ? info.disk_error : "…";
    const tags = [];
    if (m.tags.nofailover) tags.push("nofailover");
    if (m.tags.priority) tags.push("priority " + m.tags.priority);
    const lagT = m.role === "leader" ? 0 : info ? info.replay_delay_s : null;
    const actions = el("td", {},
      actionButton("Restart pending", "Restart " + m.name + "'s PostgreSQL if a changed setting needs it?",
        () => memberOp(m.name, "restart", { restart_pending: true }), !m.pending_restart),
      " ",
      actionButton("Reinit", "Rebuild " + m.name + " from the leader (its data directory is replaced)?",
        () => memberOp(m.name, "reinitialize", {}), m.role === "leader"));
    rows.push(el("tr", { "data-member": m.name, "data-role": m.role, "data-state": m.state },
      el("th", { scope: "row" }, m.name),
      el("td", { class: "role-" + m.role }, roleText(m.role)),
      el("td", { class: "state-" + m.state }, m.state),
      el("td", { class: "num" }, m.timeline || "–"),
      el("td", {}, replication(m, v)),
      el("td", { class: "num" }, m.role === "leader" ? "0 B" : bytes(m.lag)),
      el("td", { class: "num" }, secs(lagT)),
      el("td", { class: m.pending_restart ? "yes" : "" }, m.pending_restart ? "yes" : "no"),
      el("td", {}, tags.join(", ") || "–"),
      el("td", {}, disk),
      el("td", { class: "sentence" }, m.last_action),
      actions));
  }
  // keep the focused button's place: rebuild only when something changed
  const body = $("member-rows");
  const next = el("tbody", { id: "member-rows" }, ...rows);
  if (body.innerHTML !== next.innerHTML) {
    const focused = document.activeElement && document.activeElement.dataset.key;
    body.replaceWith(next);
    if (focused) {
      const again = next.querySelector('[data-key="' + CSS.escape(focused) + '"]');
      if (again) again.focus();
    }
  }
}

// name -> { t, transactions, nodes, reads }: the last counts, for rates
const proxyCounts = new Map();

function rate(now, then, a, b) {
  const dt = (now - then) / 1000;
  return dt > 0 && b >= a ? (b - a) / dt : null;
}

function renderProxies(p) {
  const now = Date.now();
  const vip = p.proxies.map((r) => r.vip).find((x) => x);
  $("vip").textContent = vip
    ? "Virtual IP " + vip + ": " + (p.vip_holder ? "held by " + p.vip_holder : "held by none")
    : p.proxies.length ? "No virtual IP configured." : "No proxy registered (proxies register when they follow the DCS).";
  const rows = [];
  const sorted = [...p.proxies].sort((a, b) => a.name.localeCompare(b.name));
  for (const r of sorted) {
    const last = proxyCounts.get(r.name);
    let tps = null;
    const byNode = [];
    if (last) {
      tps = rate(now, last.t, last.transactions, r.transactions);
      const nodes = r.node_transactions || {};
      const readRates = Object.entries(r.reads).map(([n, c]) => [n, rate(now, last.t, last.reads[n] || 0, c) || 0]);
      const readTotal = readRates.reduce((s, [, x]) => s + x, 0);
      for (const n of Object.keys(nodes).sort()) {
        const x = rate(now, last.t, last.nodes[n] || 0, nodes[n]);
        if (x == null) continue;
        const reads = (readRates.find(([m]) => m === n) || [n, 0])[1];
        byNode.push(n + ": " + x.toFixed(0) + "/s" +
          (readTotal > 0 ? ", " + Math.round((100 * reads) / readTotal) + "% of reads" : ""));
      }
    }
    // counts from the previous view at least a second old, for steady rates
    if (!last || now - last.t >= 1000) {
      proxyCounts.set(r.name, {
        t: now, transactions: r.transactions, nodes: { ...(r.node_transactions || {}) }, reads: { ...r.reads },
      });
    }
    const holds = p.vip_holder === r.name;
    rows.push(el("tr", { "data-proxy": r.name, "data-state": r.state },
      el("th", { scope: "row" }, r.name),
      el("td", {}, r.listen),
      el("td", { class: "state-" + r.state }, r.state.replace(/_/g, " ")),
      el("td", { class: holds ? "yes" : "" }, holds ? "yes" : "no"),
      el("td", { class: "num" }, String(r.clients)),
      el("td", { class: "num" }, String(r.pools)),
      el("td", {}, (r.primary || "none") + (r.primary_reachable ? "" : " (unreachable)")),
      el("td", { class: "num" }, tps == null ? "…" : tps.toFixed(0)),
      el("td", {}, byNode.join("; ") || "…")));
  }
  const body = $("proxy-rows");
  const next = el("tbody", { id: "proxy-rows" }, ...rows);
  if (body.innerHTML !== next.innerHTML) body.replaceWith(next);
}

function actionButton(label, question, run, disabled) {
  const b = el("button", { type: "button", disabled: !!disabled }, label);
  b.dataset.key = label + "|" + question;
  b.addEventListener("click", () => confirmThen(question, run));
  return b;
}

function renderCandidates(v) {
  const sel = $("candidate");
  const want = v.cluster.members.filter((m) => m.name !== v.cluster.leader && m.state === "streaming")
    .map((m) => m.name).sort();
  $("switchover").disabled = !want.length || !v.cluster.leader;
  const have = [...sel.options].map((o) => o.value);
  if (JSON.stringify(want) === JSON.stringify(have)) return;
  const keep = sel.value;
  sel.replaceChildren(...want.map((n) => el("option", { value: n }, n)));
  if (want.includes(keep)) sel.value = keep;
}

function renderHistory(h) {
  const rows = h.map((e) => el("tr", { "data-kind": e.kind },
    el("td", {}, new Date(e.at_ms).toLocaleString()),
    el("td", {}, e.kind.replace("_", " ")),
    el("td", {}, e.from || "–"),
    el("td", {}, e.new_leader || e.member || "–"),
    el("td", { class: "num" }, e.timeline == null ? "–" : e.timeline),
    el("td", {}, e.reason || "")));
  const body = $("history-rows");
  const next = el("tbody", { id: "history-rows" }, ...rows);
  if (body.innerHTML !== next.innerHTML) body.replaceWith(next);
}

// ---- charts: hand-drawn SVG ------------------------------------------

const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function renderCharts() {
  const names = [...samples.keys()].sort();
  drawChart($("chart-bytes"), names, "bytes", bytes);
  drawChart($("chart-secs"), names, "secs", secs);
  const legend = $("legend");
  const items = names.map((n, i) => {
    const s = svg("svg", { viewBox: "0 0 32 10", "aria-hidden": "true" });
    s.append(svg("line", { x1: 0, y1: 5, x2: 32, y2: 5, stroke: COLORS[i % COLORS.length],
      "stroke-width": 2, "stroke-dasharray": DASHES[i % DASHES.length] }));
    return el("li", {}, s, " " + n);
  });
  legend.replaceChildren(...items);
}

function drawChart(root, names, key, fmt) {
  const W = 600, H = 160, L = 60, B = 20;
  const now = Date.now();
  let max = 0;
  for (const n of names) for (const p of samples.get(n)) if (p[key] != null) max = Math.max(max, p[key]);
  const top = max > 0 ? max * 1.1 : 1;
  const parts = [
    svg("line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis" }),
    svg("line", { x1: L, y1: 0, x2: L, y2: H - B, class: "axis" }),
  ];
  const label = (x, y, t, anchor) => {
    const e = svg("text", { x, y, "text-anchor": anchor || "end" });
    e.textContent = t;
    return e;
  };
  parts.push(label(L - 4, 12, fmt(max)), label(L - 4, H - B, "0"),
    label(L, H - 4, "-5 min", "start"), label(W - 2, H - 4, "now"));
  names.forEach((n, i) => {
    const pts = samples.get(n).filter((p) => p[key] != null)
      .map((p) => (L + (W - L) * (1 - (now - p.t) / WINDOW_MS)).toFixed(1) + "," +
        ((H - B) - (H - B - 4) * (p[key] / top)).toFixed(1));
    if (!pts.length) return;
    parts.push(svg("polyline", { points: pts.join(" "), fill: "none", stroke: COLORS[i % COLORS.length],
      "stroke-width": 2, "stroke-dasharray": DASHES[i % DASHES.length] }));
  });
  const last = names.map((n) => {
    const arr = samples.get(n);
    return n + " " + fmt(arr.length ? arr[arr.length - 1][key] : null);
  }).join(", ");
  root.setAttribute("aria-label", "now: " + (last || "no data"));
  root.replaceChildren(...parts);
}

// ---- operations -------------------------------------------------------

function token() { return sessionStorage.getItem("pgwarden-token") || ""; }

function showTokenState() {
  $("token-state").textContent = token() ? "a token is set for this tab" : "no token set";
}

function confirmThen(question, run) {
  const d = $("confirm");
  $("confirm-text").textContent = question;
  d.returnValue = "";
  d.onclose = () => { if (d.returnValue === "ok") run(); };
  d.showModal();
  $("confirm-no").focus();
}

async function api(method, path, body) {
  const out = $("result");
  out.dataset.ok = "";
  out.textContent = method + " " + path + ": waiting for the answer…";
  if (!token()) {
    out.dataset.ok = "false";
    out.textContent = "Give the API token first (section API token).";
    return;
  }
  try {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 110000);
    const r = await fetch(path, {
      method, signal: ctl.signal,
      headers: { "Authorization": "Bearer " + token(), "Content-Type": "application/json" },
      body: body == null ? undefined : JSON.stringify(body),
    });
    clearTimeout(timer);
    let j = {};
    try { j = await r.json(); } catch (_) { /* not JSON */ }
    out.dataset.ok = r.ok ? "true" : "false";
    out.dataset.status = r.status;
    out.textContent = (r.ok ? "Done: " : "Refused (" + r.status + "): ") + (j.message || j.error || r.statusText);
  } catch (e) {
    out.dataset.ok = "false";
    out.textContent = method + " " + path + " failed: " + e;
  }
}

function memberOp(name, op, body) {
  return api("POST", "/members/" + encodeURIComponent(name) + "/" + op, body);
}

function init() {
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = $("token").value.trim();
    if (t) sessionStorage.setItem("pgwarden-token", t);
    $("token").value = "";
    showTokenState();
  });
  $("forget").addEventListener("click", () => { sessionStorage.removeItem("pgwarden-token"); showTokenState(); });
  $("switchover").addEventListener("click", () => {
    const to = $("candidate").value;
    const from = view && view.cluster.leader;
    if (!to || !from) return;
    confirmThen("Switch over from " + from + " to " + to + "?",
      () => api("POST", "/switchover", { leader: from, candidate: to }));
  });
  $("pause").addEventListener("click", () =>
    confirmThen("Turn maintenance mode on (no automatic failover)?", () => api("POST", "/pause")));
  $("resume").addEventListener("click", () =>
    confirmThen("Turn maintenance mode off (automatic failover resumes)?", () => api("POST", "/resume")));
  showTokenState();
  setInterval(renderExpiry, 250);
  connect();
}

document.addEventListener("DOMContentLoaded", init);
