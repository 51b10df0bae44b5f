// The fleet dashboard: one page, hash-routed, polling /ui/api every 2 s; lease clocks tick every second.
// Every value from the coordinator goes into the page as text (textContent), never as HTML.
"use strict";

const POLL_MS = 2000;
const STATES = ["queued", "leased", "shipped", "quarantined", "composite"];
let clockOffsetMs = 0;   // server time minus this browser's, from each answer's "now"
let csrf = null;
let timer = null;
let route = null;        // {name, arg, params}
let generation = 0;      // bumps on each route change: a late answer for an old route is dropped

// ---------------------------------------------------------------- small helpers

function h(tag, attrs, ...children) {
  const svg = ["svg", "g", "rect", "text", "line", "path", "defs", "marker", "title", "a"].includes(tag)
    && (attrs && attrs.svg);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "svg" || v === null || v === undefined || v === false) continue;
    if (k === "text") el.textContent = String(v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function s(tag, attrs, ...children) { return h(tag, {...attrs, svg: true}, ...children); }

function stateBadge(state) { return h("span", {class: "badge state-" + state, "data-state": state, text: state}); }

function jobLink(id) { return h("a", {href: "#/job/" + encodeURIComponent(id), class: "job-link", text: id}); }

function serverNow() { return Date.now() + clockOffsetMs; }

function secondsLeft(iso) { return (Date.parse(iso) - serverNow()) / 1000; }

function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, Math.round((serverNow() - Date.parse(iso)) / 1000));
  return s < 90 ? s + " s ago" : s < 5400 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
}

function leftText(iso) {
  const left = secondsLeft(iso);
  return left > 0 ? left.toFixed(0) + " s left" : "expired";
}

// A clock that ticks between polls: its text is recomputed every second from its data-* time.
function ticking(kind, iso) {
  return h("span", {class: "tick", "data-kind": kind, "data-time": iso, text: kind === "left" ? leftText(iso) : ago(iso)});
}

function tick() {
  for (const el of document.querySelectorAll(".tick")) {
    el.textContent = el.dataset.kind === "left" ? leftText(el.dataset.time) : ago(el.dataset.time);
  }
}

function table(headers, rows, attrs) {
  return h("table", attrs || {}, h("thead", {}, h("tr", {}, headers.map((t) => h("th", {text: t})))),
    h("tbody", {}, rows));
}

function hashParams() {
  const [path, query] = window.location.hash.slice(1).split("?");
  const parts = (path || "/fleet").split("/").filter(Boolean);
  return {name: parts[0] || "fleet", arg: parts.slice(1).map(decodeURIComponent).join("/"),
          params: new URLSearchParams(query || "")};
}

function setHash(name, params) {
  const q = new URLSearchParams([...params].filter(([, v]) => v !== "" && v !== null)).toString();
  window.location.hash = "#/" + name + (q ? "?" + q : "");
}

async function api(path) {
  const answer = await fetch(path, {credentials: "same-origin", headers: {Accept: "application/json"}});
  if (answer.status === 401) {
    window.location.assign("/login");
    throw new Error("not logged in");
  }
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.error ? body.error.code + ": " + body.error.message : String(answer.status));
  if (body.now) clockOffsetMs = Date.parse(body.now) - Date.now();
  return body;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

// ---------------------------------------------------------------- views: each has controls (built once) and a body

