// A workflow drawn as SVG: one column per layer (a node's layer is one more than its deepest
// parent's), each node a box coloured by its process's state.

const SVG = "http://www.w3.org/2000/svg";
const W = 150, H = 44, GAP_X = 70, GAP_Y = 22, PAD = 16;
export const STATES = ["waiting", "running", "success", "failed", "cancelled"];

function el(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// processes: the graph's processes (Colonies JSON). Returns {layer: id -> n, order: [[id]]}.
export function layers(processes) {
  const byId = new Map(processes.map((p) => [p.processid, p]));
  const layer = new Map();
  const depth = (id, seen = new Set()) => {
    if (layer.has(id)) return layer.get(id);
    if (seen.has(id)) return 0; // a cycle cannot be submitted; never loop on one
    seen.add(id);
    const parents = (byId.get(id)?.parents || []).filter((p) => byId.has(p));
    const d = parents.length ? 1 + Math.max(...parents.map((p) => depth(p, seen))) : 0;
    layer.set(id, d);
    return d;
  };
  processes.forEach((p) => depth(p.processid));
  const order = [];
  for (const p of processes) {
    const d = layer.get(p.processid);
    (order[d] ||= []).push(p.processid);
  }
  return { layer, order };
}

export function nodeName(p) {
  return p.spec.nodename || p.spec.funcname || p.processid.slice(0, 8);
}

// Draw into `svg` (emptied first); returns a function that recolours one process's node.
export function drawGraph(svg, processes) {
  svg.replaceChildren();
  const { order } = layers(processes);
  const pos = new Map();
  order.forEach((ids, x) =>
    ids.forEach((id, y) => pos.set(id, { x: PAD + x * (W + GAP_X), y: PAD + y * (H + GAP_Y) })),
  );
  const rows = Math.max(1, ...order.map((ids) => ids.length));
  svg.setAttribute("width", PAD * 2 + order.length * (W + GAP_X) - GAP_X);
  svg.setAttribute("height", PAD * 2 + rows * (H + GAP_Y) - GAP_Y);
  svg.setAttribute("class", "graph");
  const edges = el("g");
  const nodes = el("g");
  svg.append(edges, nodes);
  const boxes = new Map();
  for (const p of processes) {
    const a = pos.get(p.processid);
    for (const parent of p.parents || []) {
      const b = pos.get(parent);
      if (!b) continue;
      const x1 = b.x + W, y1 = b.y + H / 2, x2 = a.x, y2 = a.y + H / 2, mx = (x1 + x2) / 2;
      edges.append(el("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` }));
    }
    const link = el("a", { href: `#/process/${p.processid}` });
    const g = el("g", { class: "node", "data-node": nodeName(p), "data-id": p.processid });
    g.append(
      el("rect", { x: a.x, y: a.y, width: W, height: H }),
      el("text", { x: a.x + 10, y: a.y + 18 }, nodeName(p)),
      el("text", { x: a.x + 10, y: a.y + 35, class: "sub" }, ""),
    );
    link.append(g);
    nodes.append(link);
    boxes.set(p.processid, g);
  }
  const colour = (p) => {
    const g = boxes.get(p.processid);
    if (!g) return;
    const state = STATES[p.state];
    g.setAttribute("class", `node ${state}`);
    g.setAttribute("data-state", state);
    g.lastChild.textContent = `${state} · ${p.spec.funcname}`;
  };
  processes.forEach(colour);
  return colour;
}
