"""Who is logged in (with a way out), and, for admins, the audit log: read-only, newest last.

The accordion is hidden from everyone but admins, and its one event checks
again on every call, since an API client can call an event it cannot see.
Nothing here writes: the log has no route that edits it (storage/audit.py).
"""

from __future__ import annotations

import gradio as gr

from storage.audit import AuditLog
from webui.jobs import Jobs

COLUMNS = ["when (UTC)", "who", "what", "target", "from", "detail"]
SHOWN = 200  # the newest entries shown; `atelier audit` has them all


def build(app: gr.Blocks, *, jobs: Jobs, audit: AuditLog, who: gr.Markdown) -> None:
    # -- functions -------------------------------------------------------------
    def entries(request: gr.Request) -> list[list[str]]:
        if not jobs.is_admin(request):
            raise gr.Error("Only an admin may read the audit log.")
        return [
            [f"{e.at:%Y-%m-%d %H:%M:%S}", e.actor, e.action, e.target, e.address, e.detail]
            for e in audit.entries(limit=SHOWN)
        ]

    def on_load(request: gr.Request) -> tuple:
        name = getattr(request, "username", None)
        line = f"Logged in as **{name}** · [Log out](logout)" if name else ""
        admin = jobs.is_admin(request)
        return line, gr.update(visible=admin), entries(request) if admin else []

    # -- layout ----------------------------------------------------------------
    with gr.Accordion("Audit log (admins only)", open=False, visible=False) as box:
        table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True)
        refresh = gr.Button("Refresh", size="sm")

    # -- events ----------------------------------------------------------------
    app.load(on_load, outputs=[who, box, table], queue=False, api_visibility="private")
    refresh.click(entries, outputs=table, queue=False, api_name="audit_log")
