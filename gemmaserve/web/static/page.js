// The model page: reads /api/v1/models, the endpoints listing (live stats) and /api/frontend/stats,
// and draws them with Chart.js. Charts are kept on window.gsCharts so tests can read their points.
"use strict";
window.gsCharts = {};
const fmtInt = (n) => (n == null ? "–" : Number(n).toLocaleString("en-US"));
const perM = (perToken) => "$" + (Number(perToken) * 1e6).toFixed(2) + "/M";

function lineChart(id, labels, values, label, color) {
  const chart = new Chart(document.getElementById(id), {
    type: "line",
    data: { labels, datasets: [{ label, data: values, borderColor: color, backgroundColor: color, spanGaps: true, tension: 0.2 }] },
    options: { animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true } } },
  });
  window.gsCharts[id] = chart;
  return chart;
}

function statusText(uptime) {
  if (uptime == null) return ["–", ""];
  if (uptime >= 95) return ["normal", "status-ok"];
  if (uptime >= 80) return ["degraded", "status-degraded"];
  return ["down", "status-down"];
}

async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(url + " -> " + r.status);
  return r.json();
}

function renderHeader(model, stats) {
  document.getElementById("model-name").textContent = model.name;
  document.getElementById("model-id").textContent = model.id;
  document.getElementById("price-in").textContent = perM(model.pricing.prompt);
  document.getElementById("price-out").textContent = perM(model.pricing.completion);
  document.getElementById("context").textContent = fmtInt(model.context_length) + " tokens";
  document.getElementById("weekly-tokens").textContent = fmtInt(stats.weekly_tokens);
  document.getElementById("released").textContent = new Date(model.created * 1000).toISOString().slice(0, 10);
  document.title = model.name + " – gemmaserve";
}

function renderProviders(endpoints) {
  const body = document.getElementById("providers-body");
  body.innerHTML = "";
  for (const e of endpoints.data.endpoints) {
    const [label, cls] = statusText(e.uptime_last_1d);
    const tr = document.createElement("tr");
    const cells = [e.provider_name, e.quantization, fmtInt(e.context_length), fmtInt(e.max_completion_tokens),
      perM(e.pricing.prompt), perM(e.pricing.completion),
      e.uptime_last_1d == null ? "–" : e.uptime_last_1d + "%",
      e.latency_last_30m ? e.latency_last_30m.p50 + " ms" : "–",
      e.throughput_last_30m ? e.throughput_last_30m.p50 + " tok/s" : "–", label];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === cells.length - 1) td.className = cls;
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }
}

function renderCharts(stats) {
  const perf = stats.performance_hourly;
  lineChart("chart-latency", perf.map((p) => p.hour.slice(5, 16)), perf.map((p) => p.latency_p50), "TTFT p50 (ms)", "#4f46e5");
  lineChart("chart-throughput", perf.map((p) => p.hour.slice(5, 16)), perf.map((p) => p.throughput_p50), "tok/s p50", "#059669");
  const up = stats.uptime_hourly;
  window.gsCharts["chart-uptime"] = new Chart(document.getElementById("chart-uptime"), {
    type: "bar",
    data: { labels: up.map((u) => u.hour.slice(5, 16)),
      datasets: [{ label: "uptime %", data: up.map((u) => u.uptime),
        backgroundColor: up.map((u) => (u.uptime == null ? "#e5e7eb" : u.uptime >= 95 ? "#10b981" : u.uptime >= 80 ? "#f59e0b" : "#ef4444")) }] },
    options: { animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } }, scales: { y: { min: 0, max: 100 } } },
  });
  document.getElementById("uptime-24h").textContent = stats.uptime_last_24h == null ? "no traffic" : stats.uptime_last_24h + "%";
  const days = stats.tokens_daily;
  window.gsCharts["chart-activity"] = new Chart(document.getElementById("chart-activity"), {
    type: "bar",
    data: { labels: days.map((d) => d.date), datasets: [
      { label: "prompt", data: days.map((d) => d.prompt_tokens), backgroundColor: "#818cf8" },
      { label: "completion", data: days.map((d) => d.completion_tokens - d.reasoning_tokens), backgroundColor: "#34d399" },
      { label: "reasoning", data: days.map((d) => d.reasoning_tokens), backgroundColor: "#fbbf24" }] },
    options: { animation: false, maintainAspectRatio: false, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
  });
}

function renderApps(apps) {
  const body = document.getElementById("apps-body");
  body.innerHTML = "";
  apps.forEach((a, i) => {
    const tr = document.createElement("tr");
    for (const text of [String(i + 1), a.app, fmtInt(a.requests), fmtInt(a.tokens)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  });
  if (!apps.length) body.innerHTML = '<tr><td colspan="4" class="muted">No app has sent HTTP-Referer yet.</td></tr>';
}

function renderSamples(model) {
  const base = location.origin + "/api/v1";
  document.getElementById("sample-curl").textContent =
`curl ${base}/chat/completions \\
  -H "Authorization: Bearer $GEMMASERVE_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{"model": "${model.id}", "messages": [{"role": "user", "content": "Hello!"}]}'`;
  document.getElementById("sample-python").textContent =
`from openai import OpenAI

client = OpenAI(base_url="${base}", api_key="<GEMMASERVE_API_KEY>")
reply = client.chat.completions.create(
    model="${model.id}",
    messages=[{"role": "user", "content": "Hello!"}],
)
print(reply.choices[0].message.content)`;
  document.getElementById("sample-ts").textContent =
`const r = await fetch("${base}/chat/completions", {
  method: "POST",
  headers: { Authorization: "Bearer <GEMMASERVE_API_KEY>", "Content-Type": "application/json" },
  body: JSON.stringify({ model: "${model.id}", messages: [{ role: "user", content: "Hello!" }] }),
});
console.log((await r.json()).choices[0].message.content);`;
  for (const btn of document.querySelectorAll("[data-copy]")) {
    btn.onclick = () => navigator.clipboard && navigator.clipboard.writeText(document.getElementById(btn.dataset.copy).textContent);
  }
}

async function loadPage() {
  const models = await getJSON("/api/v1/models");
  const model = models.data[0];
  window.gsModel = model;
  const [endpoints, stats] = await Promise.all([getJSON(`/api/v1/models/${model.id}/endpoints`), getJSON("/api/frontend/stats")]);
  renderHeader(model, stats);
  renderProviders(endpoints);
  renderCharts(stats);
  renderApps(stats.apps);
  renderSamples(model);
  document.getElementById("pg-image-wrap").hidden = !model.architecture.input_modalities.includes("image");
  document.body.dataset.loaded = "true";
}

loadPage().catch((err) => { document.body.dataset.loaded = "error"; console.error(err); });
