// The web page of `kiln serve` (docs/server.md). Plain JavaScript, no build
// step. Every string from the server (job names, log lines, artifact names,
// messages) reaches the page through textContent, never as markup.
"use strict";

if (document.body.classList.contains("login")) {
  if (new URLSearchParams(location.search).has("failed")) {
    document.getElementById("failed").hidden = false;
  }
} else {
  main();
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options));
  if (response.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error || message; } catch (_) {}
    throw new Error(message);
  }
  return response.headers.get("content-type")?.includes("json") ? response.json() : response.text();
}

const words = (status) => String(status || "").replace(/_/g, " ");
const badge = (status) => el("span", { class: "status s-" + status, text: words(status) });

function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return ms + " ms";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + " s";
  return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}

function ago(ms) {
  if (!ms) return "";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
}

let me = { name: "", role: "read" };
let cleanup = [];
const can = (role) => ["read", "submit", "admin"].indexOf(me.role) >= ["read", "submit", "admin"].indexOf(role);

async function main() {
  try { me = await api("/api/me"); } catch (_) { return; }
  document.getElementById("who").textContent = me.name + " · " + me.role;
  window.addEventListener("hashchange", route);
  route();
}

function route() {
  for (const stop of cleanup) stop();
  cleanup = [];
  const main = document.getElementById("main");
  main.replaceChildren();
  const hash = location.hash || "#/";
  const build = hash.match(/^#\/builds\/(\d+)/);
  if (build) return showBuild(main, build[1]);
  if (hash.startsWith("#/store")) return showStore(main);
  return showBuilds(main);
}

// ---- builds ------------------------------------------------------------

async function showBuilds(main) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const status = params.get("status") || "";
  const filter = el("select", { "aria-label": "status", onchange: (e) => {
    location.hash = "#/" + (e.target.value ? "?status=" + e.target.value : "");
  } });
  for (const s of ["", "queued", "running", "passed", "passed_with_failures", "failed", "killed", "timed_out"]) {
    const option = el("option", { value: s, text: s ? words(s) : "all statuses" });
    if (s === status) option.selected = true;
    filter.append(option);
  }
  const list = el("div", { class: "list", role: "table" },
    el("div", { class: "row head", role: "row" },
      el("span", { text: "Build" }), el("span", { text: "Status" }), el("span", { class: "owner", text: "Submitted by / project" }),
      el("span", { text: "Duration" }), el("span", { class: "pinned", text: "" })));
  const more = el("button", { text: "Older builds", hidden: "" });
  main.append(el("h1", { text: "Builds" }), el("div", { class: "toolbar" }, filter, more), list);
  const rows = new Map();
  const render = (build) => {
    const row = el("a", { class: "row", role: "row", href: "#/builds/" + build.build },
      el("span", { class: "mono", text: "#" + build.build }),
      el("span", {}, badge(build.status)),
      el("span", { class: "owner", text: build.owner + " · " + ago(build.started) }),
      el("span", { text: duration(build.duration_ms) }),
      el("span", { class: "pinned", text: build.pinned ? "📌 pinned" : "" }));
    return row;
  };
  let before = null;
  const page = async () => {
    const query = new URLSearchParams({ limit: "50" });
    if (status) query.set("status", status);
    if (before) query.set("before", before);
    const answer = await api("/api/builds?" + query);
    for (const build of answer.builds) {
      const row = render(build);
      rows.set(build.build, row);
      list.append(row);
    }
    before = answer.next_before;
    more.hidden = !before;
  };
  more.addEventListener("click", page);
  await page();
  const source = new EventSource("/api/events");
  source.onmessage = async (message) => {
    const id = JSON.parse(message.data).build;
    let build;
    try { build = await api("/api/builds/" + id); } catch (_) { return; }
    if (status && build.status !== status) { rows.get(id)?.remove(); rows.delete(id); return; }
    const row = render(build);
    const old = rows.get(id);
    if (old) old.replaceWith(row); else list.children[0].after(row);
    rows.set(id, row);
  };
  source.addEventListener("resync", () => route());
  cleanup.push(() => source.close());
}

