// The decisions inspector's script (src/ui/): lists the kept decisions, opens one, and adds
// new ones as /ui/events announces them.
//
// Every text shown here comes from the proxy's JSON and may hold anything a user or a model
// wrote, markup included: it is only ever written with textContent (through `el`), never
// parsed as HTML.
"use strict";

const state = { openId: null, filters: { model: "", strategy: "", fallback: "any" } };

// An element with attributes and children; strings become text nodes, never markup.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function $(id) {
  return document.getElementById(id);
}

function clock(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleTimeString();
}

function ms(value) {
  return value >= 1000 ? (value / 1000).toFixed(2) + " s" : Math.round(value) + " ms";
}

function query() {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(state.filters)) {
    if (value && value !== "any") params.set(name, value);
  }
  return params.toString();
}

function matches(summary) {
  const f = state.filters;
  if (f.model && summary.model !== f.model) return false;
  if (f.strategy && summary.strategy !== f.strategy) return false;
  if (f.fallback === "yes" && !summary.fallback) return false;
  if (f.fallback === "no" && summary.fallback) return false;
  return true;
}

async function getJson(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
  return body;
}

// ---- the list ------------------------------------------------------------------------------

function row(summary) {
  const tokens = summary.usage ? summary.usage.total_tokens : 0;
  const winner = summary.winner === null ? (summary.mode === "fuse" ? "fused" : "–") : "#" + summary.winner;
  const tr = el("tr", {
    "data-id": summary.id,
    "data-request-id": summary.request_id || "",
    class: summary.fallback ? "fell-back" : null,
    tabindex: 0,
    title: summary.request_id ? "request " + summary.request_id : null,
  },
    el("td", {}, String(summary.id)),
    el("td", {}, clock(summary.time)),
    el("td", {}, summary.model),
    el("td", { class: "num" }, String(summary.n)),
    el("td", {}, summary.strategy || "–"),
    el("td", {}, summary.rubric || "–"),
    el("td", { class: "num" }, winner),
    el("td", { class: "num" }, summary.winner_score),
    el("td", {}, summary.fallback || "no"),
    el("td", { class: "num" }, ms(summary.latency_ms)),
    el("td", { class: "num" }, String(tokens)),
  );
  tr.addEventListener("click", () => openDecision(summary.id));
  tr.addEventListener("keydown", (event) => {
    if (event.key === "Enter") openDecision(summary.id);
  });
  if (summary.id === state.openId) tr.classList.add("open");
  return tr;
}

function setOptions(select, values) {
  const chosen = select.value;
  const known = new Set(Array.from(select.options, (o) => o.value));
  for (const value of values) {
    if (!known.has(value)) select.append(el("option", { value }, value));
  }
  select.value = chosen;
}

function showEmpty() {
  $("empty").hidden = $("rows").children.length > 0;
}

async function loadList() {
  const listing = await getJson("/ui/api/decisions?" + query());
  const rows = $("rows");
  rows.replaceChildren(...listing.decisions.map(row));
  setOptions($("f-model"), listing.models);
  setOptions($("f-strategy"), listing.strategies);
  const size = listing.bytes < 1048576
    ? Math.ceil(listing.bytes / 1024) + " KiB"
    : (listing.bytes / 1048576).toFixed(1) + " MiB";
  $("kept").textContent = `${listing.kept} of ${listing.keep} kept · ${size}` +
    (listing.include_content ? "" : " · content not kept");
  showEmpty();
}

function addLive(summary) {
  setOptions($("f-model"), [summary.model]);
  if (summary.strategy) setOptions($("f-strategy"), [summary.strategy]);
  if (!matches(summary)) return;
  const rows = $("rows");
  if (rows.querySelector(`tr[data-id="${summary.id}"]`)) return;
  const tr = row(summary);
  tr.classList.add("new");
  rows.prepend(tr);
  showEmpty();
}

// ---- one decision --------------------------------------------------------------------------

function fact(name, value) {
  return [el("dt", {}, name), el("dd", {}, value === null || value === undefined ? "–" : String(value))];
}

function candidateCard(c) {
  const classes = ["candidate", "outcome-" + c.outcome];
  if (c.winner) classes.push("winner");
  const title = el("h4", {}, `Candidate #${c.index}`,
    c.winner ? el("span", { class: "badge", "aria-label": "winner" }, "★ winner") : null);
  const facts = el("dl", { class: "card-facts" },
    el("dt", {}, "score"), el("dd", { class: "score" }, c.score_text),
    el("dt", {}, "rank"), el("dd", { class: "rank" }, c.rank === null ? "–" : String(c.rank)),
    el("dt", {}, "status"), el("dd", { class: "status" }, c.status),
    el("dt", {}, "model"), el("dd", {}, c.model),
    el("dt", {}, "latency"), el("dd", {}, ms(c.latency_ms)),
    el("dt", {}, "tokens"), el("dd", {}, c.tokens === null ? "–" : String(c.tokens)),
  );
  const text = c.text === undefined
    ? el("p", { class: "muted" }, "text not kept (ui.include_content = false)")
    : el("pre", { class: "text" }, c.text);
  return el("article", {
    class: classes.join(" "),
    "data-index": c.index,
    "aria-current": c.winner ? "true" : null,
  }, title, facts, text);
}

