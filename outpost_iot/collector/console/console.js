// The Outpost console: a page over the collector's API (docs/console.md).
//
// Every string from a device, a gateway or the API is put into the page as text
// (textContent, never innerHTML), and the Content-Security-Policy allows no inline script:
// a device named "<img src=x onerror=…>" shows as those characters.
"use strict";

const state = {
  session: null, // {tenant, role, csrf, expires}
  stream: null, // the EventSource of the current view
  view: null, // {name, teardown}
};

// ---- small helpers -------------------------------------------------------------------------

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "href") el.setAttribute("href", safeHref(value));
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function safeHref(value) {
  // Only the console's own routes and the export download: a link never carries a scheme or
  // a host a device could choose.
  if (typeof value !== "string") return "#/";
  return value.startsWith("#/") || value.startsWith("/api/v1/series/export?") ? value : "#/";
}

function isOperator() {
  return state.session && (state.session.role === "operator" || state.session.role === "admin");
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const d = Date.now() / 1000 - seconds;
  if (d < 0) return "just now";
  if (d < 90) return `${Math.round(d)} s ago`;
  if (d < 5400) return `${Math.round(d / 60)} min ago`;
  if (d < 172800) return `${Math.round(d / 3600)} h ago`;
  return `${Math.round(d / 86400)} d ago`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function when(seconds) {
  if (!seconds) return "–";
  return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function value(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3).replace(/\.?0+$/, "");
  if (typeof v === "boolean") return v ? "true" : "false";
  return String(v);
}

// What changed between two configs, as "path: old → new" lines (lists by index).
function configChanges(before, after) {
  const flat = (v, path, out) => {
    if (v && typeof v === "object") {
      const entries = Array.isArray(v) ? v.map((x, i) => [String(i), x]) : Object.entries(v);
      if (!entries.length) out.set(path, JSON.stringify(v));
      for (const [k, x] of entries) flat(x, path ? `${path}.${k}` : k, out);
    } else out.set(path, JSON.stringify(v));
    return out;
  };
  const a = flat(before, "", new Map());
  const b = flat(after, "", new Map());
  const out = [];
  for (const key of [...new Set([...a.keys(), ...b.keys()])].sort()) {
    if (a.get(key) === b.get(key)) continue;
    out.push(`${key}: ${a.has(key) ? a.get(key) : "(none)"} → ${b.has(key) ? b.get(key) : "(removed)"}`);
  }
  return out.length ? out : ["none"];
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.session && state.session.csrf) headers["X-CSRF-Token"] = state.session.csrf;
  const r = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 204) return null;
  const data = await r.json().catch(() => null);
  if (r.status === 401 && path !== "/api/v1/session") {
    showSignIn("Your session has ended; sign in again.");
    throw new ApiError(r.status, data);
  }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

function openStream(params, handlers) {
  closeStream();
  const query = new URLSearchParams();
  for (const [key, values] of Object.entries(params)) {
    for (const v of [].concat(values)) query.append(key, v);
  }
  const source = new EventSource(`/api/v1/stream?${query}`);
  const live = document.getElementById("live");
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  for (const [kind, handler] of Object.entries(handlers)) {
    source.addEventListener(kind, (e) => {
      let data;
      try { data = JSON.parse(e.data); } catch { return; }
      handler(data);
    });
  }
  state.stream = source;
}

function closeStream() {
  if (state.stream) state.stream.close();
  state.stream = null;
  const live = document.getElementById("live");
  live.textContent = "";
  live.className = "live";
}

function table(columns, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows)));
}

// ---- alarms, shared -------------------------------------------------------------------------

const SEVERITIES = ["critical", "major", "minor", "warning"];

function alarmBadge(summary) {
  if (!summary || !summary.open) return "–";
  return h("span", { class: `sev sev-${summary.severity}`, title: `${summary.open} open, the highest ${summary.severity}` },
    `${summary.open} ${summary.severity}`);
}

const TIME_DETAILS = new Set(["since", "last_seen", "last_reading", "expires"]);

function detail(key, v) {
  if (typeof v === "number") return TIME_DETAILS.has(key) ? when(v) : value(v);
  return typeof v === "string" ? v : JSON.stringify(v);
}

// A table of alarms that acknowledges in place; returns {render(list), element}.
function alarmTable(onAck) {
  const box = h("div", {});
  function render(list) {
    const rows = list.map((a) => h("tr", { dataset: { alarm: String(a.id) }, class: `alarm-${a.status}` },
      h("td", {}, h("span", { class: `sev sev-${a.severity}` }, a.severity)),
      h("td", { class: "alarm-status" }, a.status),
      h("td", {}, a.name),
      h("td", {}, h("a", { href: `#/gateway/${encodeURIComponent(a.gateway_id)}` }, a.gateway_id)),
      h("td", { class: "originator" }, a.originator.slice(a.gateway_id.length + 1) || "the gateway"),
      h("td", {}, when(a.raised)),
      h("td", {}, a.cleared ? when(a.cleared) : a.acknowledged ? `acknowledged by ${a.acknowledged_by}` : ""),
      h("td", { class: "details" }, Object.entries(a.details || {}).map(([k, v]) => `${k.replace(/_/g, " ")}: ${detail(k, v)}`).join(", ")),
      h("td", {}, a.status === "active" && isOperator()
        ? h("button", { type: "button", class: "secondary", onclick: () => onAck(a) }, "Acknowledge") : "")));
    box.replaceChildren(table(["Severity", "Status", "Alarm", "Gateway", "On", "Raised", "Cleared / acknowledged", "Details", ""], rows, "No alarms."));
  }
  return { render, element: box };
}

// ---- charts --------------------------------------------------------------------------------

// A range to chart and the bucket that keeps it near 360 points.
const RANGES = [["1h", "1 hour", 3600, "10s"], ["6h", "6 hours", 21600, "1m"], ["24h", "24 hours", 86400, "5m"],
  ["7d", "7 days", 604800, "30m"], ["30d", "30 days", 2592000, "2h"]];
const AGGREGATES = ["mean", "min", "max", "last", "sum", "count"];
const COLOURS = ["#0b5cad", "#c0392b", "#1a7f37", "#9a6700", "#6f42c1", "#0a7a8a", "#b35900", "#57606a"];

function rangeSelect(label) {
  return h("select", { "aria-label": label }, RANGES.map(([v, text]) => h("option", { value: v }, text)));
}

function window_(rangeKey) {
  const [, , seconds, bucket] = RANGES.find((r) => r[0] === rangeKey) || RANGES[0];
  const end = new Date();
  return { start: new Date(end.getTime() - seconds * 1000), end, bucket };
}

// Draws one field's buckets into box (one line per group); returns the uPlot (or null).
// box.dataset.points says how many points it drew, for tests and for screen readers' summary.
async function plotSeries(box, previous, { measurement, field, aggregate, rangeKey, tags, groupBy }) {
  const { start, end, bucket } = window_(rangeKey);
  const q = new URLSearchParams({ measurement, field, aggregate, bucket, start: start.toISOString(), end: end.toISOString() });
  for (const [k, v] of Object.entries(tags || {})) q.append("tag", `${k}:${v}`);
  for (const g of groupBy || []) q.append("group_by", g);
  let result;
  try {
    result = await api("GET", `/api/v1/series?${q}`);
  } catch (e) {
    if (previous) previous.destroy();
    box.replaceChildren(h("p", { class: "error" }, e.message));
    return null;
  }
  const times = [...new Set(result.groups.flatMap((g) => g.points.map((p) => p[0])))].sort((a, b) => a - b);
  const data = [times];
  const series = [{}];
  for (const g of result.groups) {
    const byTime = new Map(g.points.map((p) => [p[0], p[1]]));
    data.push(times.map((t) => (byTime.has(t) ? byTime.get(t) : null)));
    const label = Object.values(g.tags).join(" · ") || `${measurement}.${field}`;
    series.push({ label, stroke: COLOURS[(series.length - 1) % COLOURS.length], width: 1.5 });
  }
  if (previous) previous.destroy();
  box.replaceChildren();
  const points = result.groups.reduce((n, g) => n + g.points.length, 0);
  box.dataset.points = String(points);
  box.setAttribute("aria-label", `${aggregate} of ${measurement}.${field} per ${bucket}: ${result.groups.length} lines, ${points} points`);
  if (!times.length) {
    box.append(h("p", { class: "empty" }, "No readings in this range."));
    return null;
  }
  const width = Math.max(280, box.clientWidth || document.getElementById("view").clientWidth - 20);
  const span = [start.getTime() / 1000, end.getTime() / 1000];
  return new uPlot({ width, height: 300, series, scales: { x: { time: true, range: () => span } } }, data, box);
}

