// A run's live event log: follows the run's event stream (SSE), folds long output, renders checkpoint diffs,
// and keeps the page's state, cost and pull request current. Everything is built with textContent.
"use strict";
(function () {
  const log = document.getElementById("log");
  if (!log) return;
  const terminal = new Set(["succeeded", "no_changes", "failed", "cancelled", "timed_out"]);
  const FOLD_LINES = 12;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function folded(text, open) {
    const lines = text.split("\n");
    if (lines.length <= FOLD_LINES) return el("pre", "", text);
    const box = el("details");
    if (open) box.open = true;
    box.appendChild(el("summary", "", lines.length + " lines"));
    box.appendChild(el("pre", "", text));
    return box;
  }
  function diff(patch) {
    const pre = el("pre", "diff");
    for (const line of patch.split("\n")) {
      let cls = "";
      if (line.startsWith("diff --git") || line.startsWith("+++") || line.startsWith("---")) cls = "file";
      else if (line.startsWith("@@")) cls = "hunk";
      else if (line.startsWith("+")) cls = "add";
      else if (line.startsWith("-")) cls = "del";
      pre.appendChild(el("span", cls, line + "\n"));
    }
    const box = el("details");
    box.appendChild(el("summary", "", "diff (" + patch.split("\n").length + " lines)"));
    box.appendChild(pre);
    return box;
  }
  function setState(state, error) {
    const badge = document.getElementById("state");
    if (badge) { badge.textContent = state; badge.className = "state " + state; }
    if (terminal.has(state)) {
      const live = document.getElementById("live-actions");
      if (live) live.classList.add("hidden");
      refresh();
    }
    if (error) {
      let box = document.getElementById("error");
      if (!box) { box = el("p", "flash error"); box.id = "error"; log.parentNode.insertBefore(box, log.previousElementSibling); }
      box.textContent = error;
    }
  }
  function refresh() {
    fetch("/api/runs/" + log.dataset.run, { headers: { accept: "application/json" }, credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : null))
      .then((run) => {
        if (!run) return;
        document.getElementById("cost").textContent = Number(run.cost_usd || 0).toFixed(4);
        document.getElementById("turns").textContent = run.turns;
        const seconds = Math.max(0, run.updated_at - run.created_at);
        document.getElementById("duration").textContent =
          seconds < 120 ? seconds.toFixed(0) + " s" : seconds < 7200 ? (seconds / 60).toFixed(0) + " min" : (seconds / 3600).toFixed(1) + " h";
        const badge = document.getElementById("state");
        if (run.incomplete && badge && !document.getElementById("incomplete")) {
          const tag = el("span", "tag", "incomplete");
          tag.id = "incomplete";
          badge.after(" ", tag);
        }
        if (run.pull_request) {
          const pr = document.getElementById("pr");
          pr.textContent = "";
          const a = el("a", "", "#" + run.pull_request.number);
          a.href = run.pull_request.url;
          pr.appendChild(a);
        }
      });
  }
  function body(ev) {
    const d = ev.data || {};
    const box = el("div");
    switch (ev.type) {
      case "run.state":
        box.appendChild(el("span", "state " + d.state, d.state));
        if (d.error) box.appendChild(el("pre", "", d.error));
        setState(d.state, d.error);
        break;
      case "model.turn": {
        for (const block of d.content || []) {
          if (block.type === "text" && block.text) box.appendChild(folded(block.text, true));
          else if (block.type === "tool_use") box.appendChild(el("div", "sub", "→ " + block.name));
        }
        const u = d.usage || {};
        const parts = ["in " + (u.input_tokens || 0), "out " + (u.output_tokens || 0)];
        if (u.cache_read_input_tokens) parts.push("cache read " + u.cache_read_input_tokens);
        if (d.cost_usd !== undefined) parts.push("$" + Number(d.cost_usd).toFixed(4));
        box.appendChild(el("div", "usage", parts.join(" · ")));
        break;
      }
      case "tool.call": {
        const input = d.input || {};
        const text = input.command !== undefined ? "$ " + input.command : JSON.stringify(input, null, 2);
        box.appendChild(el("div", "sub", d.name || ""));
        box.appendChild(folded(text, false));
        break;
      }
      case "tool.result":
        if (d.exit_code !== undefined && d.exit_code !== null) box.appendChild(el("div", "sub", "exit " + d.exit_code));
        box.appendChild(folded(String(d.output === undefined ? "" : d.output), false));
        break;
      case "workspace.checkpoint":
        box.appendChild(el("div", "sub", "turn " + d.turn + (d.commit ? " · " + String(d.commit).slice(0, 10) : "")));
        if (d.patch) box.appendChild(diff(d.patch));
        break;
      case "egress.denied":
        box.appendChild(el("div", "", (d.host || "") + (d.port ? ":" + d.port : "") + " — " + (d.reason || "denied")));
        break;
      case "output.pull_request": {
        const a = el("a", "", "pull request #" + d.number);
        a.href = d.url;
        box.appendChild(a);
        break;
      }
      case "run.error":
        box.appendChild(el("pre", "", d.error || ""));
        break;
      default: {
        const flat = Object.entries(d).every(([, v]) => v === null || typeof v !== "object");
        if (flat) box.appendChild(el("div", "sub", Object.entries(d).map(([k, v]) => k + ": " + v).join(" · ")));
        else box.appendChild(folded(JSON.stringify(d, null, 2), false));
      }
    }
    return box;
  }
  function show(ev) {
    if (!ev.type) return;
    const wait = document.getElementById("log-wait");
    if (wait) wait.remove();
    const item = el("div", "ev " + ev.type.replace(/\./g, "-") + (ev.data && ev.data.is_error ? " error" : ""));
    const head = el("div", "head");
    head.appendChild(el("span", "type", ev.type));
    head.appendChild(el("span", "", new Date(ev.ts * 1000).toLocaleTimeString()));
    item.appendChild(head);
    item.appendChild(body(ev));
    log.appendChild(item);
  }
  const source = new EventSource(log.dataset.source, { withCredentials: true });
  source.onmessage = (message) => show(JSON.parse(message.data));
  source.addEventListener("end", () => {
    source.close();
    const wait = document.getElementById("log-wait");
    if (wait) wait.textContent = "No events.";
  });
})();