function renderDetail(d) {
  $("d-title").textContent = `Decision ${d.id} · ${d.model} · best of ${d.n}`;
  const usage = d.usage || {};
  $("d-facts").replaceChildren(
    ...fact("request id", d.request_id),
    ...fact("time", d.time),
    ...fact("judge", d.judge),
    ...fact("strategy", d.strategy),
    ...fact("rubric", d.rubric),
    ...fact("mode", d.mode),
    ...fact("winner", d.winner === null ? null : "#" + d.winner),
    ...fact("ranking", d.ranking.length ? d.ranking.map((i) => "#" + i).join(" › ") + (d.fully_ranked ? "" : " (winner only; the rest in generation order)") : null),
    ...fact("fallback", d.fallback || "no"),
    ...fact("latency", ms(d.latency_ms)),
    ...fact("tokens", `${usage.total_tokens} (prompt ${usage.prompt_tokens}, completion ${usage.completion_tokens})`),
  );
  const conversation = $("d-conversation");
  if (d.conversation) {
    conversation.replaceChildren(...d.conversation.map((turn) =>
      el("div", { class: "turn role-" + turn.role.replace(/[^a-z]/g, "") },
        el("span", { class: "role" }, turn.role), el("pre", {}, turn.text))));
  } else {
    conversation.replaceChildren(el("p", { class: "muted" }, "not kept (ui.include_content = false)"));
  }
  $("d-candidates").replaceChildren(...d.candidates.map(candidateCard));
  const verdict = $("d-verdict");
  if (!d.verdict) {
    verdict.replaceChildren(el("p", { class: "muted" },
      d.mode === "fuse" ? "none: the fuser wrote the answer" : "none: no judge was needed"));
  } else {
    const v = d.verdict;
    const parts = [el("dl", { class: "facts" },
      ...fact("outcome", v.outcome),
      ...fact("shown in order", v.presentation.map((i) => "#" + i).join(", ")),
      ...fact("seed", v.seed),
      ...fact("judge tokens", v.judge_tokens),
      ...(v.failure ? fact("failure", v.failure) : []))];
    if (v.raw === undefined) {
      parts.push(el("p", { class: "muted" }, "raw verdict not kept (ui.include_content = false)"));
    } else {
      const calls = v.raw.length;
      parts.push(...v.raw.map((text, i) => el("figure", { class: "raw-answer" },
        el("figcaption", {}, calls > 1 ? `judge answer ${i + 1} of ${calls}` : "judge answer"),
        el("pre", { class: "raw" }, text))));
    }
    verdict.replaceChildren(...parts);
  }
  $("detail").hidden = false;
}

async function openDecision(id) {
  state.openId = id;
  for (const tr of $("rows").querySelectorAll("tr.open")) tr.classList.remove("open");
  const tr = $("rows").querySelector(`tr[data-id="${id}"]`);
  if (tr) tr.classList.add("open");
  if (location.hash !== "#" + id) history.replaceState(null, "", "#" + id);
  try {
    renderDetail(await getJson("/ui/api/decisions/" + encodeURIComponent(id)));
    $("detail").scrollIntoView({ block: "start" });
  } catch (error) {
    $("d-title").textContent = `Decision ${id}: ${error.message}`;
    for (const part of ["d-facts", "d-conversation", "d-candidates", "d-verdict"]) $(part).replaceChildren();
    $("detail").hidden = false;
  }
}

function closeDecision() {
  state.openId = null;
  $("detail").hidden = true;
  history.replaceState(null, "", location.pathname);
  for (const tr of $("rows").querySelectorAll("tr.open")) tr.classList.remove("open");
}

// ---- live view -----------------------------------------------------------------------------

function connect() {
  const live = $("live");
  const events = new EventSource("/ui/events");
  events.addEventListener("open", () => {
    live.textContent = "live";
    live.className = "live on";
  });
  events.addEventListener("error", () => {
    live.textContent = "reconnecting…";
    live.className = "live off";
  });
  events.addEventListener("decision", (event) => {
    try {
      addLive(JSON.parse(event.data));
    } catch (error) {
      console.error("bad decision event", error);
    }
  });
  // The proxy skipped events this page was too slow to take: read the list again.
  events.addEventListener("lagged", () => loadList().catch(console.error));
}

function start() {
  for (const name of ["model", "strategy", "fallback"]) {
    $("f-" + name).addEventListener("change", (event) => {
      state.filters[name] = event.target.value;
      loadList().catch(console.error);
    });
  }
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("close").addEventListener("click", closeDecision);
  loadList()
    .then(() => {
      const id = Number(location.hash.slice(1));
      if (id > 0) openDecision(id);
    })
    .catch((error) => {
      $("kept").textContent = "cannot read the decisions: " + error.message;
    });
  connect();
}

document.addEventListener("DOMContentLoaded", start);