// ---- sign-in -------------------------------------------------------------------------------

function showSignIn(message) {
  closeStream();
  state.session = null;
  document.getElementById("top").hidden = true;
  document.getElementById("view").hidden = true;
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-error").textContent = message || "";
  document.getElementById("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById("token");
  const error = document.getElementById("sign-in-error");
  error.textContent = "";
  try {
    state.session = await api("POST", "/api/v1/session", { token: input.value.trim() });
    input.value = "";
    start();
  } catch (e) {
    error.textContent = e.status === 401 ? "That token is unknown or revoked." : e.message;
  }
}

async function signOut() {
  try { await api("DELETE", "/api/v1/session"); } catch { /* signed out either way */ }
  showSignIn("Signed out.");
}

function start() {
  document.getElementById("sign-in").hidden = true;
  document.getElementById("top").hidden = false;
  document.getElementById("view").hidden = false;
  const s = state.session;
  document.getElementById("who").textContent = `${s.role} · ${s.tenant === "*" ? "all tenants" : s.tenant}`;
  route();
}

// ---- routing -------------------------------------------------------------------------------

const routes = [
  [/^#\/fleet$/, () => fleetView()],
  [/^#\/gateway\/([^/]+)$/, (m) => gatewayView(decodeURIComponent(m[1]))],
  [/^#\/data(?:\?(.*))?$/, (m) => dataView(new URLSearchParams(m[1] || ""))],
  [/^#\/alarms$/, () => alarmsView()],
  [/^#\/rules$/, () => rulesView()],
  [/^#\/tokens$/, () => tokensView()],
  [/^#\/rollouts$/, () => rolloutsView()],
  [/^#\/quarantine$/, () => quarantineView()],
  [/^#\/audit$/, () => auditView()],
];

function route() {
  if (!state.session) return;
  const hash = location.hash || "#/fleet";
  if (state.view && state.view.teardown) state.view.teardown();
  closeStream();
  const view = document.getElementById("view");
  view.replaceChildren();
  for (const a of document.querySelectorAll("nav a")) {
    if (hash.startsWith(`#/${a.dataset.section}`)) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  for (const [pattern, render] of routes) {
    const m = hash.match(pattern);
    if (m) {
      state.view = render(m) || null;
      return;
    }
  }
  location.hash = "#/fleet";
}

// ---- fleet ---------------------------------------------------------------------------------

function fleetView() {
  const view = document.getElementById("view");
  const counts = h("div", { class: "counts", "aria-label": "Fleet counts" });
  const filters = {
    text: h("input", { type: "search", placeholder: "gateway or site", "aria-label": "Find a gateway or site" }),
    state: h("select", { "aria-label": "State" },
      ["any state", "online", "offline", "unknown", "decommissioned"].map((s) => h("option", { value: s === "any state" ? "" : s }, s))),
    tag: h("input", { type: "text", placeholder: "tag", "aria-label": "Tag" }),
  };
  const body = h("div", {});
  view.append(h("h1", {}, "Fleet"), counts, h("div", { class: "filters" }, Object.values(filters)), body);
  const gateways = new Map();
  let alarms = { severity: {}, gateways: {} };
  let changed = new Set();

  function render() {
    const all = [...gateways.values()];
    const n = (f) => all.filter(f).length;
    const open = (sev) => { const c = alarms.severity[sev] || {}; return (c.active || 0) + (c.acknowledged || 0); };
    counts.replaceChildren(
      ...[
        ["gateways", all.length],
        ["critical alarms", open("critical")],
        ["major alarms", open("major")],
        ["online", n((g) => g.state === "online")],
        ["offline", n((g) => g.state === "offline")],
        ["with a backlog", n((g) => (g.backlog_readings || 0) > 0)],
        ["clock flagged", n((g) => g.clock_flagged)],
        ["config out of sync", n((g) => g.config_desired_version && g.config_version !== g.config_desired_version)],
      ].map(([label, count]) => h("div", { class: "count" }, h("b", {}, String(count)), label)),
    );
    const text = filters.text.value.trim().toLowerCase();
    const rows = all
      .filter((g) => !filters.state.value || g.state === filters.state.value)
      .filter((g) => !filters.tag.value || (g.tags || []).includes(filters.tag.value.trim()))
      .filter((g) => !text || g.id.toLowerCase().includes(text) || (g.site || "").toLowerCase().includes(text))
      .sort((a, b) => (a.site || "").localeCompare(b.site || "") || a.id.localeCompare(b.id))
      .map((g) => {
        const drops = Object.values(g.drops || {}).reduce((a, b) => a + b, 0);
        const inSync = !g.config_desired_version || g.config_version === g.config_desired_version;
        return h("tr", { class: changed.has(g.id) ? "changed" : null, dataset: { gateway: g.id } },
          h("td", {}, h("a", { href: `#/gateway/${encodeURIComponent(g.id)}` }, g.id)),
          h("td", {}, g.site || "–"),
          h("td", { class: `state-${g.state}` }, g.state),
          h("td", {}, ago(g.last_seen)),
          h("td", { class: "num" }, g.backlog_readings ?? "–"),
          h("td", {}, duration(g.oldest_unsent_s)),
          h("td", { class: "num" }, drops ? h("span", { class: "flag" }, String(drops)) : "0"),
          h("td", {}, g.clock_flagged ? h("span", { class: "flag" }, "flagged") : "ok"),
          h("td", {}, inSync ? "in sync" : h("span", { class: "flag" }, `${g.config_version ?? "–"} → ${g.config_desired_version}`)),
          h("td", {}, g.certificate_expires ? when(g.certificate_expires).slice(0, 10) : "–"),
          h("td", {}, g.agent_version || "–"),
          h("td", {}, (g.tags || []).map((t) => h("span", { class: "badge" }, t))),
          h("td", {}, alarmBadge(alarms.gateways[g.id])),
        );
      });
    changed = new Set();
    body.replaceChildren(table(
      ["Gateway", "Site", "State", "Last seen", "Backlog", "Oldest unsent", "Drops", "Clock", "Config", "Certificate", "Agent", "Tags", "Alarms"],
      rows, "No gateway matches."));
  }

  async function load() {
    const [list, counted] = await Promise.all([api("GET", "/api/v1/gateways"), api("GET", "/api/v1/alarms/counts")]);
    gateways.clear();
    for (const g of list) gateways.set(g.id, g);
    alarms = counted;
    render();
  }

  let recount = null;
  function alarmChanged() { // many alarms at once: one reload of the counts
    if (recount) return;
    recount = setTimeout(async () => {
      recount = null;
      try { alarms = await api("GET", "/api/v1/alarms/counts"); render(); } catch { /* next time */ }
    }, 500);
  }

  for (const f of Object.values(filters)) f.addEventListener("input", render);
  load().catch((e) => body.replaceChildren(h("p", { class: "error" }, e.message)));
  openStream({ kind: ["gateway", "config", "alarm"] }, {
    alarm: () => alarmChanged(),
    gateway: (g) => {
      const known = gateways.get(g.id);
      if (!known) { load(); return; } // a gateway new to this page: read the whole listing
      Object.assign(known, g);
      changed.add(g.id);
      render();
    },
    config: (c) => {
      const known = gateways.get(c.gateway_id);
      if (known && c.status === "applied") known.config_version = c.applied_version;
      render();
    },
    reset: () => load(),
  });
  const timer = setInterval(render, 30000); // "x s ago" moves on
  return { teardown: () => clearInterval(timer) };
}

// ---- one gateway ---------------------------------------------------------------------------

function gatewayView(id) {
  const view = document.getElementById("view");
  const facts = h("dl", { class: "facts" });
  const latestBody = h("div", {});
  const devicesBody = h("div", {});
  const eventsBody = h("div", {});
  const chartBox = h("div", { class: "chart", role: "img", "aria-label": "Chart of the chosen series" });
  const chartForm = h("form", { class: "inline", "aria-label": "Chart" });
  const configBody = h("div", {});
  const gwAlarms = alarmTable(async (a) => {
    try { await api("POST", `/api/v1/alarms/${a.id}/acknowledge`); loadAlarms(); }
    catch (e) { manageSaid.replaceChildren(h("p", { class: "error" }, e.message)); }
  });
  const manage = h("div", {});
  const manageSaid = h("div", { role: "status" }); // outlives the forms it reports on
  view.append(
    h("p", {}, h("a", { href: "#/fleet" }, "← Fleet")),
    h("h1", {}, "Gateway ", h("span", { class: "gw-id" }, id)),
    facts,
    h("h2", {}, "Alarms"), gwAlarms.element,
    h("h2", {}, "Latest values"), latestBody,
    h("h2", {}, "Chart"), chartForm, chartBox,
    h("h2", {}, "Devices"), devicesBody,
    h("h2", {}, "Events"), eventsBody,
    h("section", { id: "gateway-config", "aria-label": "Config and management" },
      h("h2", {}, "Config"), configBody, manage, manageSaid),
  );
  let gateway = null;
  const latest = new Map(); // "measurement|tags" → {measurement, tags, fields, ts}
  const events = [];
  let changedKeys = new Set();

  function seriesKey(s) {
    const tags = Object.entries(s.tags).filter(([k]) => k !== "gateway").sort();
    return `${s.measurement}|${JSON.stringify(tags)}`;
  }

  function renderLatest() {
    const rows = [...latest.values()]
      .sort((a, b) => seriesKey(a).localeCompare(seriesKey(b)))
      .flatMap((s) => Object.entries(s.fields).sort().map(([field, v]) =>
        h("tr", { class: changedKeys.has(seriesKey(s)) ? "changed" : null },
          h("td", {}, s.measurement),
          h("td", {}, Object.entries(s.tags).filter(([k]) => k !== "gateway").map(([k, val]) => h("span", { class: "badge" }, `${k}=${val}`))),
          h("td", {}, field),
          h("td", { class: "num latest-value", dataset: { series: `${s.measurement}.${field}`, device: s.tags.device || "", ts: String(s.ts) } }, value(v)),
          h("td", {}, ago(s.ts)))));
    changedKeys = new Set();
    const shown = table(["Measurement", "Tags", "Field", "Value", "At"], rows, "No readings yet.");
    shown.classList.add("tall"); // a host's dozens of counters scroll inside, not the page
    latestBody.replaceChildren(shown);
    refreshChartChoices();
  }

  function renderEvents() {
    const rows = events.slice(-50).reverse().map((e) =>
      h("tr", {}, h("td", {}, when(e.ts)), h("td", {}, e.source), h("td", {}, e.type), h("td", {}, JSON.stringify(e.body))));
    eventsBody.replaceChildren(table(["At", "Source", "Type", "Body"], rows, "No events in the last 24 hours."));
  }

  async function loadFacts() {
    const g = await api("GET", `/api/v1/gateways/${encodeURIComponent(id)}`);
    gateway = g;
    renderManage();
    const row = (label, v) => [h("dt", {}, label), h("dd", {}, v)];
    const drops = Object.entries(g.drops || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "none";
    facts.replaceChildren(...[
      row("State", h("span", { class: `state-${g.state}` }, g.state)),
      row("Site", g.site || "–"),
      row("Last seen", ago(g.last_seen)),
      row("Backlog", `${g.backlog_readings ?? "–"} readings, oldest unsent ${duration(g.oldest_unsent_s)}`),
      row("Drops", drops),
      row("Clock", g.clock_flagged ? `flagged (skew ${g.clock_skew_s} s)` : "ok"),
      row("Config", `applied ${g.config_version ?? "–"}, desired ${g.config_desired_version ?? "–"}`),
      row("Certificate", when(g.certificate_expires)),
      row("Agent", g.agent_version || "–"),
      row("Tags", (g.tags || []).join(", ") || "none"),
    ].flat());
  }

  async function loadDevices() {
    const d = await api("GET", `/api/v1/gateways/${encodeURIComponent(id)}/devices`);
    const rows = d.devices.map((dev) => h("tr", {},
      h("td", { class: "device-name" }, dev.name),
      h("td", { class: `state-${dev.availability}` }, dev.availability),
      h("td", {}, ago(dev.last_reading)),
      h("td", {}, dev.measurements.join(", "))));
    devicesBody.replaceChildren(table(["Device", "Availability", "Last reading", "Measurements"], rows, "No devices reported yet."));
    const measurements = [...new Set(d.devices.flatMap((dev) => dev.measurements))];
    for (const m of measurements) {
      const found = await api("GET", `/api/v1/series/latest?measurement=${encodeURIComponent(m)}&tag=${encodeURIComponent(`gateway:${id}`)}`);
      for (const s of found) {
        const item = { measurement: m, tags: s.tags, fields: s.fields, ts: s.ts };
        latest.set(seriesKey(item), item);
      }
    }
    renderLatest();
  }

  async function loadEvents() {
    const start = new Date(Date.now() - 86400000).toISOString();
    const page = await api("GET", `/api/v1/events?gateway=${encodeURIComponent(id)}&start=${encodeURIComponent(start)}&limit=1000`);
    events.splice(0, events.length, ...page.events);
    renderEvents();
  }

  async function loadAlarms() {
    const open = await api("GET", `/api/v1/alarms?gateway=${encodeURIComponent(id)}&status=open`);
    gwAlarms.render(open);
  }

  // Desired versus reported config, and the versions before.
  async function loadConfig() {
    const c = await api("GET", `/api/v1/gateways/${encodeURIComponent(id)}/config`);
    if (!c.desired) {
      configBody.replaceChildren(h("p", { class: "empty" }, "No desired config has been set; the gateway runs its own agent.toml."));
      return;
    }
    const r = c.reported;
    const said = !r ? "has not reported on a desired config yet"
      : r.status === "applied" ? `applied version ${r.applied_version} ${ago(r.ts)}`
      : r.status === "rejected" ? `rejected version ${r.version} ${ago(r.ts)}, runs version ${r.applied_version}`
      : `rolled back version ${r.version} ${ago(r.ts)} (${r.reason}), runs version ${r.applied_version}`;
    const summary = h("p", { id: "config-state" },
      h("span", { class: c.in_sync ? "state-online" : "flag" }, c.in_sync ? "In sync" : "Not in sync"),
      `: desired version ${c.desired.version} (set by ${c.desired.actor} ${ago(c.desired.issued)}); the gateway ${said}.`);
    const problems = r && r.errors && r.errors.length ? h("ul", { class: "error" }, r.errors.map((e) => h("li", {}, e))) : null;
    const shown = h("pre", { class: "config", tabindex: "0", "aria-label": "Config version" });
    const changes = h("div", {});
    const show = (i) => {
      const version = c.history[i];
      const before = c.history[i + 1];
      shown.textContent = JSON.stringify(version.config, null, 2);
      shown.setAttribute("aria-label", `Config version ${version.version}`);
      changes.replaceChildren(before
        ? h("p", {}, `Changes from version ${before.version}: `, ...configChanges(before.config, version.config).map((d) => h("code", { class: "change" }, d)))
        : h("p", { class: "hint" }, `Version ${version.version} is the first one kept.`));
      for (const row of history.querySelectorAll("tr[data-version]")) {
        if (row.dataset.version === String(version.version)) row.setAttribute("aria-selected", "true");
        else row.removeAttribute("aria-selected");
      }
    };
    const history = table(["Version", "Set", "By", ""], c.history.map((v, i) =>
      h("tr", { dataset: { version: String(v.version) } },
        h("td", {}, String(v.version)), h("td", {}, when(v.issued)), h("td", {}, v.actor),
        h("td", {}, h("button", { type: "button", class: "secondary", onclick: () => show(i) }, `Show version ${v.version}`)))), "");
    configBody.replaceChildren(summary, problems || "", h("h3", {}, "History"), history, changes, shown);
    show(0);
  }

  // Tags and decommissioning: operators only.
  function renderManage() {
    if (!isOperator() || !gateway) { manage.replaceChildren(); return; }
    // Drawn again only when the state changes: what the operator is typing stays.
    if (manage.dataset.gateway === `${gateway.id}|${gateway.state}`) return;
    manage.dataset.gateway = `${gateway.id}|${gateway.state}`;
    const tags = h("input", { id: "gateway-tags", value: (gateway.tags || []).join(", "), maxlength: 2200, autocomplete: "off" });
    const tagsSaid = h("div", { role: "status" });
    const tagsForm = h("form", { class: "inline", "aria-label": "Tags" },
      h("div", {}, h("label", { for: "gateway-tags" }, "Tags (comma-separated)"), tags),
      h("button", { type: "submit" }, "Save tags"), tagsSaid);
    tagsForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const list = tags.value.split(",").map((t) => t.trim()).filter(Boolean);
      try {
        await api("PUT", `/api/v1/gateways/${encodeURIComponent(id)}/tags`, { tags: list });
        tags.removeAttribute("aria-invalid");
        tagsSaid.replaceChildren(h("span", {}, "Saved."));
        loadFacts();
      } catch (e) {
        tags.setAttribute("aria-invalid", "true");
        const bad = (e.body && e.body.problems) || [];
        tagsSaid.replaceChildren(h("span", { class: "error" }, bad.length
          ? bad.map((p) => `${p.field.replace(/^tags\.(\d+)$/, (_, i) => `tag "${list[i]}"`)}: ${p.problem}`).join("; ") + " (a tag is 1 to 64 of A–Z a–z 0–9 _ . : -; at most 32 tags)"
          : e.message));
      }
    });
    const parts = [h("h2", {}, "Manage"), tagsForm];
    if (gateway.state !== "decommissioned") {
      const typed = h("input", { id: "decommission-confirm", autocomplete: "off", spellcheck: "false" });
      const go = h("button", { type: "submit", class: "danger", disabled: true }, "Decommission");
      typed.addEventListener("input", () => { go.disabled = typed.value.trim() !== id; });
      const form = h("form", { "aria-label": "Decommission" },
        h("p", {}, "Decommissioning revokes the gateway's certificates: the collector refuses it from then on, and it must be enrolled again to send anything. What it already sent stays."),
        h("label", { for: "decommission-confirm" }, `Type the gateway's id (${id}) to confirm`), typed,
        h("p", {}, go));
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        if (typed.value.trim() !== id) return;
        try {
          const r = await api("POST", `/api/v1/gateways/${encodeURIComponent(id)}/decommission`);
          manageSaid.replaceChildren(h("p", {}, `Decommissioned: ${r.certificates_revoked} certificate(s) revoked.`));
          loadFacts();
        } catch (e) { manageSaid.replaceChildren(h("p", { class: "error" }, e.message)); }
      });
      parts.push(form);
    } else {
      parts.push(h("p", {}, "This gateway is decommissioned. Enroll it again with a new token to bring it back."));
    }
    manage.replaceChildren(...parts);
  }

  // The chart: one field of one measurement of this gateway, over a chosen range.
  const pick = h("select", { "aria-label": "Series" });
  const range = rangeSelect("Range");
  const aggregate = h("select", { "aria-label": "Aggregate" }, AGGREGATES.map((a) => h("option", { value: a }, a)));
  chartForm.append(pick, range, aggregate, h("button", { type: "submit" }, "Show"));
  let plot = null;

  function refreshChartChoices() {
    const choices = [...new Set([...latest.values()].flatMap((s) =>
      Object.entries(s.fields).filter(([, v]) => typeof v === "number").map(([f]) => `${s.measurement}.${f}`)))].sort();
    const current = pick.value;
    if (choices.join() === [...pick.options].map((o) => o.value).join()) return;
    pick.replaceChildren(...choices.map((c) => h("option", { value: c }, c)));
    if (choices.includes(current)) pick.value = current;
    if (!current && choices.length) drawChart();
  }

  async function drawChart(event) {
    if (event) event.preventDefault();
    if (!pick.value) return;
    const [measurement, ...rest] = pick.value.split(".");
    plot = await plotSeries(chartBox, plot, {
      measurement, field: rest.join("."), aggregate: aggregate.value, rangeKey: range.value,
      tags: { gateway: id }, groupBy: ["device"],
    });
  }
  chartForm.addEventListener("submit", drawChart);

  loadFacts().catch((e) => facts.replaceChildren(h("p", { class: "error" }, e.message)));
  loadDevices().catch((e) => devicesBody.replaceChildren(h("p", { class: "error" }, e.message)));
  loadEvents().catch((e) => eventsBody.replaceChildren(h("p", { class: "error" }, e.message)));
  loadConfig().catch((e) => configBody.replaceChildren(h("p", { class: "error" }, e.message)));
  loadAlarms().catch((e) => gwAlarms.element.replaceChildren(h("p", { class: "error" }, e.message)));
  openStream({ kind: ["latest", "event", "gateway", "config", "alarm"], gateway: id }, {
    alarm: () => loadAlarms(),
    latest: (msg) => {
      for (const s of msg.series) {
        const key = seriesKey(s);
        const known = latest.get(key);
        if (known && known.ts > s.ts) continue; // a late backfill does not replace a newer value
        latest.set(key, { ...s, fields: { ...(known ? known.fields : {}), ...s.fields } });
        changedKeys.add(key);
      }
      renderLatest();
    },
    event: (e) => { events.push(e); renderEvents(); },
    gateway: () => loadFacts(),
    config: () => { loadFacts(); loadConfig(); },
    reset: () => { loadFacts(); loadDevices(); loadEvents(); loadConfig(); loadAlarms(); },
  });
  return { teardown: () => { if (plot) plot.destroy(); } };
}

// ---- data explorer -------------------------------------------------------------------------

function dataView(params) {
  const view = document.getElementById("view");
  const measurement = h("select", { id: "data-measurement" });
  const field = h("select", { id: "data-field" });
  const aggregate = h("select", { id: "data-aggregate" }, AGGREGATES.map((a) => h("option", { value: a }, a)));
  const range = rangeSelect("Range");
  range.id = "data-range";
  const groupBy = h("select", { id: "data-group" });
  const tagBox = h("div", { class: "inline tags" });
  const chartBox = h("div", { class: "chart", role: "img", "aria-label": "Chart of the chosen series" });
  const exportLink = h("a", { class: "button", href: "#/data", download: "" }, "Export CSV");
  const note = h("p", { class: "hint" });
  const form = h("form", { class: "inline", "aria-label": "Query" },
    h("div", {}, h("label", { for: "data-measurement" }, "Measurement"), measurement),
    h("div", {}, h("label", { for: "data-field" }, "Field"), field),
    h("div", {}, h("label", { for: "data-aggregate" }, "Aggregate"), aggregate),
    h("div", {}, h("label", { for: "data-range" }, "Range"), range),
    h("div", {}, h("label", { for: "data-group" }, "One line per"), groupBy),
    h("button", { type: "submit" }, "Show"));
  view.append(h("h1", {}, "Data"), form, h("h2", {}, "Tags"), tagBox, note, chartBox, h("p", {}, exportLink));
  let catalog = [];
  let plot = null;
  const tagSelects = new Map(); // tag key → select

  const option = (v, text) => h("option", { value: v }, text === undefined ? v : text);
  const chosen = () => catalog.find((m) => m.name === measurement.value);

  function chosenTags() {
    const tags = {};
    for (const [k, sel] of tagSelects) if (sel.value) tags[k] = sel.value;
    return tags;
  }

  function fill(wanted) {
    const m = chosen();
    field.replaceChildren(...(m ? m.fields : []).map((f) => option(f)));
    if (m && m.fields.includes(wanted.get("field"))) field.value = wanted.get("field");
    const keys = m ? Object.keys(m.tags) : [];
    groupBy.replaceChildren(option("", "(one line)"), ...keys.map((k) => option(k)));
    if (keys.includes(wanted.get("group"))) groupBy.value = wanted.get("group");
    else if (keys.includes("device") && !wanted.has("group")) groupBy.value = "device";
    const filters = Object.fromEntries(wanted.getAll("tag").map((t) => [t.slice(0, t.indexOf(":")), t.slice(t.indexOf(":") + 1)]));
    tagSelects.clear();
    tagBox.replaceChildren(...keys.map((k) => {
      const id = `data-tag-${k}`;
      const sel = h("select", { id }, option("", "any"), ...m.tags[k].map((v) => option(v)));
      if (m.tags[k].includes(filters[k])) sel.value = filters[k];
      tagSelects.set(k, sel);
      return h("div", {}, h("label", { for: id }, k), sel);
    }));
    note.textContent = m && m.tags && Object.values(m.tags).some((v) => v.length >= 200)
      ? "Some tags have more values than listed here; narrow with the others." : "";
  }

  function query() {
    return {
      measurement: measurement.value, field: field.value, aggregate: aggregate.value,
      rangeKey: range.value, tags: chosenTags(), groupBy: groupBy.value ? [groupBy.value] : [],
    };
  }

  function remember(q) {
    const p = new URLSearchParams({ measurement: q.measurement, field: q.field, aggregate: q.aggregate, range: q.rangeKey });
    if (q.groupBy.length) p.set("group", q.groupBy[0]); else p.set("group", "");
    for (const [k, v] of Object.entries(q.tags)) p.append("tag", `${k}:${v}`);
    history.replaceState(null, "", `#/data?${p}`); // a link to this chart; no reload
  }

  function exportHref() {
    const q = query();
    const { start, end } = window_(q.rangeKey);
    const p = new URLSearchParams({ measurement: q.measurement, start: start.toISOString(), end: end.toISOString(), format: "csv" });
    for (const [k, v] of Object.entries(q.tags)) p.append("tag", `${k}:${v}`);
    return `/api/v1/series/export?${p}`;
  }

  // One query at a time; a change made meanwhile is drawn when it ends (the last one wins).
  let drawing = false;
  let again = false;
  async function draw(event) {
    if (event) event.preventDefault();
    if (!measurement.value || !field.value) return;
    if (drawing) { again = true; return; }
    drawing = true;
    try {
      do {
        again = false;
        const q = query();
        remember(q);
        exportLink.setAttribute("href", safeHref(exportHref()));
        plot = await plotSeries(chartBox, plot, q);
      } while (again);
    } finally { drawing = false; }
  }

  exportLink.addEventListener("click", () => exportLink.setAttribute("href", safeHref(exportHref())));
  measurement.addEventListener("change", () => { fill(new URLSearchParams()); draw(); });
  for (const el of [field, aggregate, range, groupBy]) el.addEventListener("change", () => draw());
  tagBox.addEventListener("change", () => draw());
  form.addEventListener("submit", draw);

  async function load() {
    const c = await api("GET", "/api/v1/series/catalog");
    catalog = c.measurements;
    if (!catalog.length) {
      chartBox.replaceChildren(h("p", { class: "empty" }, "Nothing stored yet."));
      return;
    }
    measurement.replaceChildren(...catalog.map((m) => option(m.name, `${m.name} (${m.series} series)`)));
    if (catalog.some((m) => m.name === params.get("measurement"))) measurement.value = params.get("measurement");
    if (params.get("aggregate") && AGGREGATES.includes(params.get("aggregate"))) aggregate.value = params.get("aggregate");
    if (RANGES.some((r) => r[0] === params.get("range"))) range.value = params.get("range");
    fill(params);
    await draw();
    if (c.truncated) note.textContent = "There are more series than one catalog lists; pick a gateway's tag to narrow it.";
  }
  load().catch((e) => chartBox.replaceChildren(h("p", { class: "error" }, e.message)));

  // New readings of the measurement redraw the chart, at most every 5 s.
  let due = null;
  openStream({ kind: ["latest"] }, {
    latest: (msg) => {
      if (due || !msg.series.some((s) => s.measurement === measurement.value)) return;
      due = setTimeout(() => { due = null; draw(); }, 5000);
    },
    reset: () => draw(),
  });
  return { teardown: () => { if (due) clearTimeout(due); if (plot) plot.destroy(); } };
}

// ---- alarms --------------------------------------------------------------------------------

function alarmsView() {
  const view = document.getElementById("view");
  const counts = h("div", { class: "counts", "aria-label": "Open alarms by severity" });
  const status = h("select", { id: "alarm-status" },
    [["open", "open"], ["active", "active (not acknowledged)"], ["acknowledged", "acknowledged"], ["cleared", "cleared"], ["", "all"]]
      .map(([v, l]) => h("option", { value: v }, l)));
  const severity = h("select", { id: "alarm-severity" }, h("option", { value: "" }, "any"), SEVERITIES.map((x) => h("option", { value: x }, x)));
  const said = h("div", { role: "status" });
  const list = alarmTable(ack);
  view.append(h("h1", {}, "Alarms"), counts,
    h("div", { class: "inline filters" },
      h("div", {}, h("label", { for: "alarm-status" }, "Status"), status),
      h("div", {}, h("label", { for: "alarm-severity" }, "Severity"), severity)),
    said, list.element,
    h("p", { class: "hint" }, "Rules and where notifications go: ", h("a", { href: "#/rules" }, "Rules & notifications"), "."));
  const alarms = new Map();

  function render() {
    const shown = [...alarms.values()]
      .filter((a) => !status.value || (status.value === "open" ? a.status !== "cleared" : a.status === status.value))
      .filter((a) => !severity.value || a.severity === severity.value)
      .sort((a, b) => b.id - a.id);
    list.render(shown);
  }

  async function load() {
    const q = new URLSearchParams({ limit: "500" });
    if (status.value) q.set("status", status.value);
    if (severity.value) q.set("severity", severity.value);
    const [found, c] = await Promise.all([api("GET", `/api/v1/alarms?${q}`), api("GET", "/api/v1/alarms/counts")]);
    alarms.clear();
    for (const a of found) alarms.set(a.id, a);
    counts.replaceChildren(...SEVERITIES.map((x) => h("div", { class: `count sev-${x}` },
      h("b", {}, String((c.severity[x] || {}).active || 0)), `${x} active`,
      h("span", { class: "hint" }, ` · ${(c.severity[x] || {}).acknowledged || 0} acknowledged`))));
    render();
  }

  async function ack(a) {
    try {
      const done = await api("POST", `/api/v1/alarms/${a.id}/acknowledge`);
      alarms.set(done.id, done);
      render();
      load(); // the counts
    } catch (e) { said.replaceChildren(h("p", { class: "error" }, e.message)); }
  }

  for (const el of [status, severity]) el.addEventListener("change", () => load());
  load().catch((e) => said.replaceChildren(h("p", { class: "error" }, e.message)));
  let reload = null;
  openStream({ kind: ["alarm"] }, {
    alarm: (a) => {
      alarms.set(a.id, a);
      render();
      if (!reload) reload = setTimeout(() => { reload = null; load(); }, 1000); // the counts
    },
    reset: () => load(),
  });
  return { teardown: () => { if (reload) clearTimeout(reload); } };
}

// The fields each kind of condition takes: [name, label, input type, default].
const CONDITIONS = {
  threshold: [["measurement", "Measurement", "text", ""], ["field", "Field", "text", ""], ["above", "Above", "number", ""],
    ["below", "Below", "number", ""], ["clear", "Clear level", "number", ""], ["for_s", "Held for (s)", "number", "0"]],
  no_data: [["measurement", "Measurement", "text", ""], ["field", "Field (any)", "text", ""], ["for_s", "For (s)", "number", "900"]],
  gateway_offline: [["for_s", "For (s)", "number", "300"]],
  device_unavailable: [["for_s", "For (s)", "number", "300"]],
  backlog: [["older_than_s", "Oldest unsent older than (s)", "number", "3600"]],
  drops: [["reason", "Reason (any)", "text", ""], ["at_least", "At least", "number", "1"], ["window_s", "Within (s)", "number", "3600"]],
  clock_flagged: [],
  certificate_expiring: [["days", "Within days", "number", "14"]],
  config_failed: [],
};

function rulesView() {
  const view = document.getElementById("view");
  view.append(h("h1", {}, "Rules & notifications"));
  const rulesBody = h("div", {});
  const endpointsBody = h("div", {});
  const said = h("div", { role: "status" });
  view.append(said);

  // -- a new rule, or one being edited (operators)
  let edit = () => {};
  if (isOperator()) {
    const f = {
      name: h("input", { id: "rule-name", maxlength: 128, required: true }),
      severity: h("select", { id: "rule-severity" }, SEVERITIES.map((x) => h("option", { value: x, selected: x === "major" }, x))),
      kind: h("select", { id: "rule-kind" }, Object.keys(CONDITIONS).map((k) => h("option", { value: k }, k.replace(/_/g, " ")))),
      site: h("input", { id: "rule-site", maxlength: 128, placeholder: "any" }),
      tag: h("input", { id: "rule-tag", maxlength: 64, placeholder: "any" }),
      gateway: h("input", { id: "rule-gateway", maxlength: 64, placeholder: "any" }),
      device: h("input", { id: "rule-device", maxlength: 256, placeholder: "any" }),
      tags: h("input", { id: "rule-tags", maxlength: 4200, placeholder: "room=freezer, …" }),
      notify: h("input", { id: "rule-notify", type: "checkbox", checked: true }),
      edge: h("input", { id: "rule-edge", type: "checkbox" }),
    };
    let editing = null; // the rule being edited, or null for a new one
    const conditionBox = h("div", { class: "inline" });
    const inputs = new Map(); // "condition.x" and "scope.x" → input
    const field = (id, label, el) => h("div", {}, h("label", { for: id }, label), el);
    function conditionFields(values = {}) {
      conditionBox.replaceChildren();
      for (const key of [...inputs.keys()]) if (key.startsWith("condition.")) inputs.delete(key);
      for (const [name, label, type, dflt] of CONDITIONS[f.kind.value]) {
        const given = values[name];
        const el = h("input", { id: `rule-${name}`, type, value: given === undefined ? dflt : given === null ? "" : String(given), step: type === "number" ? "any" : undefined });
        inputs.set(`condition.${name}`, el);
        conditionBox.append(field(`rule-${name}`, label, el));
      }
    }
    for (const k of ["site", "tag", "gateway", "device", "tags"]) inputs.set(`scope.${k}`, f[k]);
    inputs.set("name", f.name);
    inputs.set("severity", f.severity);
    f.kind.addEventListener("change", () => conditionFields());
    conditionFields();
    const heading = h("h2", { id: "rule-form-title" }, "New rule");
    const submit = h("button", { type: "submit" }, "Add rule");
    const cancel = h("button", { type: "button", class: "secondary", hidden: true, onclick: () => reset() }, "Cancel");
    const problems = h("div", { role: "alert" });
    const form = h("form", { "aria-labelledby": "rule-form-title" },
      h("div", { class: "inline" }, field("rule-name", "Name", f.name), field("rule-severity", "Severity", f.severity), field("rule-kind", "Condition", f.kind)),
      conditionBox,
      h("div", { class: "inline" }, field("rule-site", "Site", f.site), field("rule-tag", "Gateway tag", f.tag),
        field("rule-gateway", "Gateway", f.gateway), field("rule-device", "Device", f.device), field("rule-tags", "Series tags", f.tags)),
      h("div", { class: "inline checks" },
        h("label", { for: "rule-notify" }, f.notify, " Notify the endpoints"),
        h("label", { for: "rule-edge" }, f.edge, " Also on the gateway (thresholds: raised on site even without uplink)")),
      h("p", {}, submit, " ", cancel), problems);

    function clearProblems() {
      problems.replaceChildren();
      for (const el of inputs.values()) el.removeAttribute("aria-invalid");
    }
    function showProblems(list) {
      for (const p of list) {
        // "condition.threshold.above" names the input "condition.above"; "scope.tags.room", "scope.tags".
        const key = p.field.replace(/^condition\.[a-z_]+\./, "condition.").replace(/^scope\.tags\..*$/, "scope.tags");
        if (inputs.has(key)) inputs.get(key).setAttribute("aria-invalid", "true");
      }
      problems.replaceChildren(h("ul", { class: "error" }, list.map((p) => h("li", {}, `${p.field}: ${p.problem}`))));
    }
    function reset() {
      editing = null;
      clearProblems();
      f.name.value = "";
      for (const k of ["site", "tag", "gateway", "device", "tags"]) f[k].value = "";
      f.severity.value = "major";
      f.notify.checked = true;
      f.edge.checked = false;
      conditionFields();
      heading.textContent = "New rule";
      submit.textContent = "Add rule";
      cancel.hidden = true;
    }
    edit = (r) => {
      editing = r;
      clearProblems();
      f.name.value = r.name;
      f.severity.value = r.severity;
      f.kind.value = r.condition.kind;
      conditionFields(r.condition);
      for (const k of ["site", "tag", "gateway", "device"]) f[k].value = r.scope[k] || "";
      f.tags.value = Object.entries(r.scope.tags || {}).map(([k, v]) => `${k}=${v}`).join(", ");
      f.notify.checked = r.notify;
      f.edge.checked = r.edge;
      heading.textContent = `Edit rule "${r.name}"`;
      submit.textContent = "Save rule";
      cancel.hidden = false;
      heading.scrollIntoView({ block: "start" });
      f.name.focus();
    };
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearProblems();
      const condition = { kind: f.kind.value };
      for (const [name, , type] of CONDITIONS[f.kind.value]) {
        const raw = inputs.get(`condition.${name}`).value.trim();
        if (raw !== "") condition[name] = type === "number" ? Number(raw) : raw;
      }
      const scope = {};
      for (const k of ["site", "tag", "gateway", "device"]) if (f[k].value.trim()) scope[k] = f[k].value.trim();
      const pairs = f.tags.value.split(",").map((x) => x.trim()).filter(Boolean);
      if (pairs.length) {
        const bad = pairs.filter((x) => !/^[^=]+=.+$/.test(x));
        if (bad.length) {
          showProblems([{ field: "scope.tags", problem: `write tags as key=value, separated by commas (not "${bad[0]}")` }]);
          return;
        }
        scope.tags = Object.fromEntries(pairs.map((x) => { const i = x.indexOf("="); return [x.slice(0, i).trim(), x.slice(i + 1).trim()]; }));
      }
      const body = { name: f.name.value.trim(), severity: f.severity.value, condition, scope, notify: f.notify.checked, edge: f.edge.checked };
      try {
        if (editing) {
          await api("PUT", `/api/v1/alarm-rules/${encodeURIComponent(editing.id)}`, { ...body, enabled: editing.enabled });
          said.replaceChildren(h("p", {}, `Rule "${body.name}" saved.`));
        } else {
          await api("POST", "/api/v1/alarm-rules", body);
          said.replaceChildren(h("p", {}, `Rule "${body.name}" added.`));
        }
        reset();
        loadRules();
      } catch (e) {
        const list = (e.body && e.body.problems) || [];
        if (list.length) showProblems(list);
        else problems.replaceChildren(h("p", { class: "error" }, e.message));
      }
    });
    view.append(heading, form);
  }
  view.append(h("h2", {}, "Rules"), rulesBody);

  async function loadRules() {
    const rules = await api("GET", "/api/v1/alarm-rules");
    const describe = (c) => Object.entries(c).filter(([k, v]) => k !== "kind" && v !== null)
      .map(([k, v]) => (k.endsWith("_s") ? `${k.slice(0, -2).replace(/_/g, " ")} ${v} s` : `${k.replace(/_/g, " ")} ${v}`)).join(", ");
    const rows = rules.map((r) => h("tr", { dataset: { rule: r.id } },
      h("td", {}, h("span", { class: `sev sev-${r.severity}` }, r.severity)),
      h("td", {}, r.name),
      h("td", {}, `${r.condition.kind.replace(/_/g, " ")}${describe(r.condition) ? `: ${describe(r.condition)}` : ""}`),
      h("td", { class: "target" }, Object.entries(r.scope).filter(([, v]) => v !== null && !(typeof v === "object" && !Object.keys(v).length))
        .map(([k, v]) => h("span", { class: "badge" }, `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`))),
      h("td", { class: "rule-enabled" }, r.enabled ? (r.edge ? "on, at the edge too" : "on") : "off"),
      h("td", {}, isOperator() ? [
        h("button", { type: "button", class: "secondary", onclick: () => edit(r) }, "Edit"), " ",
        h("button", { type: "button", class: "secondary", onclick: () => toggleRule(r) }, r.enabled ? "Disable" : "Enable"), " ",
        h("button", { type: "button", class: "danger", onclick: () => removeRule(r) }, "Delete")] : "")));
    rulesBody.replaceChildren(table(["Severity", "Name", "Condition", "Scope", "Enabled", ""], rows, "No rules yet."));
  }

  async function toggleRule(r) {
    const body = { name: r.name, severity: r.severity, enabled: !r.enabled, notify: r.notify, edge: r.edge, condition: r.condition, scope: r.scope };
    for (const part of [body.condition, body.scope]) for (const [k, v] of Object.entries(part)) if (v === null) delete part[k];
    try { await api("PUT", `/api/v1/alarm-rules/${encodeURIComponent(r.id)}`, body); loadRules(); }
    catch (e) { said.replaceChildren(h("p", { class: "error" }, e.message)); }
  }

  async function removeRule(r) {
    if (!confirm(`Delete rule "${r.name}"? Its open alarms are cleared.`)) return;
    try { await api("DELETE", `/api/v1/alarm-rules/${encodeURIComponent(r.id)}`); loadRules(); }
    catch (e) { said.replaceChildren(h("p", { class: "error" }, e.message)); }
  }
  loadRules().catch((e) => rulesBody.replaceChildren(h("p", { class: "error" }, e.message)));

  // -- notification endpoints (operators)
  if (!isOperator()) return null;
  const ep = {
    name: h("input", { id: "ep-name", maxlength: 128, required: true }),
    kind: h("select", { id: "ep-kind" }, h("option", { value: "webhook" }, "webhook"), h("option", { value: "email" }, "email")),
    target: h("input", { id: "ep-target", maxlength: 2048, placeholder: "https://…", required: true }),
    min: h("select", { id: "ep-min" }, SEVERITIES.slice().reverse().map((x) => h("option", { value: x }, x))),
  };
  const targetLabel = h("label", { for: "ep-target" }, "URL");
  ep.kind.addEventListener("change", () => {
    targetLabel.textContent = ep.kind.value === "webhook" ? "URL" : "Addresses (comma-separated)";
    ep.target.placeholder = ep.kind.value === "webhook" ? "https://…" : "oncall@example.com";
  });
  const epSaid = h("div", { role: "status", "aria-live": "polite" });
  const epForm = h("form", { class: "inline", "aria-label": "New notification endpoint" },
    h("div", {}, h("label", { for: "ep-name" }, "Name"), ep.name),
    h("div", {}, h("label", { for: "ep-kind" }, "Kind"), ep.kind),
    h("div", {}, targetLabel, ep.target),
    h("div", {}, h("label", { for: "ep-min" }, "From severity"), ep.min),
    h("button", { type: "submit" }, "Add endpoint"));
  epForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: ep.name.value.trim(), kind: ep.kind.value, min_severity: ep.min.value };
    if (ep.kind.value === "webhook") body.url = ep.target.value.trim();
    else body.to = ep.target.value.split(",").map((x) => x.trim()).filter(Boolean);
    try {
      const made = await api("POST", "/api/v1/notification-endpoints", body);
      ep.target.removeAttribute("aria-invalid");
      ep.name.value = "";
      ep.target.value = "";
      epSaid.replaceChildren(made.kind === "webhook"
        ? h("div", {}, h("p", {}, `Endpoint ${made.name} added. Its signing secret, shown only now (check X-Outpost-Signature with it):`),
          h("code", { class: "secret", id: "endpoint-secret" }, made.secret))
        : h("p", {}, `Endpoint ${made.name} added.`));
      loadEndpoints();
    } catch (e) {
      const list = (e.body && e.body.problems) || [];
      if (list.some((p) => p.field === "url" || p.field.startsWith("to"))) ep.target.setAttribute("aria-invalid", "true");
      epSaid.replaceChildren(h("p", { class: "error" }, list.length ? list.map((p) => `${p.field || "endpoint"}: ${p.problem}`).join("; ") : e.message));
    }
  });
  view.append(h("h2", {}, "Notifications"),
    h("p", { class: "hint" }, "Every alarm a rule raises or clears goes to each endpoint whose severity it meets: webhooks signed with HMAC-SHA256, emails through the collector's mail server; each at least once, with a key to drop repeats by."),
    epForm, epSaid, endpointsBody);

  async function loadEndpoints() {
    const list = await api("GET", "/api/v1/notification-endpoints");
    const rows = list.map((e) => h("tr", { dataset: { endpoint: e.id } },
      h("td", {}, e.name), h("td", {}, e.kind), h("td", { class: "target" }, e.url || e.to.join(", ")),
      h("td", {}, `${e.min_severity}+`),
      h("td", { class: "num" }, String(e.delivered)),
      h("td", { class: "num" }, String(e.pending)),
      h("td", {}, e.failures ? h("span", { class: "flag" }, `${e.failures} failing: ${e.last_error}`) : e.last_success ? `ok ${ago(e.last_success)}` : "–"),
      h("td", {}, h("button", { type: "button", class: "secondary", onclick: () => test(e) }, "Send a test"),
        " ", h("button", { type: "button", class: "danger", onclick: () => removeEndpoint(e) }, "Delete"))));
    endpointsBody.replaceChildren(table(["Name", "Kind", "To", "Severity", "Delivered", "Pending", "Last", ""], rows, "No endpoints: alarms are raised but nobody is told."));
  }
  async function test(e) {
    try {
      await api("POST", `/api/v1/notification-endpoints/${encodeURIComponent(e.id)}/test`);
      epSaid.replaceChildren(h("p", {}, `A test notification to ${e.name} is on its way; its delivery shows below.`));
      setTimeout(() => loadEndpoints().catch(() => {}), 2000);
    } catch (err) { epSaid.replaceChildren(h("p", { class: "error" }, err.message)); }
  }
  async function removeEndpoint(e) {
    if (!confirm(`Delete endpoint ${e.name}? Notifications not yet sent to it are dropped.`)) return;
    try { await api("DELETE", `/api/v1/notification-endpoints/${encodeURIComponent(e.id)}`); loadEndpoints(); }
    catch (err) { epSaid.replaceChildren(h("p", { class: "error" }, err.message)); }
  }
  loadEndpoints().catch((e) => endpointsBody.replaceChildren(h("p", { class: "error" }, e.message)));
  const timer = setInterval(() => loadEndpoints().catch(() => {}), 10000);
  return { teardown: () => clearInterval(timer) };
}

// ---- enrollment tokens ---------------------------------------------------------------------

function tokensView() {
  const view = document.getElementById("view");
  view.append(h("h1", {}, "Enrollment tokens"));
  if (operatorsOnly(view, "Enrollment tokens")) return null;
  const site = h("input", { id: "token-site", required: true, maxlength: 128, autocomplete: "off" });
  const expires = h("select", { id: "token-expires" }, [["1h", "1 hour"], ["24h", "24 hours"], ["7d", "7 days"]].map(([v, l]) => h("option", { value: v }, l)));
  const uses = h("input", { id: "token-uses", type: "number", min: 1, max: 10000, value: 1, inputmode: "numeric" });
  const result = h("div", { role: "status", "aria-live": "polite" });
  const listBody = h("div", {});
  const form = h("form", { class: "inline", "aria-label": "New enrollment token" },
    h("div", {}, h("label", { for: "token-site" }, "Site"), site),
    h("div", {}, h("label", { for: "token-expires" }, "Valid for"), expires),
    h("div", {}, h("label", { for: "token-uses" }, "Gateways"), uses),
    h("button", { type: "submit" }, "Create token"));
  view.append(form, result, h("h2", {}, "Tokens"), listBody);

  async function load() {
    const tokens = await api("GET", "/api/v1/enrollment-tokens");
    const now = Date.now() * 1e6;
    const rows = tokens.map((t) => {
      const status = t.revoked ? "revoked" : t.expires_at_ns <= now ? "expired" : t.uses_left <= 0 ? "used up" : "valid";
      return h("tr", {},
        h("td", {}, t.id), h("td", {}, t.site),
        h("td", {}, `${t.uses_left} of ${t.uses_total}`),
        h("td", {}, when(t.expires_at_ns / 1e9)),
        h("td", {}, status),
        h("td", {}, status === "valid"
          ? h("button", { type: "button", class: "danger", onclick: () => revoke(t) }, "Revoke")
          : ""));
    });
    listBody.replaceChildren(table(["Id", "Site", "Uses left", "Expires", "Status", ""], rows, "No enrollment tokens."));
  }

  async function revoke(t) {
    if (!confirm(`Revoke enrollment token ${t.id} for site ${t.site}?`)) return;
    await api("DELETE", `/api/v1/enrollment-tokens/${encodeURIComponent(t.id)}`);
    load();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    result.replaceChildren();
    try {
      const made = await api("POST", "/api/v1/enrollment-tokens", { site: site.value.trim(), expires: expires.value, uses: Number(uses.value) });
      const arrivals = h("div", { "aria-live": "polite" });
      result.replaceChildren(
        h("p", {}, `Token for site ${made.site}, shown only now. On the gateway:`),
        h("code", { class: "secret", id: "new-token" }, made.token),
        h("p", { class: "hint" }, `outpost-provision enroll --collector ${location.origin} --token <the token> --start`),
        h("h2", {}, `Gateways at ${made.site}`), arrivals);
      watchSite(made.site, arrivals);
      load();
    } catch (e) {
      const problems = (e.body && e.body.problems) || [];
      result.replaceChildren(h("p", { class: "error" }, problems.length ? problems.map((p) => `${p.field}: ${p.problem}`).join("; ") : e.message));
    }
  });
  // The technician watches the gateway enroll and come online, on the same page.
  const watched = new Map();
  let watchedSite = null;
  let watchBox = null;
  function renderWatch() {
    const rows = [...watched.values()].sort((a, b) => a.id.localeCompare(b.id)).map((g) => {
      const said = g.state === "online" ? "online" : g.state === "unknown" ? "enrolled; waiting for it to connect" : g.state;
      return h("tr", { dataset: { gateway: g.id } },
        h("td", {}, h("a", { href: `#/gateway/${encodeURIComponent(g.id)}` }, g.id)),
        h("td", { class: `state-${g.state}` }, said), h("td", {}, ago(g.last_seen)));
    });
    watchBox.replaceChildren(table(["Gateway", "State", "Last seen"], rows, "None yet: run the command above on the gateway."));
  }
  async function reloadWatch() {
    const list = await api("GET", `/api/v1/gateways?site=${encodeURIComponent(watchedSite)}`);
    watched.clear();
    for (const g of list) watched.set(g.id, g);
    renderWatch();
  }
  function watchSite(name, box) {
    watchedSite = name;
    watchBox = box;
    reloadWatch().catch((e) => box.replaceChildren(h("p", { class: "error" }, e.message)));
    openStream({ kind: ["gateway"] }, {
      gateway: (g) => {
        const known = watched.get(g.id);
        if (known) { Object.assign(known, g); renderWatch(); }
        else if (g.site === watchedSite) {
          watched.set(g.id, g);
          renderWatch();
          load(); // a use of the token was spent
        }
      },
      reset: () => reloadWatch(),
    });
  }
  load().catch((e) => listBody.replaceChildren(h("p", { class: "error" }, e.message)));
  return null;
}

// ---- rollouts ------------------------------------------------------------------------------

function operatorsOnly(view, what) {
  if (isOperator()) return false;
  view.append(h("p", {}, `${what} are for operators; this session is a viewer's.`));
  return true;
}

function rolloutsView() {
  const view = document.getElementById("view");
  view.append(h("h1", {}, "Rollouts"));
  if (operatorsOnly(view, "Rollouts")) return null;
  const patch = h("textarea", { id: "rollout-patch", rows: 6, spellcheck: "false",
    placeholder: '{"sources": [{"type": "simulated", "name": "sim", "interval": 10}]}' });
  const site = h("input", { id: "rollout-site", maxlength: 128, placeholder: "all sites" });
  const tag = h("input", { id: "rollout-tag", maxlength: 64, placeholder: "any tag" });
  const waves = h("input", { id: "rollout-waves", value: "1, 10%, 100%" });
  const abort = h("input", { id: "rollout-abort", type: "number", min: 0, max: 100, value: 0 });
  const problems = h("div", { role: "alert" });
  const form = h("form", { "aria-label": "New rollout" },
    h("label", { for: "rollout-patch" }, "Patch (JSON merge patch over each gateway's config)"), patch,
    h("div", { class: "inline" },
      h("div", {}, h("label", { for: "rollout-site" }, "Site"), site),
      h("div", {}, h("label", { for: "rollout-tag" }, "Tag"), tag),
      h("div", {}, h("label", { for: "rollout-waves" }, "Waves"), waves),
      h("div", {}, h("label", { for: "rollout-abort" }, "Abort above % failed"), abort)),
    h("p", {}, h("button", { type: "submit" }, "Start rollout")), problems);
  const listBody = h("div", {});
  view.append(form, h("h2", {}, "Rollouts"), listBody);
  const rollouts = new Map();

  function render() {
    const rows = [...rollouts.values()].sort((a, b) => b.created - a.created).map((r) => {
      const waves = (r.waves || []).map((w) =>
        h("span", { class: "badge" },
          `wave ${w.index + 1}: ${w.applied} applied, ${w.failed + w.timed_out} failed, ${w.pending} pending${w.started ? "" : " (not started)"}`));
      const act = (action, label, cls) => h("button", { type: "button", class: cls, onclick: () => control(r, action) }, label);
      const actions = [];
      if (r.status === "running") actions.push(act("pause", "Pause", "secondary"));
      if (r.status === "paused") actions.push(act("resume", "Resume", "secondary"));
      if (r.status === "running" || r.status === "paused") actions.push(act("abort", "Abort", "danger"));
      return h("tr", { dataset: { rollout: r.id } },
        h("td", {}, r.id), h("td", { class: "rollout-status" }, r.status),
        h("td", {}, `${(r.current_wave || 0) + 1} of ${(r.waves || []).length}`),
        h("td", {}, waves), h("td", {}, r.reason || ""), h("td", {}, actions));
    });
    listBody.replaceChildren(table(["Id", "Status", "Wave", "Progress", "Reason", ""], rows, "No rollouts yet."));
  }

  async function load() {
    for (const r of await api("GET", "/api/v1/rollouts")) rollouts.set(r.id, r);
    render();
  }

  async function control(r, action) {
    if (action === "abort" && !confirm(`Abort rollout ${r.id}? Waves not started never start.`)) return;
    try {
      rollouts.set(r.id, await api("POST", `/api/v1/rollouts/${encodeURIComponent(r.id)}/${action}`));
      render();
    } catch (e) { problems.replaceChildren(h("p", { class: "error" }, e.message)); }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problems.replaceChildren();
    let change;
    try { change = JSON.parse(patch.value); } catch (e) {
      problems.replaceChildren(h("p", { class: "error" }, `patch: not JSON (${e.message})`));
      patch.setAttribute("aria-invalid", "true");
      return;
    }
    patch.removeAttribute("aria-invalid");
    const body = { patch: change, waves: waves.value.split(",").map((w) => w.trim()).filter(Boolean), abort_above_percent: Number(abort.value) };
    if (site.value.trim()) body.site = site.value.trim();
    if (tag.value.trim()) body.tag = tag.value.trim();
    try {
      const made = await api("POST", "/api/v1/rollouts", body);
      rollouts.set(made.id, made);
      render();
    } catch (e) {
      const list = (e.body && e.body.problems) || [];
      problems.replaceChildren(list.length
        ? h("ul", { class: "error" }, list.map((p) => h("li", {}, `${p.field}: ${p.problem}`)))
        : h("p", { class: "error" }, e.message));
    }
  });
  load().catch((e) => listBody.replaceChildren(h("p", { class: "error" }, e.message)));
  openStream({ kind: ["rollout"] }, {
    rollout: (r) => {
      const known = rollouts.get(r.id);
      if (!known) { load(); return; }
      Object.assign(known, r);
      render();
    },
    reset: () => load(),
  });
  return null;
}

// ---- quarantine and audit -------------------------------------------------------------------

function quarantineView() {
  const view = document.getElementById("view");
  view.append(h("h1", {}, "Quarantine"));
  if (operatorsOnly(view, "The quarantine and its replays")) return null;
  view.append(h("p", { class: "hint" }, "Messages that failed validation, newest first. Replay one after a fix (a raised limit, an upgrade)."));
  const body = h("div", {});
  view.append(body);
  async function load() {
    const page = await api("GET", "/api/v1/quarantine?limit=200");
    const rows = page.entries.map((e) => h("tr", {},
      h("td", {}, when(e.received)), h("td", {}, e.gateway_id), h("td", {}, e.reason),
      h("td", {}, e.detail), h("td", { class: "num" }, e.bytes),
      h("td", {}, e.replayed ? `${e.replay_result} (${ago(e.replayed)})` : h("button", { type: "button", class: "secondary", onclick: () => replay(e) }, "Replay"))));
    body.replaceChildren(table(["Received", "Gateway", "Reason", "Detail", "Bytes", "Replay"], rows, "Nothing is quarantined."));
  }
  async function replay(e) {
    try {
      const r = await api("POST", `/api/v1/quarantine/${e.id}/replay`);
      body.prepend(h("p", { role: "status" }, `Message ${r.id}: ${r.result}${r.detail ? ` (${r.detail})` : ""}`));
      load();
    } catch (err) { body.prepend(h("p", { class: "error" }, err.message)); }
  }
  load().catch((e) => body.replaceChildren(h("p", { class: "error" }, e.message)));
  return null;
}

function auditView() {
  const view = document.getElementById("view");
  view.append(h("h1", {}, "Audit log"));
  if (operatorsOnly(view, "The audit log")) return null;
  const body = h("div", {});
  const more = h("button", { type: "button", class: "secondary" }, "Older");
  view.append(body, h("p", {}, more));
  const entries = [];
  async function load(before) {
    const page = await api("GET", `/api/v1/audit?limit=100${before ? `&before=${before}` : ""}`);
    entries.push(...page);
    more.hidden = page.length < 100;
    body.replaceChildren(table(["At", "Actor", "Action", "Target", "From", "Detail"], entries.map((e) => h("tr", {},
      h("td", {}, when(e.ts)), h("td", {}, e.actor), h("td", {}, e.action), h("td", {}, e.target),
      h("td", {}, e.source), h("td", {}, JSON.stringify(e.detail)))), "No actions recorded."));
  }
  more.addEventListener("click", () => load(entries.length ? entries[entries.length - 1].id : undefined));
  load().catch((e) => body.replaceChildren(h("p", { class: "error" }, e.message)));
  return null;
}

// ---- start ---------------------------------------------------------------------------------

document.getElementById("sign-in-form").addEventListener("submit", signIn);
document.getElementById("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
api("GET", "/api/v1/session")
  .then((s) => { state.session = s; start(); })
  .catch(() => showSignIn(""));
