// The colony's dashboard: one page, its views chosen by the address's #fragment, kept live by
// one stream of server-sent events (/api/events) fed from the colony's event subjects.

import { drawGraph, nodeName, STATES } from "./graph.js";

const ZERO = "0001-01-01T00:00:00Z";
const EXEC_STATES = ["pending", "approved", "rejected", "unregistered"];
const view = document.getElementById("view");

// -- small helpers --------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") Object.entries(v).forEach(([ev, f]) => e.addEventListener(ev, f));
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
}

async function api(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `${path}: ${r.status}`);
  return body;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");
// Local time to the millisecond: the steps of a fast process are apart by less than a second.
function when(t) {
  if (!t || t === ZERO) return "";
  const d = new Date(t);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
const stateName = (s) => STATES[s] ?? String(s);
const stateCell = (s) => h("span", { class: `state ${stateName(s)}` }, stateName(s));
const json = (v) => JSON.stringify(v, null, 2);

function showError(e) {
  const p = document.getElementById("error");
  p.textContent = e ? String(e.message || e) : "";
  p.hidden = !e;
}

function seconds(from, to) {
  if (!from || from === ZERO) return "";
  const end = !to || to === ZERO ? Date.now() : new Date(to).getTime();
  const ms = end - new Date(from).getTime();
  return ms < 1000 ? `${Math.max(0, Math.round(ms))} ms` : `${(ms / 1000).toFixed(1)} s`;
}

// -- the live stream: counts in the header, events to whichever view listens -----------------

const listeners = new Set(); // (kind, data) => void, the current view's
let lastCounts = null;

function showCounts(c) {
  lastCounts = c;
  for (const s of STATES) document.getElementById(`count-${s}`).textContent = c.states[s] ?? 0;
  document.getElementById("count-online").textContent = c.online.length;
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    live.textContent = "live";
    live.className = "live on";
  });
  source.addEventListener("error", () => {
    live.textContent = "reconnecting";
    live.className = "live off";
  });
  for (const kind of ["counts", "process", "graph", "beat", "rejection"]) {
    source.addEventListener(kind, (m) => {
      const data = JSON.parse(m.data);
      if (kind === "counts") showCounts(data);
      listeners.forEach((f) => f(kind, data));
    });
  }
}

// -- views ----------------------------------------------------------------------------------

// Each view renders into `view` and returns what to do when it is left.

function processRow(p) {
  return h(
    "tr",
    { "data-id": p.processid, "data-state": stateName(p.state) },
    h("td", {}, h("a", { class: "id", href: `#/process/${p.processid}` }, p.processid.slice(0, 12))),
    h("td", {}, p.spec.funcname),
    h("td", {}, p.spec.conditions.executortype),
    h("td", { class: "state-cell" }, stateCell(p.state)),
    h("td", {}, when(p.submissiontime)),
    h("td", { class: "num" }, seconds(p.starttime, p.endtime)),
  );
}

function processesView() {
  const state = h("select", { name: "state" },
    h("option", { value: "" }, "any state"),
    STATES.map((s) => h("option", { value: s }, s)));
  const etype = h("input", { name: "executortype", placeholder: "executor type" });
  const label = h("input", { name: "label", placeholder: "label" });
  const find = h("input", { name: "find", placeholder: "find id or function", type: "search" });
  const body = h("tbody", { id: "processes" });
  const types = h("tbody", { id: "types" });
  const shown = new Map(); // process id -> process, as listed
  const matches = (p) =>
    (!state.value || stateName(p.state) === state.value) &&
    (!etype.value || p.spec.conditions.executortype === etype.value) &&
    (!label.value || p.spec.label === label.value) &&
    (!find.value || p.processid.startsWith(find.value.toLowerCase()) ||
      p.spec.funcname.includes(find.value));
  const draw = () => {
    body.replaceChildren(...[...shown.values()].filter(matches).slice(0, 200).map(processRow));
  };
  const load = async () => {
    const q = new URLSearchParams({ limit: "200" });
    if (state.value) q.set("state", state.value);
    if (etype.value) q.set("executortype", etype.value);
    if (label.value) q.set("label", label.value);
    try {
      const list = await api(`/api/processes?${q}`);
      shown.clear();
      list.forEach((p) => shown.set(p.processid, p));
      draw();
      showError(null);
    } catch (e) {
      showError(e);
    }
  };
  const drawTypes = (c) => {
    types.replaceChildren(...Object.entries(c.executortypes).sort().map(([t, n]) =>
      h("tr", {}, h("td", {}, t), STATES.map((s) => h("td", { class: "num" }, String(n[s] ?? 0))))));
  };
  [state, etype, label].forEach((i) => i.addEventListener("change", load));
  find.addEventListener("input", draw);
  view.replaceChildren(
    h("h2", {}, "by executor type"),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "executor type"),
      STATES.map((s) => h("th", { class: "num" }, s)))), types),
    h("h2", {}, "processes"),
    h("div", { class: "filters" }, state, etype, label, find),
    h("table", {},
      h("thead", {}, h("tr", {}, ["id", "function", "executor type", "state", "submitted", "took"]
        .map((c) => h("th", {}, c)))),
      body),
  );
  if (lastCounts) drawTypes(lastCounts);
  load();
  let pending = false;
  return (kind, data) => {
    if (kind === "counts") drawTypes(data);
    if (kind !== "process") return;
    // Newest first: a process not listed yet goes on top.
    if (shown.has(data.processid)) shown.set(data.processid, data);
    else {
      const rest = [...shown];
      shown.clear();
      shown.set(data.processid, data);
      rest.forEach(([k, v]) => shown.set(k, v));
    }
    if (!pending) {
      pending = true;
      requestAnimationFrame(() => { pending = false; draw(); });
    }
  };
}

