// nodepilot monitor page: reads /api/jobs and /api/jobs/<id>/usage every 2 s; draws with inline SVG.
"use strict";
const TIMING_STEPS = ["getjob", "stagein", "payload", "stageout", "initial_setup", "setup"];
const SVG = "http://www.w3.org/2000/svg";
let selected = null;

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== "") node.textContent = text;
  return node;
}

function svgEl(tag, attrs = {}, text = "") {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== "") node.textContent = text;
  return node;
}

async function getJSON(url) {
  const reply = await fetch(url, { cache: "no-store" });
  if (!reply.ok) throw new Error(`${url}: HTTP ${reply.status}`);
  return reply.json();
}

function renderJobs(data) {
  document.getElementById("pilot").textContent = `queue ${data.queue} on ${data.node}`;
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren();
  for (const job of data.jobs) {
    const id = job.panda_id;
    const row = el("tr", { "data-panda-id": String(id) });
    if (id === selected) row.classList.add("selected");
    row.append(
      el("td", {}, String(id ?? "-")),
      el("td", { class: `state state-${job.state}` }, job.state || "?"),
      el("td", { class: "step" }, job.current ? (job.step || "") : ""),
      el("td", { class: "num" }, String(job.pilot_error_code || 0)),
      el("td", { class: "num" }, String(job.exe_error_code || 0)),
      el("td", { class: "num" }, `${job.files_in || 0}/${job.files_out || 0}`),
      el("td", {}, (job.pilot_error_diag || "").slice(0, 120)),
    );
    row.addEventListener("click", () => { selected = id; refresh(); });
    body.append(row);
  }
}

function renderTiming(job) {
  const timings = job.timings || {};
  const longest = Math.max(0.001, ...TIMING_STEPS.map((s) => timings[s] || 0));
  const body = document.querySelector("#timing tbody");
  body.replaceChildren();
  for (const step of TIMING_STEPS) {
    const seconds = timings[step];
    const row = el("tr", { "data-step": step });
    const bar = el("span", { class: "bar" });
    bar.style.width = `${Math.round(160 * (seconds || 0) / longest)}px`;
    const cell = el("td");
    cell.append(bar);
    row.append(el("td", {}, step), el("td", { class: "num" }, seconds === undefined ? "-" : seconds.toFixed(3)), cell);
    body.append(row);
  }
}

function polyline(points, cls) {
  return svgEl("polyline", { class: cls, points: points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "),
                             "data-points": String(points.length) });
}

function renderUsage(usage) {
  const svg = document.getElementById("usage");
  svg.replaceChildren();
  const samples = usage.samples || [];
  const note = document.getElementById("usage-note");
  note.textContent = samples.length ? `${samples.length} samples` : (usage.note || "no sample yet");
  if (!samples.length) return;
  const [left, right, top, bottom] = [60, 620, 20, 230];
  const t0 = samples[0].time;
  const span = Math.max(samples[samples.length - 1].time - t0, 1e-3);
  const x = (t) => left + (right - left) * (t - t0) / span;
  const maxRss = Math.max(1, ...samples.map((s) => s.rss_kb || 0));
  const rss = samples.map((s) => [x(s.time), bottom - (bottom - top) * (s.rss_kb || 0) / maxRss]);
  const cpu = [];  // CPU use between two samples, in cores
  for (let i = 1; i < samples.length; i++) {
    const dt = samples[i].time - samples[i - 1].time;
    if (dt > 0) cpu.push([samples[i].time, Math.max(0, (samples[i].cpu_s - samples[i - 1].cpu_s) / dt)]);
  }
  const maxCpu = Math.max(1, ...cpu.map(([, c]) => c));
  svg.append(
    svgEl("line", { x1: left, y1: bottom, x2: right, y2: bottom, stroke: "#999" }),
    svgEl("line", { x1: left, y1: top, x2: left, y2: bottom, stroke: "#999" }),
    svgEl("text", { x: 4, y: top + 4 }, `${(maxRss / 1024).toFixed(1)} MiB`),
    svgEl("text", { x: 4, y: bottom }, "0"),
    svgEl("text", { x: left, y: 252 }, "0 s"),
    svgEl("text", { x: right - 40, y: 252 }, `${span.toFixed(1)} s`),
    svgEl("text", { x: left + 8, y: top + 4 }, `RSS (blue), CPU cores (orange, max ${maxCpu.toFixed(2)})`),
    polyline(rss, "rss"),
  );
  svg.lastChild.setAttribute("id", "rss-line");
  if (cpu.length) {
    svg.append(polyline(cpu.map(([t, c]) => [x(t), bottom - (bottom - top) * c / maxCpu]), "cpu"));
    svg.lastChild.setAttribute("id", "cpu-line");
  }
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const data = await getJSON("/api/jobs");
    if (selected === null || !data.jobs.some((j) => j.panda_id === selected)) {
      const current = data.jobs.find((j) => j.current) || data.jobs[data.jobs.length - 1];
      selected = current ? current.panda_id : null;
    }
    renderJobs(data);
    const job = data.jobs.find((j) => j.panda_id === selected);
    document.getElementById("detail").hidden = !job;
    if (job) {
      document.getElementById("detail-id").textContent = String(job.panda_id);
      renderTiming(job);
      renderUsage(await getJSON(`/api/jobs/${job.panda_id}/usage`));
    }
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    error.hidden = true;
  } catch (exc) {
    error.textContent = `cannot read the pilot: ${exc.message}`;
    error.hidden = false;
  }
}

refresh();
setInterval(refresh, 2000);
