"""A notes app on Flask and writebus (``SyncDatabase``).

``POST /notes`` creates a note through the bus and answers 303 to ``/notes/<id>``, which reads
it from the local replica. The write returns only once that replica has replayed it, so the
redirected ``GET`` shows the note even in a region far from the primary.

Run it with ``flask --app flask_notes_app run`` and the environment of its region
(``PRIMARY_REGION``, ``FLY_REGION``, ``NATS_URL``, ``DATABASE_URL``; see the README).
"""

from __future__ import annotations

from html import escape
from typing import Any

from flask import Blueprint, Flask, abort, current_app, redirect, request
from werkzeug.wrappers import Response

from writebus import Settings, SyncDatabase

SCHEMA = """CREATE TABLE IF NOT EXISTS notes (
    id bigserial PRIMARY KEY,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)"""

bp = Blueprint("notes", __name__)


def create_app(settings: Settings | None = None) -> Flask:
    """The app; ``settings`` default to the environment's. Its SyncDatabase lives as long as
    the process (``close_app`` closes it)."""
    app = Flask(__name__)
    db = SyncDatabase(settings or Settings.from_env())
    db.open()
    db.execute(SCHEMA)  # on the primary, through the bus from other regions
    app.extensions["writebus"] = db
    # Middleware goes here, one line each: app.wsgi_app = SomeMiddleware(app.wsgi_app)
    app.register_blueprint(bp)
    return app


def close_app(app: Flask) -> None:
    """Close the app's SyncDatabase."""
    app.extensions.pop("writebus").close()


def get_db() -> SyncDatabase:
    """The app's SyncDatabase."""
    db: SyncDatabase = current_app.extensions["writebus"]
    return db


def page(title: str, body: str) -> str:
    """A small HTML page."""
    return f"<!doctype html><title>{escape(title)}</title>{body}"


@bp.get("/")
def index() -> str:
    """The latest notes and a form to add one."""
    rows = get_db().fetch("SELECT id, body FROM notes ORDER BY id DESC LIMIT 20")
    items = "".join(f'<li><a href="/notes/{i}">{escape(b)}</a></li>' for i, b in rows)
    form = '<form method="post" action="/notes"><input name="body"><button>Add</button></form>'
    return page("notes", f"<h1>Notes</h1>{form}<ul>{items}</ul>")


@bp.post("/notes")
def create_note() -> Response:
    """Create a note, then send the browser to it."""
    body = request.form.get("body", "")
    res = get_db().execute("INSERT INTO notes(body) VALUES (%s) RETURNING id", [body])
    return redirect(f"/notes/{res.rows[0][0]}", code=303)


@bp.get("/notes/<int:note_id>")
def show_note(note_id: int) -> str:
    """One note, read from the local database."""
    row: Any = get_db().fetchrow("SELECT body, created_at FROM notes WHERE id = %s", [note_id])
    if row is None:
        abort(404)
    body, created = row
    return page(f"note {note_id}", f'<p class="note">{escape(body)}</p><p>{created:%c}</p>')