function history(p) {
  const rows = [["waiting", p.submissiontime]];
  if (p.starttime !== ZERO) rows.push(["running", p.starttime]);
  if (p.state >= 2) rows.push([stateName(p.state), p.endtime]);
  return rows;
}

function processView(id) {
  const head = h("h2", {}, "process ", h("span", { class: "id" }, id));
  const facts = h("dl", { id: "facts" });
  const hist = h("tbody", { id: "history" });
  const why = h("div", { id: "why" });
  const out = h("pre", { id: "output" });
  const errs = h("pre", { id: "errors" });
  const spec = h("pre", { id: "spec" });
  const log = h("pre", { id: "log" });
  const logState = h("span", { id: "log-state", class: "muted" }, "following");
  let process = null;
  let seenStates = [];
  view.replaceChildren(
    head,
    h("div", { class: "grid" },
      h("div", {}, facts, h("h2", {}, "history"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "state"), h("th", {}, "at"))), hist)),
      h("div", {}, why, h("h2", {}, "output"), out, h("h2", {}, "errors"), errs)),
    h("h2", {}, "log ", logState),
    log,
    h("h2", {}, "function spec"),
    spec,
  );
  const explain = async () => {
    if (!process || process.state !== 0) return why.replaceChildren();
    try {
      const e = await api(`/api/processes/${process.processid}/explain`);
      if (process.state !== 0) return why.replaceChildren();
      why.replaceChildren(h("div", { class: "why" },
        h("strong", {}, "why is this waiting: "), e.reason,
        e.details.length ? h("ul", {}, e.details.map((d) => h("li", {}, d))) : null,
        e.ahead ? h("p", {}, `${e.ahead} ahead of it in the queue`) : null));
    } catch (e) {
      why.replaceChildren(h("p", { class: "muted" }, `why: ${e.message}`));
    }
  };
  const show = (p) => {
    const wasWaiting = process?.state === 0;
    process = p;
    for (const [s, t] of history(p)) if (!seenStates.some(([x]) => x === s)) seenStates.push([s, t]);
    // A retry runs it again: its state went back, which the record's times no longer show.
    const last = seenStates[seenStates.length - 1];
    if (last[0] !== stateName(p.state)) seenStates.push([stateName(p.state), new Date().toISOString()]);
    hist.replaceChildren(...seenStates.map(([s, t]) =>
      h("tr", { "data-state": s }, h("td", {}, h("span", { class: `state ${s}` }, s)), h("td", {}, when(t)))));
    facts.replaceChildren(...[
      h("dt", {}, "state"), h("dd", { id: "process-state" }, stateCell(p.state)),
      h("dt", {}, "function"), h("dd", {}, p.spec.funcname),
      h("dt", {}, "executor type"), h("dd", {}, p.spec.conditions.executortype),
      h("dt", {}, "submitted by"), h("dd", {}, p.initiatorname),
      h("dt", {}, "retries"), h("dd", {}, String(p.retries)),
      p.processgraphid ? h("dt", {}, "workflow") : null,
      p.processgraphid ? h("dd", {}, h("a", { href: `#/graph/${p.processgraphid}` },
        p.processgraphid.slice(0, 12))) : null,
    ].filter(Boolean));
    out.textContent = p.out.length ? json(p.out) : "";
    errs.textContent = p.errors.join("\n");
    spec.textContent = json(p.spec);
    if (p.state === 0 || wasWaiting) explain();
  };
  let source = null;
  const follow = (pid) => {
    source = new EventSource(`/api/processes/${pid}/logs`);
    source.addEventListener("log", (m) => {
      log.append(`${JSON.parse(m.data).message}\n`);
    });
    source.addEventListener("end", () => {
      source.close();
      logState.textContent = "ended";
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) logState.textContent = "not available";
    });
  };
  api(`/api/processes/${encodeURIComponent(id)}`).then((p) => {
    head.lastChild.textContent = p.processid;
    show(p);
    follow(p.processid);
  }, showError);
  return Object.assign((kind, data) => {
    if (kind === "process" && process && data.processid === process.processid) show(data);
  }, { leave: () => source?.close() });
}

