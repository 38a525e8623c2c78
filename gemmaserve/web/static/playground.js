// The chat playground: streams /api/v1/chat/completions over SSE (fetch + ReadableStream), shows
// thinking folded in a <details>, tool calls as they arrive, and keeps the conversation for follow-ups.
"use strict";
const pg = { history: [], busy: false };
const $ = (id) => document.getElementById(id);
$("pg-key").value = localStorage.getItem("gemmaserve-key") || "";

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("pg-log").appendChild(div);
  return div;
}

function assistantView() {
  const wrap = document.createElement("div");
  wrap.className = "msg assistant";
  const details = document.createElement("details");
  details.className = "thinking";
  details.hidden = true;
  const summary = document.createElement("summary");
  summary.textContent = "Thinking";
  const reasoning = document.createElement("div");
  reasoning.className = "reasoning";
  details.append(summary, reasoning);
  const content = document.createElement("div");
  content.className = "content";
  const tools = document.createElement("div");
  tools.className = "tool-calls";
  wrap.append(details, content, tools);
  $("pg-log").appendChild(wrap);
  return { details, reasoning, content, tools };
}

async function readImage() {
  const file = $("pg-image").files[0];
  if (!file) return null;
  return new Promise((resolve, reject) => {
    const fr = new FileReader();
    fr.onload = () => resolve(fr.result);
    fr.onerror = reject;
    fr.readAsDataURL(file);
  });
}

async function send() {
  const text = $("pg-input").value.trim();
  if (!text || pg.busy) return;
  pg.busy = true;
  $("pg-send").disabled = true;
  const key = $("pg-key").value.trim();
  localStorage.setItem("gemmaserve-key", key);
  const image = $("pg-image-wrap").hidden ? null : await readImage();
  const content = image ? [{ type: "text", text }, { type: "image_url", image_url: { url: image } }] : text;
  pg.history.push({ role: "user", content });
  addMessage("user", text);
  $("pg-input").value = "";
  const view = assistantView();
  const calls = [];
  let answer = "", thinking = "";
  $("pg-status").textContent = "waiting…";
  try {
    const headers = { "Content-Type": "application/json", "X-Title": "gemmaserve playground" };
    if (key) headers.Authorization = "Bearer " + key;
    const body = { model: window.gsModel ? window.gsModel.id : undefined, messages: pg.history, stream: true,
      max_tokens: Number($("pg-max").value) || 256 };
    if ($("pg-reasoning").checked) body.reasoning = { enabled: true };
    const tools = $("pg-tools").value.trim();
    if (tools) body.tools = JSON.parse(tools);
    const resp = await fetch("/api/v1/chat/completions", { method: "POST", headers, body: JSON.stringify(body) });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || resp.statusText);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;  // ": OPENROUTER PROCESSING" keep-alives
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
          if (delta.reasoning) {
            thinking += delta.reasoning;
            view.details.hidden = false;
            view.reasoning.textContent = thinking;
          }
          if (delta.content) {
            answer += delta.content;
            view.content.textContent = answer;
          }
          for (const tc of delta.tool_calls || []) {
            const slot = calls[tc.index] || (calls[tc.index] = { id: tc.id, type: "function", function: { name: "", arguments: "" } });
            if (tc.function && tc.function.name) slot.function.name += tc.function.name;
            if (tc.function && tc.function.arguments) slot.function.arguments += tc.function.arguments;
            view.tools.innerHTML = "";
            for (const c of calls.filter(Boolean)) {
              const d = document.createElement("div");
              d.className = "toolcall";
              d.textContent = `${c.function.name}(${c.function.arguments})`;
              view.tools.appendChild(d);
            }
          }
          $("pg-status").textContent = "streaming…";
        }
      }
    }
    const msg = { role: "assistant", content: answer };
    if (calls.length) msg.tool_calls = calls.filter(Boolean);
    pg.history.push(msg);
    $("pg-status").textContent = "done";
  } catch (err) {
    view.content.textContent = answer + (answer ? "\n" : "") + "Error: " + err.message;
    view.content.classList.add("status-down");
    pg.history.pop();
    $("pg-status").textContent = "error";
  } finally {
    pg.busy = false;
    $("pg-send").disabled = false;
  }
}

$("pg-send").onclick = send;
$("pg-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(); });
$("pg-clear").onclick = () => { pg.history = []; $("pg-log").innerHTML = ""; $("pg-status").textContent = ""; };
