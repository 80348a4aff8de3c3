"""The service's one HTML page (``GET /``): your models and jobs, with links to their reports.
Server-rendered, no script, no asset from elsewhere: it works offline."""

from __future__ import annotations

import html
import time
from pathlib import Path

from pyanalyzer._version import __version__
from pyanalyzer.service.queue import Queue

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }
.failed { color: #b00; } .done { color: #070; } code { font-size: 12px; }
"""


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def login_page(error: str | None = None) -> str:
    """The token form of a server with tokens (the token is kept in an HttpOnly cookie)."""
    note = f"<p class='failed'>{html.escape(error)}</p>" if error else ""
    return _page(
        "pyanalyzer: token",
        "<h1>pyanalyzer</h1><p>This server needs a token.</p>" + note
        + "<form method='post' action='/login'><input type='password' name='token' "
        "autocomplete='off' size='40'> <button type='submit'>Open</button></form>",
    )  # fmt: skip


def _when(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def render_index(queue: Queue, owner: str, jobs_dir: Path) -> str:
    """The models and jobs of ``owner``, newest jobs first, each finished job linked to its
    report (``index.html`` when it wrote one, else its result document)."""
    e = html.escape
    rows = []
    for m in queue.models(owner):
        info = m["info"]
        inp = info.get("input", {})
        rows.append(
            f"<tr><td><code>{e(m['id'])}</code></td><td>{e(m['name'])}</td>"
            f"<td>{len(info.get('layers', []))}</td><td>{e(str(inp.get('shape', '')))}</td>"
            f"<td>{_when(m['created'])}</td></tr>"
        )
    models = (
        "<table><tr><th>id</th><th>name</th><th>layers</th><th>input</th><th>uploaded</th></tr>"
        + "".join(rows) + "</table>" if rows else "<p>No model yet: POST /v1/models.</p>"
    )  # fmt: skip
    rows = []
    for j in queue.jobs(owner, limit=200):
        base = f"/v1/jobs/{j.id}"
        links = [f"<a href='{base}'>status</a>"]
        if j.state == "done":
            files = (j.result or {}).get("files", [])
            reports = [f for f in files if f.endswith("index.html")] or [
                f for f in files if f.endswith(".html")
            ]
            if reports:
                links.append(f"<a href='{base}/files/{e(reports[0])}'>report</a>")
            links.append(f"<a href='{base}/result'>result</a>")
        progress = "" if j.fraction is None else f"{100 * j.fraction:.0f}%"
        state = e(j.state) + (f": {e(j.error)}" if j.error else "")
        rows.append(
            f"<tr><td><code>{e(j.id)}</code></td><td>{e(j.method)}</td>"
            f"<td><code>{e(j.model[:12])}</code></td><td class='{e(j.state)}'>{state}</td>"
            f"<td>{e(j.stage or '')} {progress}</td><td>{_when(j.created)}</td>"
            f"<td>{' '.join(links)}</td></tr>"
        )
    jobs = (
        "<table><tr><th>job</th><th>method</th><th>model</th><th>state</th><th>progress</th>"
        "<th>submitted</th><th></th></tr>" + "".join(rows) + "</table>"
        if rows else "<p>No job yet: POST /v1/jobs.</p>"
    )  # fmt: skip
    return _page(
        "pyanalyzer",
        f"<h1>pyanalyzer {e(__version__)}</h1><p>Signed in as <b>{e(owner)}</b>. "
        "API: <a href='/openapi.json'>/openapi.json</a></p>"
        f"<h2>Models</h2>{models}<h2>Jobs</h2>{jobs}",
    )