// ---- one build ---------------------------------------------------------

async function showBuild(main, id) {
  const header = el("div", { class: "panel" });
  const stages = el("div", { class: "stages" });
  const graph = el("div", { class: "panel" });
  const logTitle = el("h2", { text: "Pick a job to see its log" });
  const log = el("div", { class: "log", role: "log", tabindex: "0" });
  const artifacts = el("ul", { class: "artifacts" });
  main.append(header, el("div", { class: "panel" }, el("h2", { text: "Jobs" }), stages), graph,
    el("div", { class: "panel" }, logTitle, log), el("div", { class: "panel" }, el("h2", { text: "Artifacts" }), artifacts));
  let selected = null;
  let logStream = null;
  cleanup.push(() => logStream?.close());

  const openLog = async (job, build) => {
    selected = job.job;
    logStream?.close();
    logTitle.textContent = "Log of " + job.job;
    const view = new LogView(log);
    if (job.status === "running" || job.status === "queued") {
      logStream = new EventSource("/api/builds/" + id + "/log/" + encodeURIComponent(job.job) + "?follow=true");
      logStream.onmessage = (message) => view.add(message.data);
      logStream.addEventListener("end", () => { logStream.close(); view.note("(the job ended)"); });
      // No reconnecting: a new stream would start the log over.
      logStream.onerror = () => { if (logStream.readyState !== EventSource.CLOSED) { logStream.close(); view.note("(disconnected)"); } };
    } else if (job.log) {
      try { view.addText(await api("/api/builds/" + id + "/log/" + encodeURIComponent(job.job))); }
      catch (error) { view.note(error.message); }
    } else {
      view.note("(no log: the job " + words(job.status) + ")");
    }
    draw(build);
  };

  const draw = (build) => {
    const actions = el("span", { class: "toolbar" });
    if (can("submit") && (build.status === "running" || build.status === "queued")) {
      actions.append(el("button", { class: "danger", text: "Kill", onclick: () => act("kill") }));
    }
    if (can("admin")) {
      actions.append(build.pinned
        ? el("button", { text: "Unpin", onclick: () => act("unpin") })
        : el("button", { text: "Pin", onclick: () => act("pin") }));
    }
    header.replaceChildren(
      el("h1", {}, "Build #" + build.build + " ", badge(build.status)),
      el("div", { class: "facts" },
        el("span", {}, "by ", el("b", { text: build.submitter || build.owner })),
        el("span", {}, "started ", el("b", { text: ago(build.started) })),
        el("span", {}, "took ", el("b", { text: duration(build.duration_ms) })),
        build.pinned ? el("span", { text: "📌 pinned" }) : null),
      actions);
    const byStage = new Map();
    for (const job of build.jobs) {
      if (!byStage.has(job.stage)) byStage.set(job.stage, []);
      byStage.get(job.stage).push(job);
    }
    stages.replaceChildren(...[...byStage].map(([stage, jobs]) =>
      el("section", { class: "stage" }, el("h3", { text: stage }),
        ...jobs.map((job) => el("button", { class: "job" + (job.job === selected ? " selected" : ""), onclick: () => openLog(job, build) },
          el("span", { class: "name", text: job.job }),
          badge(job.cached ? "cached" : job.status),
          el("span", { class: "why", text: why(job) }))))));
    graph.replaceChildren(el("h2", { text: "Graph" }), el("div", { class: "graph-wrap" }, drawGraph([...byStage], build.jobs)));
    artifacts.replaceChildren(...(build.artifacts.length ? build.artifacts.map((a) =>
      el("li", {}, el("a", { href: "/api/builds/" + id + "/artifacts/" + a.name.split("/").map(encodeURIComponent).join("/"), download: "", text: a.name }),
        el("span", { class: "muted", text: "  " + a.kind + ", " + a.size + " bytes" })))
      : [el("li", { class: "muted", text: "none" })]));
  };

  const act = async (action) => {
    try { await api("/api/builds/" + id + "/" + action, { method: "POST" }); } catch (error) { alert(error.message); }
    refresh();
  };
  // At most one refresh each 300 ms, and always one after the last change.
  let waiting = null, again = false;
  const load = async () => {
    try { draw(await api("/api/builds/" + id)); } catch (error) { header.replaceChildren(el("p", { class: "error", text: error.message })); }
  };
  const refresh = () => {
    if (waiting) { again = true; return; }
    load();
    waiting = setTimeout(() => { waiting = null; if (again) { again = false; refresh(); } }, 300);
  };
  await load();
  const events = new EventSource("/api/builds/" + id + "/events");
  events.onmessage = (message) => {
    const kind = JSON.parse(message.data).event?.type || "";
    if (kind !== "job/output") refresh();
    if (kind === "build/status" || kind === "build/end") refresh();
  };
  // The stream ends with the build: no reconnecting to replay it.
  events.onerror = () => { events.close(); refresh(); };
  cleanup.push(() => events.close());
}