function graphsView() {
  const body = h("tbody", { id: "graphs" });
  view.replaceChildren(h("h2", {}, "workflows"), h("table", {},
    h("thead", {}, h("tr", {}, ["id", "state", "nodes", "submitted", "from"].map((c) => h("th", {}, c)))),
    body));
  const row = (g) => h("tr", { "data-id": g.processgraphid },
    h("td", {}, h("a", { class: "id", href: `#/graph/${g.processgraphid}` }, g.processgraphid.slice(0, 12))),
    h("td", {}, stateCell(g.state)),
    h("td", {}, Object.keys(g.nodes).join(", ")),
    h("td", {}, when(g.submissiontime)),
    h("td", {}, g.cronname ? `cron ${g.cronname}` : g.generatorname ? `generator ${g.generatorname}` : ""));
  const graphs = new Map();
  const draw = () => body.replaceChildren(...[...graphs.values()].map(row));
  api("/api/graphs").then((list) => { list.forEach((g) => graphs.set(g.processgraphid, g)); draw(); }, showError);
  return (kind, data) => {
    if (kind !== "graph") return;
    if (!graphs.has(data.processgraphid)) {
      const rest = [...graphs];
      graphs.clear();
      graphs.set(data.processgraphid, data);
      rest.forEach(([k, v]) => graphs.set(k, v));
    } else graphs.set(data.processgraphid, data);
    draw();
  };
}

function graphView(id) {
  const head = h("h2", {}, "workflow ", h("span", { class: "id" }, id), " ", h("span", { id: "graph-state" }));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  view.replaceChildren(head, svg, h("p", { class: "muted" }, "each node is a process: open it for its log, output and why it waits"));
  let graph = null;
  let colour = () => {};
  api(`/api/graphs/${encodeURIComponent(id)}`).then(({ graph: g, processes }) => {
    graph = g;
    head.children[0].textContent = g.processgraphid;
    document.getElementById("graph-state").replaceChildren(stateCell(g.state));
    colour = drawGraph(svg, processes);
  }, showError);
  return (kind, data) => {
    if (!graph) return;
    if (kind === "process" && data.processgraphid === graph.processgraphid) colour(data);
    if (kind === "graph" && data.processgraphid === graph.processgraphid) {
      document.getElementById("graph-state").replaceChildren(stateCell(data.state));
    }
  };
}

function capabilities(e) {
  const hw = e.capabilities.hardware.map((x) =>
    [x.model, x.cpu, x.cores && `${x.cores} cores`, x.mem, x.gpu.count && `${x.gpu.count}× ${x.gpu.name}`,
      x.platform && `${x.platform}/${x.architecture}`].filter(Boolean).join(" "));
  const sw = e.capabilities.software.map((s) => [s.name, s.version].filter(Boolean).join(" "));
  return [...hw, ...sw].join("; ");
}

function executorsView() {
  const body = h("tbody", { id: "executors" });
  view.replaceChildren(h("h2", {}, "executors"), h("table", {},
    h("thead", {}, h("tr", {}, ["name", "type", "registration", "online", "last heard", "running", "location", "capabilities"]
      .map((c) => h("th", {}, c)))), body));
  let executors = [];
  const online = new Set(lastCounts ? lastCounts.online : []);
  const heard = new Map();
  const draw = () => body.replaceChildren(...executors.map((e) => {
    const on = online.has(e.executorname);
    return h("tr", { "data-name": e.executorname },
      h("td", {}, e.executorname), h("td", {}, e.executortype), h("td", {}, EXEC_STATES[e.state] ?? e.state),
      h("td", { class: on ? "online" : "offline" }, on ? "online" : "offline"),
      h("td", {}, heard.get(e.executorname) || when(e.lastheardfromtime)),
      h("td", { class: "num" }, String(e.running)),
      h("td", {}, e.locationname), h("td", {}, capabilities(e)));
  }));
  api("/api/executors").then((list) => {
    executors = list;
    if (!lastCounts) list.filter((e) => e.online).forEach((e) => online.add(e.executorname));
    draw();
  }, showError);
  return (kind, data) => {
    if (kind === "beat") {
      heard.set(data.executorname, when(new Date().toISOString()));
      if (!executors.some((e) => e.executorname === data.executorname)) {
        api("/api/executors").then((list) => { executors = list; draw(); }, showError);
      }
    }
    if (kind === "counts") {
      online.clear();
      data.online.forEach((n) => online.add(n));
    }
    if (kind === "beat" || kind === "counts") draw();
  };
}

// -- routing --------------------------------------------------------------------------------

let current = null;

function route() {
  current?.leave?.();
  listeners.clear();
  showError(null);
  const [, page, id] = location.hash.replace(/^#\/?/, "/").split("/");
  document.body.dataset.view = page || "processes";
  if (page === "process" && id) current = processView(id);
  else if (page === "graph" && id) current = graphView(id);
  else if (page === "graphs") current = graphsView();
  else if (page === "executors") current = executorsView();
  else current = processesView();
  listeners.add(current);
}

window.addEventListener("hashchange", route);
api("/api/whoami").then((w) => {
  document.getElementById("who").textContent = `colony ${w.colony} · as ${w.name}`;
}, showError);
connect();
route();