const views = {
  fleet: {
    path: () => "/ui/api/fleet",
    render(data) {
      const counts = h("p", {class: "counts", id: "counts"}, Object.entries(data.counts).map(([k, n]) =>
        h("span", {class: "count"}, stateBadge(k), " ", h("b", {text: n}))));
      const rows = data.factories.map((f) => h("tr", {"data-factory": f.factoryId},
        h("td", {text: f.factoryId}),
        h("td", {}, ticking("ago", f.lastSeen)),
        h("td", {text: f.capabilitiesKnown ? (f.capabilities.join(", ") || "(none)") : "(not seen claiming)"}),
        h("td", {}, f.holds.length ? f.holds.map((l) => h("div", {class: "held"}, jobLink(l.jobId),
          " epoch " + l.leaseEpoch + ", ", ticking("left", l.expiresAt))) : "nothing")));
      return [counts, h("p", {class: "note", text: "lease ttl " + data.leaseTtlS + " s"}),
        table(["factory", "last seen", "capabilities", "holds (lease time left)"], rows, {id: "factories"})];
    },
  },

  queue: {
    controls(params) {
      const input = (name, placeholder) => h("input", {name, placeholder, value: params.get(name) || "",
        onchange: (e) => { params.set(name, e.target.value); params.set("page", "1"); setHash("queue", params); }});
      return h("div", {class: "controls"}, h("span", {id: "state-tabs"}),
        input("q", "id or reason contains"), input("factory", "factory id"));
    },
    path: (params) => "/ui/api/jobs?" + params.toString(),
    render(data, params) {
      const tabs = document.getElementById("state-tabs");
      const current = params.get("state") || "";
      tabs.replaceChildren(...["", ...STATES].map((st) => h("a", {
        href: "#", class: "tab" + (st === current ? " active" : ""), "data-tab": st || "all",
        onclick: (e) => { e.preventDefault(); params.set("state", st); params.set("page", "1"); setHash("queue", params); },
      }, (st || "all") + (st ? " (" + (data.counts[st] || 0) + ")" : ""))));
      const rows = data.rows.map((r) => h("tr", {"data-job-id": r.id},
        h("td", {}, jobLink(r.id)), h("td", {}, stateBadge(r.kind === "composite" ? (r.rollup || r.state) : r.state)),
        h("td", {text: r.priority}), h("td", {text: r.attempts + "/" + r.maxAttempts}), h("td", {text: r.leaseEpoch}),
        h("td", {text: r.factory || ""}), h("td", {}, r.expiresAt ? ticking("left", r.expiresAt) : ""),
        h("td", {text: r.notBefore || ""}), h("td", {class: "reason", text: r.reason || ""})));
      const pager = h("p", {class: "pager"},
        h("button", {type: "button", disabled: data.page <= 1, onclick: () => { params.set("page", data.page - 1); setHash("queue", params); }}, "previous"),
        " page " + data.page + " of " + data.pages + " (" + data.total + " jobs, " + data.size + " a page) ",
        h("button", {type: "button", disabled: data.page >= data.pages, onclick: () => { params.set("page", data.page + 1); setHash("queue", params); }}, "next"));
      return [table(["job", "state", "priority", "attempts", "epoch", "factory", "lease", "not before", "reason"],
        rows, {id: "jobs"}), pager];
    },
  },

  job: {
    path: (params, arg) => "/ui/api/jobs/" + encodeURIComponent(arg),
    render(data) {
      const {view, row} = data;
      const meta = view.meta;
      const facts = [
        ["state", stateBadge(meta.state)], ["attempts", meta.attempts + " of " + meta.maxAttempts],
        ["lease epoch", meta.leaseEpoch], ["enqueued", meta.enqueuedAt], ["not before", meta.notBefore],
        ["finished", meta.finishedAt], ["outcome", meta.outcome], ["reason", meta.reason],
        ["held by", view.lease ? h("span", {}, view.lease.factoryId + " (epoch " + view.lease.leaseEpoch + "), ",
          ticking("left", view.lease.expiresAt)) : null],
        ["parent", row.parentId ? jobLink(row.parentId) : null],
        ["composite", row.kind === "composite" ? h("a", {href: "#/composite/" + encodeURIComponent(row.id), text: "its DAG"}) : null],
      ].filter(([, v]) => v !== null && v !== undefined && v !== "");
      const leaseRows = data.leases.map((l) => h("tr", {class: "lease" + (l.refused.length ? " has-refused" : ""), "data-epoch": l.epoch},
        h("td", {text: l.epoch}), h("td", {text: l.factoryId || ""}), h("td", {text: l.claimedAt || ""}),
        h("td", {text: l.renewals}),
        h("td", {text: l.end ? l.end.op + (l.end.result ? " (" + l.end.result + ")" : "") + " at " + l.end.at : "live"}),
        h("td", {class: "refused"}, l.refused.map((r) => h("div", {class: "fenced", "data-code": r.code},
          "409 " + r.code + ": " + r.op + " by " + r.factoryId + " at " + r.at)))));
      const eventRows = data.events.map((e) => h("tr", {class: e.status === 409 ? "conflict" : ""},
        h("td", {text: e.time}), h("td", {text: e.op}), h("td", {text: e.status}), h("td", {text: e.factoryId || ""}),
        h("td", {text: e.leaseEpoch || ""}), h("td", {text: e.code || e.outcome || e.state || ""})));
      return [
        h("h2", {id: "job-title"}, "job ", h("span", {id: "job-id", text: view.job.id}), " ",
          h("span", {id: "job-state"}, stateBadge(meta.state))),
        h("dl", {class: "facts"}, facts.map(([k, v]) => [h("dt", {text: k}), h("dd", {}, v)])),
        h("h3", {text: "attempts and leases"}),
        table(["epoch", "factory", "claimed", "renewals", "ended", "refused (409)"], leaseRows, {id: "leases"}),
        data.story.length ? h("div", {id: "story"}, h("h3", {text: "409s, told"}),
          h("ul", {}, data.story.map((line) => h("li", {text: line})))) : null,
        h("h3", {text: "spec (secrets redacted)"}), h("pre", {id: "spec", text: JSON.stringify(view.job, null, 2)}),
        h("h3", {text: "events"}), table(["time", "op", "status", "factory", "epoch", "code / outcome"], eventRows, {id: "job-events"}),
      ];
    },
  },

  composites: {
    path: (params) => "/ui/api/composites?" + params.toString(),
    render(data) {
      const rows = data.rows.map((r) => h("tr", {"data-job-id": r.id},
        h("td", {}, h("a", {href: "#/composite/" + encodeURIComponent(r.id), text: r.id})),
        h("td", {}, stateBadge(r.rollup || "queued")), h("td", {text: r.children}),
        h("td", {text: Object.entries(r.rollupCounts || {}).filter(([, n]) => n).map(([k, n]) => k + " " + n).join(", ")})));
      return [table(["composite", "rollup", "children", "children by state"], rows, {id: "composites"}),
        h("p", {class: "pager", text: "page " + data.page + " of " + data.pages + " (" + data.total + ")"})];
    },
  },

  composite: {
    path: (params, arg) => "/ui/api/composites/" + encodeURIComponent(arg),
    render(data) {
      const d = data.dag;
      const roll = d.rollup || {};
      return [
        h("h2", {}, "composite ", jobLink(data.parent.id), " ", h("span", {id: "rollup-state"}, stateBadge(roll.state || "queued"))),
        h("p", {id: "rollup"}, Object.entries(roll.counts || {}).map(([k, n]) => h("span", {class: "count"}, stateBadge(k), " " + n + " ")),
          roll.verify ? " verify: " + roll.verify : "", roll.reason ? " (" + roll.reason + ")" : ""),
        drawDag(d),
        h("p", {class: "legend"}, ["queued", "running", "blocked", "shipped", "quarantined"].map((st) => stateBadge(st))),
      ];
    },
  },

  shadow: {
    path: (params) => "/ui/api/shadow?" + params.toString(),
    render(data) {
      const rate = data.rate === null ? "no verdicts yet" : (100 * data.rate).toFixed(1) + "% agree";
      const rows = data.divergences.map((d) => h("tr", {},
        h("td", {text: d.at || ""}), h("td", {text: d.factoryId || ""}), h("td", {}, h("span", {class: "badge verdict", text: d.verdict})),
        h("td", {}, d.localJobId ? jobLink(d.localJobId) : ""), h("td", {}, d.coordJobId ? jobLink(d.coordJobId) : "")));
      return [h("p", {id: "shadow-rate", class: "big", text: rate + " (" + data.agree + " of " + data.total + ")"}),
        drawRate(data.series, data.bucketS),
        h("h3", {text: "recent disagreements"}),
        table(["received", "factory", "verdict", "local job", "coordinator job"], rows, {id: "divergences"})];
    },
  },

  events: {
    controls(params) {
      const input = (name, placeholder) => h("input", {name, placeholder, value: params.get(name) || "",
        onchange: (e) => { params.set(name, e.target.value); params.delete("before"); setHash("events", params); }});
      return h("div", {class: "controls"}, input("op", "op (claim, report, reclaim...)"), input("job", "job id"),
        input("factory", "factory id"), input("status", "status (409, 4xx)"));
    },
    path: (params) => "/ui/api/events?" + params.toString(),
    render(data, params) {
      const rows = data.events.map((e) => h("tr", {class: e.status === 409 ? "conflict" : "", "data-op": e.op},
        h("td", {text: e.time}), h("td", {text: e.op}), h("td", {text: e.status}),
        h("td", {}, e.jobId ? jobLink(e.jobId) : ""), h("td", {text: e.factoryId || ""}), h("td", {text: e.leaseEpoch || ""}),
        h("td", {text: e.code || e.outcome || e.state || e.verdict || ""})));
      const full = data.events.length >= (Number(params.get("limit")) || 200);
      const last = full ? data.events[data.events.length - 1].seq : null;
      return [table(["time", "op", "status", "job", "factory", "epoch", "code / result"], rows, {id: "events"}),
        last ? h("button", {type: "button", onclick: () => { params.set("before", last); setHash("events", params); }}, "older") : null];
    },
  },
};

