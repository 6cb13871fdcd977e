// The topology graph: a layered (left to right) drawing in SVG, hand-written so the page
// needs no build step and no library. Nodes are placed in columns by their longest path from
// a root (sources first), ignoring reply edges, which may point backwards; within a column
// nodes are ordered to follow their parents (a barycentre pass), which keeps most edges short.
"use strict";

const RMGraph = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 190, H = 52, GAP_X = 90, GAP_Y = 40, PAD = 20;

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  function layout(nodes, edges) {
    const byId = new Map(nodes.map((n) => [n.id, n]));
    const parents = new Map(nodes.map((n) => [n.id, []]));
    for (const e of edges) {
      if (!e.reply && byId.has(e.from) && byId.has(e.to)) parents.get(e.to).push(e.from);
    }
    const rank = new Map();
    const visiting = new Set();
    function rankOf(id) {
      if (rank.has(id)) return rank.get(id);
      if (visiting.has(id)) return 0; // a cycle without replies: cut it here
      visiting.add(id);
      const ps = parents.get(id) || [];
      const r = ps.length ? Math.max(...ps.map(rankOf)) + 1 : (byId.get(id).rank || 0);
      visiting.delete(id);
      rank.set(id, r);
      return r;
    }
    nodes.forEach((n) => rankOf(n.id));
    const columns = [];
    for (const n of nodes) {
      const r = rank.get(n.id);
      (columns[r] = columns[r] || []).push(n);
    }
    const y = new Map();
    columns.forEach((col, c) => {
      if (!col) return;
      if (c > 0) {
        const centre = (n) => {
          const ps = parents.get(n.id).filter((p) => y.has(p));
          return ps.length ? ps.reduce((a, p) => a + y.get(p), 0) / ps.length : 1e9;
        };
        col.sort((a, b) => centre(a) - centre(b) || a.label.localeCompare(b.label));
      } else {
        col.sort((a, b) => a.order - b.order || a.label.localeCompare(b.label));
      }
      col.forEach((n, i) => y.set(n.id, i));
    });
    for (const n of nodes) {
      n.x = PAD + rank.get(n.id) * (W + GAP_X);
      n.y = PAD + y.get(n.id) * (H + GAP_Y);
    }
    const width = PAD * 2 + columns.length * (W + GAP_X) - GAP_X;
    const height = PAD * 2 + Math.max(1, ...columns.map((c) => (c ? c.length : 0))) * (H + GAP_Y);
    return { width, height, byId };
  }

  function truncate(s, n) {
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }

  // nodes: {id, label, kind, ready: "True|False|Unknown", reason, filter, order, onOpen}
  // edges: {from, to, reply, rate: {ok, failed} | null, label}
  function draw(container, nodes, edges) {
    container.textContent = "";
    if (!nodes.length) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "Nothing in this namespace yet.";
      container.appendChild(p);
      return;
    }
    const { width, height, byId } = layout(nodes, edges);
    const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "group" }, container);
    const defs = el("defs", {}, svg);
    const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
    el("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }, marker);
    for (const e of edges) {
      const a = byId.get(e.from), b = byId.get(e.to);
      if (!a || !b) continue;
      const back = b.x <= a.x; // a reply into an earlier column: drawn below the nodes
      const x1 = back ? a.x + W / 2 : a.x + W, y1 = back ? a.y + H : a.y + H / 2;
      const x2 = back ? b.x + W / 2 + 12 : b.x, y2 = back ? b.y + H : b.y + H / 2;
      const dip = Math.max(y1, y2) + 28;
      const d = back
        ? `M ${x1} ${y1} C ${x1} ${dip}, ${x2} ${dip}, ${x2} ${y2}`
        : `M ${x1} ${y1} C ${(x1 + x2) / 2} ${y1}, ${(x1 + x2) / 2} ${y2}, ${x2} ${y2}`;
      const failing = e.rate && e.rate.failed > 0;
      const path = el("path", { d, class: `edge${e.reply ? " reply" : ""}${failing ? " failing" : ""}`, "marker-end": "url(#arrow)" }, svg);
      path.dataset.from = e.from;
      path.dataset.to = e.to;
      const title = el("title", {}, path);
      title.textContent = `${e.reply ? "reply: " : ""}${a.label} → ${b.label}`;
      if (e.rate || e.label) {
        const mx = (x1 + x2) / 2, my = back ? Math.max(y1, y2) + 18 : (y1 + y2) / 2 - 6;
        const t = el("text", { x: mx, y: my, "text-anchor": "middle", class: `rate${failing ? " failing" : ""}` }, svg);
        t.dataset.edge = `${e.from}->${e.to}`;
        t.textContent = e.rate ? `${fmt(e.rate.ok)}/s ✓ ${fmt(e.rate.failed)}/s ✗` : e.label;
      }
    }
    for (const n of nodes) {
      const g = el("g", { class: `node ready-${n.ready}`, transform: `translate(${n.x},${n.y})`, tabindex: 0, role: "button" }, svg);
      g.dataset.id = n.id;
      g.setAttribute("aria-label", `${n.kind} ${n.label}, Ready ${n.ready}${n.reason ? ": " + n.reason : ""}`);
      el("rect", { width: W, height: H, rx: 6 }, g);
      const kind = el("text", { x: 8, y: 14, class: "kind" }, g);
      kind.textContent = n.kind + (n.extra ? "  " + n.extra : "");
      const label = el("text", { x: 8, y: 30 }, g);
      label.textContent = truncate(n.label, 28);
      if (n.filter) {
        const f = el("text", { x: 8, y: 45, class: "filter" }, g);
        f.textContent = truncate(n.filter, 32);
      }
      const title = el("title", {}, g);
      title.textContent = `${n.kind} ${n.label}\nReady: ${n.ready}${n.reason ? "\n" + n.reason : ""}${n.filter ? "\nfilter: " + n.filter : ""}`;
      if (n.onOpen) {
        g.addEventListener("click", n.onOpen);
        g.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); n.onOpen(); } });
      }
    }
  }

  function fmt(x) {
    if (!x) return "0";
    return x >= 10 ? x.toFixed(0) : x.toFixed(1);
  }

  return { draw, fmt };
})();
