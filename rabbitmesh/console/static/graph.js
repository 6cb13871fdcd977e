// The topology graph in SVG. Layout by dagre (vendored, MIT: dagre.min.js, rebuilt by
// scripts/vendor-console.sh), left to right. Replies are dashed; those that point back into
// the graph (a trigger's subscriber replying into its broker: `back`) are left out of the
// layout, where they would bend the ranks, and drawn as arcs below their two nodes.
"use strict";

const RMGraph = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 190, H = 52;

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  function layout(nodes, edges) {
    const byId = new Map(nodes.map((n) => [n.id, n]));
    const g = new dagre.graphlib.Graph({ multigraph: true });
    g.setGraph({ rankdir: "LR", nodesep: 28, ranksep: 90, marginx: 20, marginy: 20 });
    g.setDefaultEdgeLabel(() => ({}));
    // Insertion order guides dagre's ordering within a rank: sources and brokers first.
    [...nodes].sort((a, b) => (a.order || 0) - (b.order || 0) || a.label.localeCompare(b.label))
      .forEach((n) => g.setNode(n.id, { width: W, height: H }));
    edges.forEach((e, i) => {
      if (!e.back && byId.has(e.from) && byId.has(e.to)) g.setEdge(e.from, e.to, {}, `e${i}`);
    });
    dagre.layout(g);
    for (const n of nodes) {
      const p = g.node(n.id);
      n.x = p.x - W / 2;
      n.y = p.y - H / 2;
    }
    edges.forEach((e, i) => {
      const laid = !e.back && g.edge({ v: e.from, w: e.to, name: `e${i}` });
      e.points = laid ? laid.points : null;
    });
    const size = g.graph();
    // Room below the graph for the reply arcs.
    return { width: Math.max(size.width, W + 40), height: size.height + 40, byId };
  }

  // A smooth path through dagre's points (quadratic curves through the midpoints).
  function through(points) {
    let d = `M ${points[0].x} ${points[0].y}`;
    for (let i = 1; i < points.length - 1; i++) {
      const mx = (points[i].x + points[i + 1].x) / 2, my = (points[i].y + points[i + 1].y) / 2;
      d += ` Q ${points[i].x} ${points[i].y} ${mx} ${my}`;
    }
    const last = points[points.length - 1];
    return d + ` L ${last.x} ${last.y}`;
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
    const labels = [];
    for (const e of edges) {
      const a = byId.get(e.from), b = byId.get(e.to);
      if (!a || !b) continue;
      const back = !e.points; // a reply into the graph: an arc below both nodes
      const x1 = back ? a.x + W / 2 : a.x + W, y1 = back ? a.y + H : a.y + H / 2;
      const x2 = back ? b.x + W / 2 + 12 : b.x, y2 = back ? b.y + H : b.y + H / 2;
      const dip = Math.max(y1, y2) + 28;
      const d = back ? `M ${x1} ${y1} C ${x1} ${dip}, ${x2} ${dip}, ${x2} ${y2}` : through(e.points);
      const failing = e.rate && e.rate.failed > 0;
      const path = el("path", { d, class: `edge${e.reply ? " reply" : ""}${failing ? " failing" : ""}`, "marker-end": "url(#arrow)" }, svg);
      path.dataset.from = e.from;
      path.dataset.to = e.to;
      const title = el("title", {}, path);
      title.textContent = `${e.reply ? "reply: " : ""}${a.label} → ${b.label}`;
      if (e.rate || e.label) labels.push(() => {
        const mid = e.points && e.points[Math.floor(e.points.length / 2)];
        const mx = back ? (x1 + x2) / 2 : mid.x, my = back ? Math.max(y1, y2) + 18 : mid.y - 6;
        const t = el("text", { x: mx, y: my, "text-anchor": "middle", class: `rate${failing ? " failing" : ""}` }, svg);
        t.dataset.edge = `${e.from}->${e.to}`;
        t.textContent = e.rate ? `${fmt(e.rate.ok)}/s ✓ ${fmt(e.rate.failed)}/s ✗` : e.label;
      });
    }
    labels.forEach((draw) => draw()); // over every edge, so no line crosses a number
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