function why(job) {
  if (job.cached) return "from the cache: same key " + String(job.key || "").slice(7, 19);
  if (job.status === "skipped") return job.message || "not run";
  if (job.status === "queued") return "waiting";
  const parts = [];
  if (job.duration_ms !== null && job.duration_ms !== undefined) parts.push(duration(job.duration_ms));
  if (job.exit_code !== null && job.exit_code !== undefined) parts.push("exit " + job.exit_code);
  if (job.message) parts.push(job.message);
  if (!job.cached && job.status !== "running" && job.key) parts.push("ran: no result for its key yet");
  return parts.join(" · ");
}

function drawGraph(stages, jobs) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs) => {
    const node = document.createElementNS(ns, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    return node;
  };
  const colW = 220, rowH = 34, boxW = 180, boxH = 24;
  const place = new Map();
  let rows = 0;
  stages.forEach(([, stageJobs], column) => {
    stageJobs.forEach((job, row) => place.set(job.job, { x: 10 + column * colW, y: 10 + row * rowH, job }));
    rows = Math.max(rows, stageJobs.length);
  });
  const width = 20 + stages.length * colW, height = 20 + rows * rowH;
  const root = svg("svg", { class: "graph", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "job graph" });
  for (const job of jobs) {
    const to = place.get(job.job);
    for (const need of job.needs || []) {
      const from = place.get(need);
      if (!from || !to) continue;
      const x1 = from.x + boxW, y1 = from.y + boxH / 2, x2 = to.x, y2 = to.y + boxH / 2;
      root.append(svg("path", { class: "edge", d: `M${x1},${y1} C${x1 + 20},${y1} ${x2 - 20},${y2} ${x2},${y2}` }));
    }
  }
  const colors = { passed: "#1a7f37", failed: "#cf222e", running: "#0969da", queued: "#8250df", killed: "#9a6700", timed_out: "#9a6700", skipped: "#8c959f" };
  for (const { x, y, job } of place.values()) {
    const status = job.cached ? "cached" : job.status;
    const group = svg("g", {});
    group.append(svg("rect", { x, y, width: boxW, height: boxH, rx: 5, fill: "#fff", stroke: colors[status] || "#57606a", "stroke-width": 2 }));
    const label = svg("text", { x: x + 8, y: y + 16 });
    const name = job.job.length > 22 ? job.job.slice(0, 21) + "…" : job.job;
    label.textContent = (status === "passed" ? "✓ " : status === "failed" ? "✗ " : status === "cached" ? "↺ " : status === "running" ? "● " : "· ") + name;
    const title = svg("title", {});
    title.textContent = job.job + ": " + words(status);
    group.append(label, title);
    root.append(group);
  }
  return root;
}

// ---- the log: ANSI colours as classes, lines added once a frame, at most
// MAX_LINES kept on the page so a long log never freezes it ----------------

const MAX_LINES = 5000;

