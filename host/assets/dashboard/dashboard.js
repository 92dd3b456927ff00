// The Switchyard dashboard: reads the admin API with the token kept in this
// tab's session storage, polls the tables and the history, and follows the
// event stream. Everything shown is set as text, never parsed as markup.
"use strict";

const TOKEN_KEY = "switchyard.admin-token";
const POLL_MS = 1000;
const EVENTS_KEPT = 200;
const state = { token: sessionStorage.getItem(TOKEN_KEY) || "", samples: [], routes: [], running: false, session: 0, socket: null };
const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

/** A request to the admin API with the token; throws Unauthorized on 401. */
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({ cache: "no-store" }, options, { headers }));
  if (response.status === 401) throw new Unauthorized("the admin API refused the token");
  return response;
}

async function json(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(path + " answered " + response.status);
  return response.json();
}

/** An element with text content (and attributes). */
function el(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function row(cells, attributes = {}) {
  const tr = el("tr", null, attributes);
  for (const cell of cells) tr.append(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function number(value, digits = 0) {
  return el("td", value === null || value === undefined ? "–" : Number(value).toFixed(digits), { class: "number" });
}

function status(text) { $("status").textContent = text; }

function fill(table, rows) { $(table).querySelector("tbody").replaceChildren(...rows); }

// Tables

function renderRoutes() {
  const latest = state.samples.length ? state.samples[state.samples.length - 1].routes : {};
  fill("routes", state.routes.map((route) => {
    const match = [route.match && route.match.topic ? "topic " + route.match.topic : "",
      ...Object.entries((route.match && route.match.headers) || {}).map(([k, v]) => k + "=" + v)].filter(Boolean);
    const to = [route.to, ...(route.fan_out || [])].filter(Boolean);
    return row([route.name, match.join(", ") || "everything", (route.stages || []).join(" → ") || "–",
      to.join(", ") || "–", number(latest[route.name], 1)], { "data-route": route.name });
  }));
}

function renderPlugins(plugins) {
  fill("plugins", plugins.map((plugin) => {
    const version = plugin.version || "";
    const fault = plugin.last_fault ? (plugin.last_fault.kind || "fault") + ": " + (plugin.last_fault.message || "") : "–";
    const stateCell = el("td", plugin.state, { class: plugin.state === "serving" ? "good" : "bad" });
    return row([plugin.name, plugin.kind || "–", el("td", version.slice(0, 12) || "–", { class: "mono", title: version }),
      stateCell, number(plugin.calls), number(plugin.errors), number(plugin.faults), number(plugin.renewals),
      el("td", fault, { class: "wrap" }), el("td", plugin.last_rejection || "–", { class: "wrap" })],
    { "data-plugin": plugin.name, "data-version": version, "data-state": plugin.state, "data-renewals": plugin.renewals });
  }));
}

function renderDestinations(destinations) {
  const rows = [];
  for (const destination of destinations) {
    const endpoints = destination.endpoints.length ? destination.endpoints : [null];
    for (const endpoint of endpoints) {
      const cells = [destination.name, number(destination.queued)];
      const attributes = { "data-destination": destination.name };
      if (endpoint) {
        Object.assign(attributes, { "data-endpoint": endpoint.address, "data-health": endpoint.health, "data-breaker": endpoint.breaker });
        const health = endpoint.refusing ? endpoint.health + " (refusing)" : endpoint.health;
        cells.push(el("td", endpoint.address, { class: "mono" }),
          el("td", health, { class: endpoint.health === "down" || endpoint.refusing ? "bad" : "good" }),
          el("td", endpoint.breaker, { class: endpoint.breaker === "closed" ? "good" : "warn" }),
          number(endpoint.in_flight), number(endpoint.latency_ms, 2));
      } else {
        cells.push("in process", "–", "–", "–", "–");
      }
      rows.push(row(cells, attributes));
    }
  }
  fill("destinations", rows);
}

async function renderAlerts() {
  const box = $("alerts");
  const { alerts } = await json("/v1/alerts");
  box.dataset.state = "present";
  if (!alerts.length) return box.replaceChildren(el("p", "No alert rules."));
  const list = el("ul");
  for (const alert of alerts) {
    const item = el("li", null,
      { "data-alert": alert.id, "data-state": alert.state, "data-acknowledged": String(alert.acknowledged) });
    const since = alert.since ? " since " + new Date(alert.since).toLocaleTimeString() : "";
    item.append(el("strong", alert.name + " "),
      el("span", alert.state + (alert.acknowledged ? " (acknowledged)" : "") + " ",
        { class: alert.state === "firing" && !alert.acknowledged ? "bad" : "" }),
      el("span", "[" + alert.severity + "] " + alert.when + " · value " + (alert.value ?? "–") + since));
    if (alert.state === "firing" && !alert.acknowledged) {
      const button = el("button", "Acknowledge", { type: "button", "data-ack": alert.id });
      button.addEventListener("click", () => acknowledge(alert.id).catch(failed));
      item.append(" ", button);
    }
    list.append(item);
  }
  box.replaceChildren(list);
}

async function acknowledge(id) {
  const response = await api("/v1/alerts/" + encodeURIComponent(id) + "/ack", { method: "POST" });
  if (!response.ok) status("⚠ " + ((await response.json()).error || "acknowledging " + id + " failed"));
  await renderAlerts();
}

// The plot: accepted and dead-lettered msgs/s on the left scale, mean latency on the right.

function renderPlot() {
  const samples = state.samples;
  const plot = $("plot");
  const [width, height, top] = [900, 240, 22];
  const end = samples.length ? samples[samples.length - 1].at_ms : Date.now();
  // The samples' span, at least a minute, at most the five minutes kept.
  const span = Math.min(300000, Math.max(60000, samples.length ? end - samples[0].at_ms : 0));
  const x = (sample) => width - ((end - sample.at_ms) / span) * width;
  const peak = Math.max(0, ...samples.map((s) => Math.max(s.accepted_per_s, s.dead_lettered_per_s)));
  const rateMax = Math.max(1, peak) * 1.1;
  const latencyMax = Math.max(1, ...samples.map((s) => s.latency_mean_ms || 0)) * 1.1;
  const line = (value, max) => samples.filter((s) => value(s) !== null)
    .map((s) => x(s).toFixed(1) + "," + (height - (value(s) / max) * (height - top)).toFixed(1)).join(" ");
  $("line-accepted").setAttribute("points", line((s) => s.accepted_per_s, rateMax));
  $("line-dead").setAttribute("points", line((s) => s.dead_lettered_per_s, rateMax));
  $("line-latency").setAttribute("points", line((s) => s.latency_mean_ms ?? null, latencyMax));
  $("axis-rate").textContent = rateMax.toFixed(1) + " msgs/s";
  $("axis-latency").textContent = latencyMax.toFixed(2) + " ms";
  const step = span > 120000 ? 60000 : 10000;
  const ticks = Array.from({ length: Math.ceil(span / step) - 1 }, (_, n) => (n + 1) * step);
  $("axis-time").textContent = "last " + Math.round(span / 1000) + " s, a line every " + step / 1000 + " s";
  const grid = ticks.map((ago) => {
    const at = width - (ago / span) * width;
    const tick = document.createElementNS("http://www.w3.org/2000/svg", "line");
    for (const [name, value] of Object.entries({ x1: at, x2: at, y1: top, y2: height })) tick.setAttribute(name, value);
    return tick;
  });
  $("grid").replaceChildren(...grid);
  plot.dataset.samples = samples.length;
  plot.dataset.peak = peak.toFixed(3);
  const last = samples[samples.length - 1];
  $("now").textContent = last ? "now: " + last.accepted_per_s.toFixed(1) + " msgs/s, mean " +
    (last.latency_mean_ms === null ? "–" : last.latency_mean_ms.toFixed(2) + " ms") +
    ", p99 " + (last.latency_p99_over_ms !== undefined ? "> " + last.latency_p99_over_ms.toFixed(2) + " ms"
      : last.latency_p99_ms === null ? "–" : "≤ " + last.latency_p99_ms.toFixed(2) + " ms") : "";
}

function lastSampleAt() {
  return state.samples.length ? state.samples[state.samples.length - 1].at_ms : 0;
}

async function refreshHistory() {
  const body = await json("/v1/history?since=" + lastSampleAt());
  // Another refresh may have added some of these while this one waited.
  const last = lastSampleAt();
  state.samples = state.samples.concat(body.samples.filter((sample) => sample.at_ms > last)).slice(-body.capacity);
  renderPlot();
  renderRoutes();
}

async function refreshRoutes() { state.routes = (await json("/v1/routes")).routes; renderRoutes(); }
async function refreshPlugins() { renderPlugins((await json("/v1/plugins")).plugins); }
async function refreshDestinations() { renderDestinations((await json("/v1/destinations")).destinations); }

// The event stream

function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function showEvent(event) {
  const item = el("li", null, { "data-event": event.event });
  const shown = (value) => typeof value === "object" ? JSON.stringify(value)
    : typeof value === "number" && !Number.isInteger(value) ? value.toFixed(2) : value;
  const rest = Object.entries(event).filter(([key]) => key !== "event")
    .map(([key, value]) => key + "=" + shown(value)).join("  ");
  item.append(el("span", new Date().toLocaleTimeString() + " "), el("span", event.event, { class: "name" }), el("span", rest));
  const list = $("events");
  list.prepend(item);
  while (list.children.length > EVENTS_KEPT) list.lastElementChild.remove();
}

function connectEvents() {
  if (!state.running) return;
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const protocols = ["switchyard.events"].concat(state.token ? ["bearer." + base64url(state.token)] : []);
  const socket = new WebSocket(scheme + location.host + "/v1/events", protocols);
  const stream = $("stream");
  state.socket = socket;
  socket.onopen = () => { stream.dataset.state = "open"; stream.textContent = "events: live"; };
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    showEvent(event);
    const name = String(event.event);
    if (name.startsWith("plugin-")) refreshPlugins().catch(failed);
    if (name.startsWith("endpoint-")) refreshDestinations().catch(failed);
    if (name.startsWith("config-")) refreshRoutes().catch(failed);
    if (name.startsWith("alert")) renderAlerts().catch(failed);
  };
  socket.onclose = () => {
    stream.dataset.state = "closed";
    stream.textContent = "events: reconnecting";
    if (state.socket === socket && state.running) setTimeout(connectEvents, 2000);
  };
}

// Polling, login and the buttons

function failed(error) {
  if (error instanceof Unauthorized) return logout("The token was refused; log in again.");
  status("⚠ " + error.message);
}

// Each login starts one polling loop of each kind; a loop of an earlier login (its next turn
// still due when the user logged out and in again) ends at that turn.
async function poll(session) {
  if (session !== state.session) return;
  try {
    await Promise.all([refreshHistory(), refreshPlugins(), refreshDestinations()]);
    status("updated " + new Date().toLocaleTimeString());
  } catch (error) {
    failed(error);
  }
  setTimeout(() => poll(session), POLL_MS);
}

async function slowPoll(session) {
  if (session !== state.session) return;
  await Promise.all([refreshRoutes(), renderAlerts()]).catch(failed);
  setTimeout(() => slowPoll(session), 5 * POLL_MS);
}

function showBoard() {
  $("login").hidden = true;
  for (const id of ["board", "reload", "logout"]) $(id).hidden = false;
  state.running = true;
  const session = ++state.session;
  poll(session);
  slowPoll(session);
  connectEvents();
}

function logout(message) {
  state.running = false;
  state.session++;
  state.token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.socket) state.socket.close();
  for (const id of ["board", "reload", "logout"]) $(id).hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

/** Whether the admin API lets this tab in with the token it has (or none). */
async function admitted() {
  try {
    await json("/v1/plugins");
    return true;
  } catch (error) {
    if (error instanceof Unauthorized) return false;
    throw error;
  }
}

$("login").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  state.token = $("token").value;
  $("token").value = "";
  if (await admitted()) {
    sessionStorage.setItem(TOKEN_KEY, state.token);
    showBoard();
  } else {
    logout("That token was refused.");
  }
});

$("logout").addEventListener("click", () => logout(""));

$("reload").addEventListener("click", async () => {
  const result = $("reload-result");
  result.textContent = "reloading…";
  result.dataset.state = "waiting";
  try {
    const response = await api("/v1/reload", { method: "POST" });
    const body = await response.json();
    result.textContent = response.ok ? "reloaded " + new Date().toLocaleTimeString() : "reload refused: " + body.error;
    result.dataset.state = response.ok ? "reloaded" : "refused";
    await refreshRoutes();
  } catch (error) {
    failed(error);
  }
});

admitted().then((yes) => (yes ? showBoard() : logout(state.token ? "The token was refused; log in again." : "")))
  .catch((error) => status("⚠ " + error.message));
