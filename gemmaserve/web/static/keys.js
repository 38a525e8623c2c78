// The keys page: the management API (GET/POST /api/v1/keys, PATCH/DELETE /api/v1/keys/{hash}).
"use strict";
const $k = (id) => document.getElementById(id);
$k("mk").value = sessionStorage.getItem("gemmaserve-mk") || "";

async function api(method, path, body) {
  const key = $k("mk").value.trim();
  sessionStorage.setItem("gemmaserve-mk", key);
  const r = await fetch(path, { method, headers: { Authorization: "Bearer " + key, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data.error && data.error.message) || r.statusText);
  return data;
}

const money = (v) => (v == null ? "–" : "$" + Number(v).toFixed(6));

async function loadKeys() {
  try {
    const { data } = await api("GET", "/api/v1/keys?include_disabled=true");
    const body = $k("keys-body");
    body.innerHTML = "";
    for (const k of data) {
      const tr = document.createElement("tr");
      tr.dataset.hash = k.hash;
      for (const text of [k.name, k.label, money(k.limit), money(k.limit_remaining), k.limit_reset || "–", money(k.usage),
        money(k.usage_daily), k.expires_at || "–", k.disabled ? "disabled" : "active"]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      const toggle = document.createElement("button");
      toggle.className = "plain";
      toggle.textContent = k.disabled ? "Enable" : "Disable";
      toggle.onclick = async () => { await api("PATCH", "/api/v1/keys/" + k.hash, { disabled: !k.disabled }); loadKeys(); };
      const del = document.createElement("button");
      del.className = "plain";
      del.textContent = "Delete";
      del.onclick = async () => { if (confirm("Delete " + k.name + "?")) { await api("DELETE", "/api/v1/keys/" + k.hash); loadKeys(); } };
      td.append(toggle, " ", del);
      tr.appendChild(td);
      body.appendChild(tr);
    }
    $k("keys-status").textContent = data.length + " key(s)";
  } catch (err) {
    $k("keys-status").textContent = "Error: " + err.message;
  }
}

async function createKey() {
  const body = { name: $k("new-name").value.trim() || "unnamed" };
  const limit = $k("new-limit").value;
  if (limit !== "") body.limit = Number(limit);
  if ($k("new-reset").value) body.limit_reset = $k("new-reset").value;
  if ($k("new-expires").value) body.expires_at = new Date($k("new-expires").value).toISOString();
  try {
    const created = await api("POST", "/api/v1/keys", body);
    $k("new-key").textContent = created.key;
    $k("new-key-box").hidden = false;
    loadKeys();
  } catch (err) {
    $k("keys-status").textContent = "Error: " + err.message;
  }
}

$k("mk-load").onclick = loadKeys;
$k("new-create").onclick = createKey;
if ($k("mk").value) loadKeys();