class LogView {
  constructor(node) {
    this.node = node;
    this.node.replaceChildren();
    this.queue = [];
    this.lines = 0;
    this.dropped = 0;
    this.scheduled = false;
  }
  add(line) {
    this.queue.push(line);
    if (!this.scheduled) { this.scheduled = true; requestAnimationFrame(() => this.flush()); }
  }
  addText(text) { for (const line of text.split("\n")) this.add(line); }
  note(text) { this.node.append(el("div", { class: "note", text })); }
  flush() {
    this.scheduled = false;
    const stick = this.node.scrollTop + this.node.clientHeight >= this.node.scrollHeight - 20;
    const fragment = document.createDocumentFragment();
    for (const line of this.queue) fragment.append(ansiLine(line));
    this.lines += this.queue.length;
    this.queue = [];
    this.node.append(fragment);
    while (this.lines > MAX_LINES) {
      this.node.firstChild?.remove();
      this.lines -= 1;
      this.dropped += 1;
    }
    if (this.dropped && !this.node.querySelector(".dropped")) {
      this.node.prepend(el("div", { class: "note dropped", text: "earlier lines are not shown here: the whole log is kiln log or GET /api/builds/N/log/JOB" }));
      this.lines += 1;
    }
    if (stick) this.node.scrollTop = this.node.scrollHeight;
  }
}

// One log line, its SGR colour codes as classes; the text as text.
function ansiLine(line) {
  const div = document.createElement("div");
  let classes = [];
  const pattern = /\x1b\[([0-9;]*)m/g;
  let last = 0, match;
  const push = (text) => {
    if (!text) return;
    const span = document.createElement("span");
    if (classes.length) span.className = classes.join(" ");
    span.textContent = text;
    div.append(span);
  };
  while ((match = pattern.exec(line))) {
    push(line.slice(last, match.index));
    last = pattern.lastIndex;
    for (const code of (match[1] || "0").split(";").map(Number)) {
      if (code === 0) classes = [];
      else if (code === 1) classes.push("a-bold");
      else if (code === 2) classes.push("a-dim");
      else if (code === 3) classes.push("a-italic");
      else if (code === 4) classes.push("a-underline");
      else if ((code >= 30 && code <= 37) || (code >= 90 && code <= 97)) {
        classes = classes.filter((c) => !c.startsWith("a-fg-"));
        classes.push("a-fg-" + code);
      } else if (code === 39) classes = classes.filter((c) => !c.startsWith("a-fg-"));
    }
  }
  push(line.slice(last).replace(/\x1b\[[0-9;]*[A-Za-z]/g, ""));
  if (!div.firstChild) div.append(document.createTextNode(" "));
  return div;
}

// ---- store -------------------------------------------------------------

async function showStore(main) {
  const answer = await api("/api/store");
  const stats = answer.stats || {};
  const mib = (bytes) => (bytes / 1048576).toFixed(1) + " MiB";
  main.append(el("h1", { text: "Store" }),
    el("div", { class: "panel facts" },
      el("span", {}, "on disk ", el("b", { text: mib(stats.stored_bytes || 0) })),
      el("span", {}, "logical ", el("b", { text: mib(stats.logical_bytes || 0) })),
      el("span", {}, "dedup ", el("b", { text: (stats.dedup_ratio || 0).toFixed(2) + "×" })),
      el("span", {}, "builds ", el("b", { text: String(stats.builds || 0) })),
      el("span", {}, "artifacts ", el("b", { text: String(stats.artifacts || 0) }))),
    el("div", { class: "panel" }, el("h2", { text: "Pinned builds (curation never removes their artifacts)" }),
      el("ul", {}, ...(answer.pinned_builds.length
        ? answer.pinned_builds.map((b) => el("li", {}, el("a", { href: "#/builds/" + b, text: "#" + b })))
        : [el("li", { class: "muted", text: "none" })]))));
  if (can("admin")) {
    const report = el("pre", { class: "mono" });
    main.append(el("div", { class: "panel" }, el("h2", { text: "Curation" }),
      el("button", { text: "Run curation now", onclick: async () => {
        try { report.textContent = JSON.stringify(await api("/api/store/curate", { method: "POST" }), null, 2); }
        catch (error) { report.textContent = error.message; }
      } }), report));
  }
}
