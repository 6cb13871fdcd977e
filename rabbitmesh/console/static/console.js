// rabbitmesh console (docs/console.md). Plain JavaScript, no build step: the state is every
// resource of the server, kept current by one watch stream; each view renders from it.
// Changes go to the admin API itself (same origin, JSON/YAML bodies, the token as a bearer
// header when one is given): the server's checks decide, the page only reflects them.
"use strict";

(() => {
  const $ = (sel) => document.querySelector(sel);
  const state = {
    info: null,
    kinds: new Map(), // kind -> {group, versions, plural, namespaced}
    items: new Map(), // "Kind/ns/name" -> object
    derived: new Set(),
    namespace: sessionStorage.getItem("rm-namespace") || "default",
    canChange: false,
    rates: null, // {ingress, dispatch} per second
    lastCounts: null,
    selected: null, // key shown in the detail panel
    editing: null, // key being edited, or "" for a new manifest
    tail: null, // AbortController of the running tail
  };
  const TAIL_KEEP = 200;

  const keyOf = (o) => `${o.kind}/${(o.metadata && o.metadata.namespace) || ""}/${o.metadata.name}`;
  const ready = (o) => {
    const c = ((o.status && o.status.conditions) || []).find((x) => x.type === "Ready");
    return c ? { status: c.status || "Unknown", reason: c.reason || "", message: c.message || "" } : { status: "Unknown", reason: "", message: "" };
  };
  function age(o) {
    const t = o.metadata && o.metadata.creationTimestamp;
    if (!t) return "";
    const secs = Math.max(0, Math.floor((Date.now() - Date.parse(t)) / 1000));
    for (const [u, n] of [["d", 86400], ["h", 3600], ["m", 60]]) if (secs >= n) return `${Math.floor(secs / n)}${u}`;
    return `${secs}s`;
  }
  // InMemoryChannel is another name of Channel here (the object keeps the name it was
  // written with).
  const sameKind = (a, b) => a === b || (a === "InMemoryChannel" ? "Channel" : a) === (b === "InMemoryChannel" ? "Channel" : b);
  function inNs(kind) {
    return [...state.items.values()].filter((o) => sameKind(o.kind, kind) && (o.metadata.namespace || "") === state.namespace)
      .sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  }

  // --- talking to the server ------------------------------------------------------------

  function authHeaders() {
    const t = sessionStorage.getItem("rm-token");
    return t ? { Authorization: `Bearer ${t}` } : {};
  }

  async function api(method, path, body, contentType) {
    const headers = { Accept: "application/json", ...authHeaders() };
    const init = { method, headers, credentials: "omit", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = contentType || "application/json";
      init.body = typeof body === "string" ? body : JSON.stringify(body);
    }
    const r = await fetch(path, init);
    let data = null;
    const text = await r.text();
    try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
    return { status: r.status, ok: r.ok, data };
  }

  function itemPath(kind, ns, name) {
    const k = state.kinds.get(kind);
    if (!k) return null;
    const base = k.group ? `/apis/${k.group}/${k.versions[0]}` : "/api/v1";
    const nsPart = k.namespaced ? `/namespaces/${encodeURIComponent(ns)}` : "";
    return `${base}${nsPart}/${k.plural}/${encodeURIComponent(name)}`;
  }

  async function checkAccess() {
    const badge = $("#access");
    const r = await api("POST", "/console/api/check", {});
    state.canChange = r.ok;
    badge.className = `badge ${r.ok ? "ok" : "bad"}`;
    badge.textContent = r.ok ? "can change" : "read-only";
    badge.title = r.ok ? "Changes, the tail and dead-letter actions are allowed" : (r.data && r.data.error) || "";
    document.querySelectorAll(".needs-change").forEach((b) => {
      b.disabled = !r.ok;
      b.title = r.ok ? "" : "Read-only: " + ((r.data && r.data.error) || "enter the admin token");
    });
  }

  async function loadAll() {
    const r = await api("GET", "/console/api/resources");
    if (!r.ok) throw new Error((r.data && r.data.error) || `HTTP ${r.status}`);
    state.kinds = new Map(r.data.kinds.map((k) => [k.kind, k]));
    state.items = new Map(r.data.items.map((o) => [keyOf(o), o]));
    state.derived = new Set(r.data.derived.map((k) => k.join("/")));
    return r.data.resourceVersion;
  }

  // One stream for every kind; on any end, list again and watch from there.
  async function watchForever() {
    const live = $("#live");
    for (;;) {
      try {
        const rv = await loadAll();
        renderAll();
        live.textContent = "live";
        live.className = "badge ok";
        const r = await fetch(`/console/api/watch?resourceVersion=${rv}`, { credentials: "omit", cache: "no-store" });
        if (!r.ok || !r.body) throw new Error(`watch: HTTP ${r.status}`);
        await readLines(r.body, (ev) => {
          const k = keyOf(ev.object);
          if (ev.type === "DELETED") state.items.delete(k); else state.items.set(k, ev.object);
          scheduleRender();
        });
      } catch (e) {
        live.textContent = "reconnecting…";
        live.className = "badge bad";
        live.title = String(e);
      }
      await new Promise((res) => setTimeout(res, 1000)); // back off before listing again
    }
  }

  async function readLines(body, onLine) {
    const reader = body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.trim()) onLine(JSON.parse(line));
      }
    }
  }

  let renderPending = false;
  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    requestAnimationFrame(() => { renderPending = false; renderAll(); });
  }

  async function pollRates() {
    for (;;) {
      try {
        const r = await api("GET", "/console/api/rates");
        if (r.ok) {
          const now = r.data;
          const before = state.lastCounts;
          if (before) {
            const dt = Math.max(0.001, now.time - before.time);
            const per = (a, b) => {
              const out = {};
              for (const [k, v] of Object.entries(a)) {
                out[k] = {};
                for (const [f, n] of Object.entries(v)) out[k][f] = Math.max(0, (n - ((b[k] || {})[f] || 0)) / dt);
              }
              return out;
            };
            state.rates = { ingress: per(now.ingress, before.ingress), dispatch: per(now.dispatch, before.dispatch) };
            updateRates();
          }
          state.lastCounts = now;
        }
      } catch { /* the watch shows the connection state */ }
      await new Promise((res) => setTimeout(res, 2000));
    }
  }

  // --- rendering -------------------------------------------------------------------------

  function renderAll() {
    renderNamespaces();
    renderTopology();
    renderResources();
    renderTargets();
    renderEventTypes();
    renderDeadLetterTargets();
    renderReplays();
    if (state.selected) showDetail(state.selected, false);
  }

  function renderNamespaces() {
    const sel = $("#namespace");
    const names = new Set(["default", state.namespace]);
    for (const o of state.items.values()) {
      if (o.metadata.namespace) names.add(o.metadata.namespace);
      if (o.kind === "Namespace") names.add(o.metadata.name);
    }
    const list = [...names].sort();
    if ([...sel.options].map((o) => o.value).join() !== list.join()) {
      sel.textContent = "";
      for (const n of list) sel.add(new Option(n, n));
    }
    sel.value = state.namespace;
  }

  function destinationNode(dest, ns, nodes, edges, from, reply) {
    if (!dest) return;
    if (dest.ref) {
      const k = `${dest.ref.kind}/${dest.ref.namespace || ns}/${dest.ref.name}`;
      if (!nodes.has(k)) {
        nodes.set(k, { id: k, label: dest.ref.name, kind: dest.ref.kind, ready: "Unknown", reason: "not a resource of this server (or not there)", order: 9 });
      }
      edges.push({ from, to: k, reply });
      return k;
    }
    if (dest.uri) {
      const k = `uri/${dest.uri}`;
      if (!nodes.has(k)) nodes.set(k, { id: k, label: dest.uri, kind: "subscriber URI", ready: "True", reason: "", order: 9 });
      edges.push({ from, to: k, reply });
      return k;
    }
  }

  function filterText(t) {
    const s = t.spec || {};
    if (s.filters && s.filters.length) return s.filters.map((f) => JSON.stringify(f).replace(/[{}"]/g, "")).join(" AND ");
    const attrs = (s.filter && s.filter.attributes) || {};
    const parts = Object.entries(attrs).map(([k, v]) => `${k}=${v}`);
    return parts.length ? parts.join(", ") : "(all events)";
  }

  function resourceNode(o, extra) {
    const r = ready(o);
    return {
      id: keyOf(o), label: o.metadata.name, kind: o.kind, ready: r.status,
      reason: [r.reason, r.message].filter(Boolean).join(": "), order: 1,
      onOpen: () => { selectTab("resources"); showDetail(keyOf(o), true); }, ...(extra || {}),
    };
  }

  function renderTopology() {
    const ns = state.namespace;
    const nodes = new Map();
    const edges = [];
    const add = (o, extra) => { nodes.set(keyOf(o), resourceNode(o, extra)); return keyOf(o); };
    for (const b of inNs("Broker")) add(b, { order: 1 });
    // Channels and subscriptions a flow made for itself are drawn as the flow's steps.
    const own = (o) => !((o.metadata.ownerReferences || []).length);
    for (const c of inNs("Channel").filter(own)) add(c, { order: 2 });
    for (const t of inNs("Trigger")) {
      const id = add(t, { filter: filterText(t), order: 3 });
      const broker = `Broker/${ns}/${t.spec.broker}`;
      if (!nodes.has(broker)) nodes.set(broker, { id: broker, label: t.spec.broker, kind: "Broker", ready: "False", reason: "does not exist", order: 1 });
      edges.push({ from: broker, to: id });
      const sub = destinationNode(t.spec.subscriber, ns, nodes, edges, id, false);
      if (sub) edges[edges.length - 1].rateOf = `trigger=${ns}/${t.metadata.name}`;
      if (sub) edges.push({ from: sub, to: broker, reply: true, back: true }); // replies go back into the broker
    }
    for (const s of inNs("Subscription").filter(own)) {
      const id = add(s, { order: 3 });
      const chObj = inNs("Channel").find((c) => c.metadata.name === s.spec.channel.name);
      const ch = chObj ? keyOf(chObj) : `Channel/${ns}/${s.spec.channel.name}`;
      if (!nodes.has(ch)) nodes.set(ch, { id: ch, label: s.spec.channel.name, kind: "Channel", ready: "False", reason: "does not exist", order: 2 });
      edges.push({ from: ch, to: id });
      const label = `subscription=${ns}/${s.metadata.name}`;
      if (destinationNode(s.spec.subscriber, ns, nodes, edges, id, false)) edges[edges.length - 1].rateOf = label;
      destinationNode(s.spec.reply, ns, nodes, edges, id, true);
    }
    for (const q of inNs("Sequence")) {
      const id = add(q, { extra: `${q.spec.steps.length} steps`, order: 2 });
      let prev = id;
      q.spec.steps.forEach((step, i) => {
        const sid = `${id}/step${i}`;
        nodes.set(sid, { id: sid, label: describeDest(step), kind: `step ${i}`, ready: "True", order: 3 });
        edges.push({ from: prev, to: sid, rateOf: `sequence=${ns}/${q.metadata.name} step=${i}` });
        prev = sid;
      });
      destinationNode(q.spec.reply, ns, nodes, edges, prev, true);
    }
    for (const p of inNs("Parallel")) {
      const id = add(p, { extra: `${p.spec.branches.length} branches`, order: 2 });
      p.spec.branches.forEach((br, i) => {
        const bid = `${id}/branch${i}`;
        nodes.set(bid, { id: bid, label: describeDest(br.subscriber), kind: `branch ${i}`, ready: "True", filter: br.filter ? "filter: " + describeDest(br.filter) : "", order: 3 });
        edges.push({ from: id, to: bid });
        destinationNode(br.reply || p.spec.reply, ns, nodes, edges, bid, true);
      });
    }
    const sourceKinds = [...state.kinds.values()].filter((k) => k.group === "sources.knative.dev").map((k) => k.kind);
    for (const kind of sourceKinds) {
      for (const s of inNs(kind)) {
        const id = add(s, { order: 0, rank: 0 });
        destinationNode(s.spec && s.spec.sink, ns, nodes, edges, id, false);
      }
    }
    state.graphEdges = edges;
    RMGraph.draw($("#graph"), [...nodes.values()], edges.map((e) => ({ ...e, rate: rateFor(e) })));
  }

  function describeDest(d) {
    if (!d) return "";
    if (d.ref) return `${d.ref.kind} ${d.ref.name}`;
    return d.uri || "";
  }

  function rateFor(e) {
    if (!e.rateOf) return null;
    const d = (state.rates && state.rates.dispatch[e.rateOf]) || { ok: 0, failed: 0 };
    return { ok: d.ok || 0, failed: d.failed || 0 };
  }

  function updateRates() {
    // Only the numbers change: update the labels in place (focus and scroll stay).
    for (const e of state.graphEdges || []) {
      const r = rateFor(e);
      if (!r) continue;
      const t = document.querySelector(`#graph text[data-edge="${CSS.escape(e.from + "->" + e.to)}"]`);
      if (t) {
        t.textContent = `${RMGraph.fmt(r.ok)}/s ✓ ${RMGraph.fmt(r.failed)}/s ✗`;
        t.classList.toggle("failing", r.failed > 0);
      }
    }
    for (const b of inNs("Broker")) {
      const i = (state.rates.ingress[`Broker/${state.namespace}/${b.metadata.name}`]) || { accepted: 0 };
      const g = document.querySelector(`#graph g[data-id="${CSS.escape(keyOf(b))}"] .kind`);
      if (g) g.textContent = `Broker  in ${RMGraph.fmt(i.accepted)}/s`;
    }
  }

  function renderResources() {
    const kindSel = $("#kind-filter");
    const kinds = [...new Set([...state.items.values()].map((o) => o.kind))].sort();
    const want = ["", ...kinds].join();
    if ([...kindSel.options].map((o) => o.value).join() !== want) {
      const cur = kindSel.value;
      kindSel.textContent = "";
      kindSel.add(new Option("all kinds", ""));
      for (const k of kinds) kindSel.add(new Option(k, k));
      kindSel.value = kinds.includes(cur) ? cur : "";
    }
    const only = kindSel.value;
    const rows = [...state.items.values()]
      .filter((o) => (!o.metadata.namespace || o.metadata.namespace === state.namespace) && (!only || o.kind === only))
      .sort((a, b) => a.kind.localeCompare(b.kind) || a.metadata.name.localeCompare(b.metadata.name));
    const tbody = $("#resources tbody");
    tbody.textContent = "";
    for (const o of rows) {
      const r = ready(o);
      const tr = document.createElement("tr");
      tr.tabIndex = 0;
      tr.dataset.key = keyOf(o);
      tr.setAttribute("aria-selected", String(state.selected === keyOf(o)));
      for (const [text, cls] of [[o.kind], [o.metadata.name], [r.status, `ready-${r.status}`], [r.status === "True" ? "" : r.reason], [age(o)]]) {
        const td = document.createElement("td");
        td.textContent = text;
        if (cls) td.className = cls;
        tr.appendChild(td);
      }
      const open = () => showDetail(keyOf(o), true);
      tr.addEventListener("click", open);
      tr.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter") open();
        if (ev.key === "ArrowDown" && tr.nextElementSibling) tr.nextElementSibling.focus();
        if (ev.key === "ArrowUp" && tr.previousElementSibling) tr.previousElementSibling.focus();
      });
      tbody.appendChild(tr);
    }
  }

  function showDetail(key, focus) {
    const o = state.items.get(key);
    state.selected = key;
    const panel = $("#detail");
    if (!o) {
      $("#detail-title").textContent = `${key.split("/").join(" ")}: deleted`;
      $("#detail-yaml").textContent = "";
      $("#edit").disabled = $("#delete").disabled = true;
      return;
    }
    panel.hidden = false;
    $("#detail-title").textContent = `${o.kind} ${o.metadata.name}`;
    $("#detail-yaml").textContent = RMYaml.dump(o);
    const derived = state.derived.has(key);
    $("#edit").disabled = !state.canChange;
    $("#delete").disabled = !state.canChange || derived;
    $("#delete").title = derived ? "Made by rabbitmesh for another resource: it goes with it" : "";
    document.querySelectorAll("#resources tbody tr").forEach((tr) => tr.setAttribute("aria-selected", String(tr.dataset.key === key)));
    if (focus) $("#detail-yaml").focus();
  }

  function editable(o) {
    const copy = JSON.parse(JSON.stringify(o));
    delete copy.status;
    const m = copy.metadata || {};
    for (const k of ["uid", "generation", "creationTimestamp", "managedFields"]) delete m[k];
    return copy; // resourceVersion stays: a PUT with it fails (409) if someone changed it meanwhile
  }

  function replayTemplate() {
    const broker = (inNs("Broker")[0] || { metadata: { name: "default" } }).metadata.name;
    const trigger = (inNs("Trigger").find((t) => t.spec.broker === broker) || { metadata: { name: "my-trigger" } }).metadata.name;
    const from = new Date(Date.now() - 3600 * 1000).toISOString().replace(/\.\d+Z$/, "Z");
    return `apiVersion: rabbitmesh.dev/v1alpha1\nkind: Replay\nmetadata:\n  name: replay-${Date.now().toString(36)}\n  namespace: ${state.namespace}\nspec:\n  broker: ${broker}\n  from: "${from}"\n  # to: "..."          (default: when the Replay is created)\n  # filter: "type = 'com.example.x'"\n  destination:\n    trigger: ${trigger}\n`;
  }

  function openEditor(key, template) {
    state.editing = key;
    const form = $("#editor");
    form.hidden = false;
    $("#editor-errors").textContent = "";
    $("#editor-text").removeAttribute("aria-invalid");
    if (key) {
      const o = state.items.get(key);
      $("#editor-title").textContent = `Edit ${o.kind} ${o.metadata.name}`;
      $("#editor-text").value = RMYaml.dump(editable(o)) + "\n";
    } else {
      $("#editor-title").textContent = "Apply YAML (create or update)";
      $("#editor-text").value = template || `apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: my-trigger\n  namespace: ${state.namespace}\nspec:\n  broker: default\n  filter:\n    attributes:\n      type: com.example.hello\n  subscriber:\n    uri: http://127.0.0.1:9001/\n`;
    }
    $("#editor-text").focus();
  }

  function showErrors(resp) {
    const list = $("#editor-errors");
    list.textContent = "";
    const text = $("#editor-text");
    text.setAttribute("aria-invalid", "true");
    const data = resp.data || {};
    const details = data.details && data.details.length ? data.details : [{ field: null, message: data.error || `HTTP ${resp.status}` }];
    for (const d of details) {
      const li = document.createElement("li");
      li.className = "field-error";
      const line = d.field ? RMYaml.lineOf(text.value, d.field) : -1;
      li.dataset.field = d.field || "";
      li.textContent = d.field ? `${d.field}${line >= 0 ? ` (line ${line + 1})` : ""}: ${d.message}` : d.message;
      if (line >= 0) {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = "Go to line";
        b.addEventListener("click", () => selectLine(text, line));
        li.appendChild(b);
      }
      list.appendChild(li);
    }
    const first = details.find((d) => d.field && RMYaml.lineOf(text.value, d.field) >= 0);
    if (first) selectLine(text, RMYaml.lineOf(text.value, first.field));
  }

  function selectLine(textarea, line) {
    const lines = textarea.value.split("\n");
    const start = lines.slice(0, line).reduce((n, l) => n + l.length + 1, 0);
    textarea.focus();
    textarea.setSelectionRange(start, start + lines[line].length);
    const lh = textarea.scrollHeight / Math.max(1, lines.length);
    textarea.scrollTop = Math.max(0, lh * (line - 3));
  }

  async function applyEditor(ev) {
    ev.preventDefault();
    const text = $("#editor-text").value;
    let r;
    if (state.editing) {
      const [kind, ns, name] = state.editing.split("/");
      r = await api("PUT", itemPath(kind, ns, name), text, "application/yaml");
    } else {
      r = await api("POST", `/apply?namespace=${encodeURIComponent(state.namespace)}`, text, "application/yaml");
    }
    if (!r.ok) { showErrors(r); return; }
    $("#editor").hidden = true;
    const obj = r.data.items ? r.data.items[0] : r.data;
    if (obj && obj.kind) { state.items.set(keyOf(obj), obj); showDetail(keyOf(obj), true); renderAll(); }
  }

  function confirmDialog(text) {
    return new Promise((resolve) => {
      const d = $("#confirm");
      $("#confirm-text").textContent = text;
      d.returnValue = "";
      d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
      d.showModal();
    });
  }

  async function deleteSelected() {
    const key = state.selected;
    const [kind, ns, name] = key.split("/");
    if (!(await confirmDialog(`Delete ${kind} ${name}${ns ? " in namespace " + ns : ""}? This cannot be undone.`))) return;
    const r = await api("DELETE", itemPath(kind, ns, name));
    if (!r.ok) { alertError(r); return; }
    state.items.delete(key);
    renderAll();
  }

  function alertError(r) {
    const msg = (r.data && r.data.error) || `HTTP ${r.status}`;
    $("#access").title = msg;
    const p = $("#detail-title");
    p.textContent = `${p.textContent}: ${msg}`;
  }

  // --- live tail ---------------------------------------------------------------------------

  function renderTargets() {
    const opts = [];
    for (const kind of ["Broker", "Channel", "Trigger"]) for (const o of inNs(kind)) opts.push([`${kind}/${o.metadata.name}`, `${kind} ${o.metadata.name}`]);
    fillSelect($("#tail-target"), opts);
    const send = [];
    for (const kind of ["Broker", "Channel", "Sequence", "Parallel"]) {
      for (const o of inNs(kind)) send.push([`${kind}/${o.metadata.name}`, `${kind} ${o.metadata.name}`]);
    }
    fillSelect($("#send-to"), send);
  }

  function fillSelect(sel, opts) {
    const want = opts.map((o) => o[0]).join();
    if ([...sel.options].map((o) => o.value).join() === want) return;
    const cur = sel.value;
    sel.textContent = "";
    for (const [v, t] of opts) sel.add(new Option(t, v));
    if (opts.some((o) => o[0] === cur)) sel.value = cur;
  }

  async function startTail(ev) {
    ev.preventDefault();
    stopTail();
    const [kind, name] = $("#tail-target").value.split("/");
    const ctl = new AbortController();
    state.tail = ctl;
    const status = $("#tail-status");
    const list = $("#tail-events");
    list.textContent = "";
    $("#tail-stop").disabled = false;
    $("#tail-start").disabled = true;
    try {
      const r = await fetch("/console/api/tail", {
        method: "POST", signal: ctl.signal, credentials: "omit", cache: "no-store",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify({ kind, namespace: state.namespace, name, filter: $("#tail-filter").value }),
      });
      if (!r.ok) {
        const data = await r.json().catch(() => ({}));
        status.textContent = `Cannot tail: ${data.error || "HTTP " + r.status}`;
        status.className = "hint errors";
        const f = (data.details || [])[0];
        if (f && f.field === "filter") $("#tail-filter").setAttribute("aria-invalid", "true");
        return;
      }
      $("#tail-filter").removeAttribute("aria-invalid");
      status.className = "hint";
      await readLines(r.body, (line) => {
        if (line.type === "started") status.textContent = `Tailing ${line.target}${line.filter ? " where " + line.filter : ""} (at most ${line.rate} events/s shown).`;
        else if (line.type === "stats") status.textContent = `Tailing: ${line.shown} shown, ${line.matched} matched, ${line.skipped} skipped over the rate limit.`;
        else if (line.type === "event") addEvent(list, line.event);
      });
      status.textContent += " Ended by the server.";
    } catch (e) {
      if (e.name !== "AbortError") status.textContent = `Tail ended: ${e}`;
    } finally {
      if (state.tail === ctl) { state.tail = null; $("#tail-stop").disabled = true; $("#tail-start").disabled = !state.canChange; }
    }
  }

  function addEvent(list, ev) {
    const li = document.createElement("li");
    li.className = "event";
    const head = document.createElement("div");
    head.className = "attrs";
    const { data, data_base64: b64, ...attrs } = ev;
    head.textContent = Object.entries(attrs).map(([k, v]) => `${k}: ${v}`).join("   ");
    li.appendChild(head);
    if (data !== undefined || b64 !== undefined) {
      const pre = document.createElement("pre");
      pre.textContent = data !== undefined ? (typeof data === "string" ? data : JSON.stringify(data, null, 2)) : `base64: ${b64}`;
      li.appendChild(pre);
    }
    list.prepend(li);
    while (list.children.length > TAIL_KEEP) list.lastElementChild.remove();
  }

  function stopTail() {
    if (state.tail) { state.tail.abort(); state.tail = null; }
    $("#tail-stop").disabled = true;
    $("#tail-start").disabled = !state.canChange;
    if ($("#tail-status").textContent.startsWith("Tailing")) $("#tail-status").textContent += " Stopped.";
  }

  // --- send ---------------------------------------------------------------------------------

  const INGRESS = { Broker: "/{ns}/{name}", Channel: "/channels/{ns}/{name}", Sequence: "/sequences/{ns}/{name}", Parallel: "/parallels/{ns}/{name}" };

  function percentEncode(s) {
    // The CloudEvents HTTP binding's header encoding: space, ", % and non-ASCII.
    return Array.from(new TextEncoder().encode(s)).map((b) => (b < 0x21 || b > 0x7e || b === 0x22 || b === 0x25) ? "%" + b.toString(16).toUpperCase().padStart(2, "0") : String.fromCharCode(b)).join("");
  }

  async function send(ev) {
    ev.preventDefault();
    const out = $("#send-result");
    const [kind, name] = $("#send-to").value.split("/");
    if (!kind) { out.textContent = "Nothing to send to in this namespace."; return; }
    const id = crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2);
    const headers = {
      "ce-specversion": "1.0", "ce-id": id,
      "ce-type": percentEncode($("#send-type").value), "ce-source": percentEncode($("#send-source").value),
    };
    if ($("#send-subject").value) headers["ce-subject"] = percentEncode($("#send-subject").value);
    for (const line of $("#send-ext").value.split("\n")) {
      if (!line.trim()) continue;
      const [k, ...rest] = line.split("=");
      if (!/^[a-z0-9]+$/.test(k.trim())) { out.textContent = `Extension ${JSON.stringify(k.trim())}: names are lowercase letters and digits`; return; }
      headers[`ce-${k.trim()}`] = percentEncode(rest.join("="));
    }
    const data = $("#send-data").value;
    if (data) {
      let json = true;
      try { JSON.parse(data); } catch { json = false; }
      headers["Content-Type"] = json ? "application/json" : "text/plain; charset=utf-8";
    }
    const token = $("#send-token").value;
    if (token) headers.Authorization = `Bearer ${token}`;
    const path = INGRESS[kind].replace("{ns}", encodeURIComponent(state.namespace)).replace("{name}", encodeURIComponent(name));
    const r = await fetch(path, { method: "POST", headers, body: data, credentials: "omit", cache: "no-store" });
    const text = await r.text();
    let msg = text;
    try { msg = JSON.parse(text).error || text; } catch { /* plain text */ }
    out.textContent = r.ok ? `Event ${id} sent to ${kind} ${name} (${r.status}).` : `${kind} ${name} answered ${r.status}: ${msg}`;
  }

  // --- dead letters and replays --------------------------------------------------------------

  // Issue 14's dead-letter API, as a subresource of the trigger or subscription.
  function deadLetterPath(kind, name) {
    const base = itemPath(kind, state.namespace, name);
    return base ? `${base}/deadletters` : null;
  }

  function renderDeadLetterTargets() {
    const f = (state.info && state.info.features) || {};
    $("#dl-unavailable").hidden = !!f.deadLetters;
    $("#dl-panel").hidden = !f.deadLetters;
    $("#dl-unavailable").textContent = "Dead letters are not available on this server: its admin API has no dead-letter endpoints (rabbitmesh deadletter list/redrive/purge).";
    const opts = [];
    for (const kind of ["Trigger", "Subscription"]) for (const o of inNs(kind)) opts.push([`${kind}/${o.metadata.name}`, `${kind} ${o.metadata.name}`]);
    fillSelect($("#dl-target"), opts);
  }

  let dlLoad = 0;
  async function loadDeadLetters() {
    const status = $("#dl-status");
    const [kind, name] = ($("#dl-target").value || "/").split("/");
    const tbody = $("#dl-table tbody");
    const mine = ++dlLoad;
    if (!kind) { tbody.textContent = ""; status.textContent = "No trigger or subscription in this namespace."; return; }
    const r = await api("GET", deadLetterPath(kind, name));
    if (mine !== dlLoad) return; // a newer load (another target, a refresh) answers instead
    tbody.textContent = "";
    if (r.status === 404 && r.data && /^no such path/.test(r.data.error || "")) {
      status.textContent = "Dead letters are not available on this server.";
      return;
    }
    if (!r.ok) { status.textContent = `Cannot list: ${(r.data && r.data.error) || r.status}`; return; }
    const items = Array.isArray(r.data) ? r.data : (r.data.items || []);
    status.textContent = `${items.length} dead letter${items.length === 1 ? "" : "s"} of ${kind} ${name}.`;
    for (const d of items) {
      const tr = document.createElement("tr");
      const td0 = document.createElement("td");
      const cb = document.createElement("input");
      cb.type = "checkbox";
      cb.value = d.id;
      cb.setAttribute("aria-label", `Select ${d.id}`);
      td0.appendChild(cb);
      tr.appendChild(td0);
      const err = d.knativeerrordata ?? d.errorData ?? d.error ?? "";
      for (const v of [d.id, d.type, d.source, d.timeFailed || d.failedAt || d.time || "", d.knativeerrorcode ?? d.errorCode ?? "", typeof err === "string" ? err : JSON.stringify(err), d.attempts ?? ""]) {
        const td = document.createElement("td");
        td.textContent = String(v ?? "");
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
  }

  async function deadLetterAction(action, all) {
    const [kind, name] = $("#dl-target").value.split("/");
    const ids = [...document.querySelectorAll("#dl-table tbody input:checked")].map((c) => c.value);
    if (!all && !ids.length) { $("#dl-status").textContent = "Select dead letters first."; return; }
    if (action === "purge" && !(await confirmDialog(`Purge ${all ? "all" : ids.length} dead letter(s) of ${kind} ${name}? They are gone for good.`))) return;
    const r = await api("POST", `${deadLetterPath(kind, name)}/${action}`, all ? { all: true } : { ids });
    if (!r.ok) { $("#dl-status").textContent = `${action} failed: ${(r.data && r.data.error) || r.status}`; return; }
    // The list is loaded again first, then the result is shown before its count: the
    // reload must not overwrite what the action did.
    await loadDeadLetters();
    $("#dl-status").textContent = `${action}: done (${JSON.stringify(r.data)}). ${$("#dl-status").textContent}`;
  }

  function renderReplays() {
    const f = (state.info && state.info.features) || {};
    $("#replay-unavailable").hidden = !!f.replays;
    $("#replay-panel").hidden = !f.replays;
    $("#replay-unavailable").textContent = "Replays are not available on this server: it has no Replay kind (rabbitmesh replay).";
    if (!f.replays) return;
    const tbody = $("#replay-table tbody");
    tbody.textContent = "";
    for (const o of inNs("Replay")) {
      const st = o.status || {};
      const r = ready(o);
      const tr = document.createElement("tr");
      const cells = [o.metadata.name, (o.spec || {}).broker || ""];
      for (const v of cells) { const td = document.createElement("td"); td.textContent = v; tr.appendChild(td); }
      const td = document.createElement("td");
      const p = document.createElement("progress");
      p.max = st.totalCount || 1;
      p.value = st.replayedCount || 0;
      p.setAttribute("aria-label", `${o.metadata.name} progress`);
      td.append(p, ` ${st.replayedCount || 0} / ${st.totalCount ?? "?"}`);
      tr.appendChild(td);
      for (const [v, cls] of [[r.status, `ready-${r.status}`], [r.reason]]) { const c = document.createElement("td"); c.textContent = v; if (cls) c.className = cls; tr.appendChild(c); }
      tbody.appendChild(tr);
    }
  }

  // --- event types ------------------------------------------------------------------------------

  function consumes(trigger, type) {
    const s = trigger.spec || {};
    if (s.filters && s.filters.length) {
      // Only the plain cases are decided here; a CESQL or suffix filter shows as "maybe".
      const exact = s.filters.map((f) => f.exact && f.exact.type).filter(Boolean);
      const prefix = s.filters.map((f) => f.prefix && f.prefix.type).filter(Boolean);
      if (exact.length) return exact.includes(type) ? "yes" : "no";
      if (prefix.length) return prefix.some((p) => type.startsWith(p)) ? "yes" : "no";
      return "maybe";
    }
    const t = s.filter && s.filter.attributes && s.filter.attributes.type;
    return !t || t === type ? "yes" : "no";
  }

  function renderEventTypes() {
    const tbody = $("#eventtypes tbody");
    tbody.textContent = "";
    const triggers = inNs("Trigger");
    const types = inNs("EventType").sort((a, b) => brokerOf(a).localeCompare(brokerOf(b)) || etAttr(a, "type").localeCompare(etAttr(b, "type")));
    if (!types.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 5;
      td.className = "empty";
      td.textContent = "No EventTypes in this namespace.";
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    for (const et of types) {
      const broker = brokerOf(et);
      const who = triggers.filter((t) => t.spec.broker === broker)
        .map((t) => [t.metadata.name, consumes(t, etAttr(et, "type"))]).filter(([, c]) => c !== "no")
        .map(([n, c]) => (c === "maybe" ? `${n} (maybe: filter)` : n));
      const tr = document.createElement("tr");
      for (const v of [broker, etAttr(et, "type"), etAttr(et, "source"), et.metadata.name, who.join(", ") || "none"]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
  }

  function brokerOf(et) {
    const s = et.spec || {};
    return s.broker || (s.reference && s.reference.name) || "";
  }

  // v1beta2 names type and source in the spec, v1beta3 lists them as attributes.
  function etAttr(et, name) {
    const s = et.spec || {};
    if (s[name]) return s[name];
    const a = (s.attributes || []).find((x) => x.name === name);
    return (a && a.value) || "";
  }

  // --- tabs and wiring ---------------------------------------------------------------------------

  function selectTab(name) {
    const tabs = [...document.querySelectorAll('[role="tab"]')];
    for (const t of tabs) {
      const on = t.id === `tab-${name}`;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $(`#${t.getAttribute("aria-controls")}`).hidden = !on;
    }
    location.hash = name;
    if (name === "deadletters" && state.info && state.info.features.deadLetters) loadDeadLetters();
  }

  function wire() {
    const tabs = [...document.querySelectorAll('[role="tab"]')];
    tabs.forEach((t, i) => {
      t.addEventListener("click", () => selectTab(t.id.slice(4)));
      t.addEventListener("keydown", (ev) => {
        const next = ev.key === "ArrowRight" ? i + 1 : ev.key === "ArrowLeft" ? i - 1 : null;
        if (next === null) return;
        const to = tabs[(next + tabs.length) % tabs.length];
        to.focus();
        selectTab(to.id.slice(4));
      });
    });
    $("#namespace").addEventListener("change", (ev) => {
      state.namespace = ev.target.value;
      sessionStorage.setItem("rm-namespace", state.namespace);
      state.selected = null;
      $("#detail").hidden = true;
      renderAll();
    });
    $("#auth").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("#token").value.trim();
      if (t) sessionStorage.setItem("rm-token", t); else sessionStorage.removeItem("rm-token");
      $("#token").value = "";
      checkAccess();
    });
    $("#kind-filter").addEventListener("change", renderResources);
    $("#new-resource").addEventListener("click", () => openEditor(""));
    $("#new-replay").addEventListener("click", () => { selectTab("resources"); openEditor("", replayTemplate()); });
    $("#edit").addEventListener("click", () => openEditor(state.selected));
    $("#delete").addEventListener("click", deleteSelected);
    $("#editor").addEventListener("submit", applyEditor);
    $("#editor-cancel").addEventListener("click", () => { $("#editor").hidden = true; });
    $("#tail-form").addEventListener("submit", startTail);
    $("#tail-stop").addEventListener("click", stopTail);
    $("#send-form").addEventListener("submit", send);
    $("#dl-refresh").addEventListener("click", loadDeadLetters);
    $("#dl-target").addEventListener("change", loadDeadLetters);
    $("#dl-redrive").addEventListener("click", () => deadLetterAction("redrive", false));
    $("#dl-redrive-all").addEventListener("click", () => deadLetterAction("redrive", true));
    $("#dl-purge").addEventListener("click", () => deadLetterAction("purge", !document.querySelector("#dl-table tbody input:checked")));
    window.addEventListener("pagehide", stopTail); // the server deletes the tail's queue
  }

  async function main() {
    wire();
    const r = await api("GET", "/console/api/info");
    state.info = r.ok ? r.data : { features: {}, auth: {} };
    await checkAccess();
    const tab = location.hash.slice(1);
    selectTab(document.getElementById(`tab-${tab}`) ? tab : "topology");
    watchForever();
    pollRates();
  }

  main();
})();