// ---------------------------------------------------------------- drawings (SVG, no library)

function drawDag(d) {
  const W = 170, H = 46, GX = 60, GY = 18;
  const width = Math.max(1, d.layers) * (W + GX) + GX, height = Math.max(1, d.rows) * (H + GY) + GY;
  const at = {};
  for (const n of d.nodes) at[n.id] = {x: GX + n.layer * (W + GX), y: GY + n.row * (H + GY)};
  const edges = d.edges.map(([from, to]) => {
    const a = at[from], b = at[to];
    return s("path", {class: "edge", d: `M${a.x + W} ${a.y + H / 2} C${a.x + W + GX / 2} ${a.y + H / 2} ${b.x - GX / 2} ${b.y + H / 2} ${b.x} ${b.y + H / 2}`,
      "marker-end": "url(#arrow)"});
  });
  const nodes = d.nodes.map((n) => s("a", {href: "#/job/" + encodeURIComponent(n.id)},
    s("g", {class: "node state-" + n.state, "data-id": n.id, "data-state": n.state},
      s("title", {text: n.id + ": " + n.state + (n.phase ? " (phase " + n.phase + ")" : "")}),
      s("rect", {x: at[n.id].x, y: at[n.id].y, width: W, height: H, rx: 6}),
      s("text", {x: at[n.id].x + 10, y: at[n.id].y + 19, class: "node-id", text: n.id.length > 22 ? n.id.slice(0, 21) + "…" : n.id}),
      s("text", {x: at[n.id].x + 10, y: at[n.id].y + 36, class: "node-state", text: n.state + (n.phase ? " · phase " + n.phase : "")}))));
  return s("svg", {id: "dag", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "children and their dependencies"},
    s("defs", {}, s("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse"},
      s("path", {d: "M 0 0 L 10 5 L 0 10 z", class: "arrow"}))), edges, nodes);
}

