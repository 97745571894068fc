"""A small human view of a run: its state and its event log, live."""

from __future__ import annotations

import html
import json
import re

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Run {run_id}</title>
<style>
body{{font:14px system-ui,sans-serif;margin:2rem;max-width:70rem}} pre{{white-space:pre-wrap;margin:0}}
.ev{{border-left:3px solid #ccc;padding:.3rem .6rem;margin:.4rem 0}} .t{{color:#555;font-weight:600}}
.tool\\.call{{border-color:#36c}} .run\\.error{{border-color:#c33}} .run\\.state{{border-color:#393}}
</style></head>
<body><h1>Run <code>{run_id}</code></h1><p id="state">loading…</p><div id="log"></div>
<script>
const id = {run_id_json};
const log = document.getElementById('log');
const es = new EventSource('/api/runs/' + id + '/events');
function show(e) {{
  const ev = JSON.parse(e.data); if (!ev.type) return;
  const d = document.createElement('div'); d.className = 'ev ' + ev.type;
  const t = document.createElement('div'); t.className = 't';
  t.textContent = new Date(ev.ts * 1000).toISOString() + '  ' + ev.type; d.appendChild(t);
  const p = document.createElement('pre'); p.textContent = JSON.stringify(ev.data, null, 2); d.appendChild(p);
  log.appendChild(d);
  if (ev.type === 'run.state') document.getElementById('state').textContent = 'state: ' + ev.data.state;
}}
es.onmessage = show;
es.addEventListener('end', () => es.close());
</script></body></html>"""
_RUN_ID = re.compile(r"[0-9a-f]{8,64}")


async def run_page(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    if not _RUN_ID.fullmatch(run_id):
        return HTMLResponse("<h1>No such run</h1>", status_code=404)
    return HTMLResponse(_PAGE.format(run_id=html.escape(run_id), run_id_json=json.dumps(run_id)))


routes = [Route("/runs/{run_id}", run_page)]