function drawRate(series, bucketS) {
  // One bar a bucket: green up to the agreement rate, red above it; grey when no verdict came.
  const W = 18, GAP = 4, H = 120, LEFT = 36;
  const width = LEFT + series.length * (W + GAP), height = H + 8;
  const bars = series.map((b, i) => {
    const x = LEFT + i * (W + GAP), agreeH = b.total ? H * b.rate : 0;
    return s("g", {class: "bar"},
      s("title", {text: b.start + ": " + (b.total ? (100 * b.rate).toFixed(0) + "% of " + b.total + " agree" : "no verdicts")}),
      s("rect", {x, y: 0, width: W, height: H, class: b.total ? "disagree" : "empty"}),
      b.total ? s("rect", {x, y: H - agreeH, width: W, height: agreeH, class: "rate"}) : null);
  });
  return h("figure", {}, s("svg", {id: "rate-chart", width, height, viewBox: `0 0 ${width} ${height}`},
    s("text", {x: 0, y: 10, class: "axis", text: "100%"}), s("text", {x: 0, y: H, class: "axis", text: "0%"}), bars),
    h("figcaption", {text: "agreement per " + Math.round(bucketS / 60) + " min, oldest left (hover a bar)"}));
}

// ---------------------------------------------------------------- the loop

async function refresh() {
  const mine = generation;
  const view = views[route.name] || views.fleet;
  try {
    const data = await api(view.path(route.params, route.arg));
    if (mine !== generation) return;
    document.getElementById("body").replaceChildren(...[view.render(data, route.params)].flat().filter(Boolean));
    showError(null);
    document.getElementById("live").className = "live ok";
  } catch (e) {
    if (mine !== generation) return;
    showError(String(e.message || e));
    document.getElementById("live").className = "live stale";
  }
}

function navigate() {
  generation += 1;
  route = hashParams();
  const view = views[route.name] || views.fleet;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.route === route.name
      || (a.dataset.route === "queue" && route.name === "job") || (a.dataset.route === "composites" && route.name === "composite"));
  }
  document.getElementById("view").replaceChildren(view.controls ? view.controls(route.params) : "", h("div", {id: "body"}));
  refresh();
}

async function logout() {
  await fetch("/ui/logout", {method: "POST", credentials: "same-origin", headers: {"X-CSRF-Token": csrf || ""}});
  window.location.assign("/login");
}

async function start() {
  try {
    const session = await api("/ui/api/session");
    csrf = session.csrf;
    document.getElementById("logout").hidden = session.open;
  } catch (e) {
    return;
  }
  document.getElementById("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", navigate);
  navigate();
  timer = setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
  setInterval(tick, 1000);
}

document.addEventListener("DOMContentLoaded", start);
