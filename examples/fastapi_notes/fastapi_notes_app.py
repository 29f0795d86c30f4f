"""A notes app on FastAPI and writebus (async ``Database``).

``POST /notes`` creates a note through the bus and answers 303 to ``/notes/<id>``, which reads
it from the local replica. The write returns only once that replica has replayed it, so the
redirected ``GET`` shows the note even in a region far from the primary.

Run it with ``uvicorn --factory fastapi_notes_app:create_app`` and the environment of its
region (``PRIMARY_REGION``, ``FLY_REGION``, ``NATS_URL``, ``DATABASE_URL``; see the README).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import escape
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from writebus import Database, Settings

SCHEMA = """CREATE TABLE IF NOT EXISTS notes (
    id bigserial PRIMARY KEY,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)"""

router = APIRouter()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; ``settings`` default to the environment's, read at startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Database(settings or Settings.from_env()) as db:
            await db.execute(SCHEMA)  # on the primary, through the bus from other regions
            app.state.db = db
            yield

    app = FastAPI(title="notes", lifespan=lifespan)
    # Middleware goes here, one line each: app.add_middleware(...)
    app.include_router(router)
    return app


def get_db(request: Request) -> Database:
    """The app's Database (a dependency, so a middleware or a test can swap it)."""
    db: Database = request.app.state.db
    return db


DB = Annotated[Database, Depends(get_db)]


def page(title: str, body: str) -> HTMLResponse:
    """A small HTML page."""
    return HTMLResponse(f"<!doctype html><title>{escape(title)}</title>{body}")


@router.get("/")
async def index(db: DB) -> HTMLResponse:
    """The latest notes and a form to add one."""
    rows = await db.fetch("SELECT id, body FROM notes ORDER BY id DESC LIMIT 20")
    items = "".join(f'<li><a href="/notes/{i}">{escape(b)}</a></li>' for i, b in rows)
    form = '<form method="post" action="/notes"><input name="body"><button>Add</button></form>'
    return page("notes", f"<h1>Notes</h1>{form}<ul>{items}</ul>")


@router.post("/notes")
async def create_note(db: DB, body: Annotated[str, Form()]) -> RedirectResponse:
    """Create a note, then send the browser to it."""
    res = await db.execute("INSERT INTO notes(body) VALUES (%s) RETURNING id", [body])
    return RedirectResponse(f"/notes/{res.rows[0][0]}", status_code=303)


@router.get("/notes/{note_id}")
async def show_note(db: DB, note_id: int) -> HTMLResponse:
    """One note, read from the local database."""
    row: Any = await db.fetchrow("SELECT body, created_at FROM notes WHERE id = %s", [note_id])
    if row is None:
        raise HTTPException(status_code=404, detail="no such note")
    body, created = row
    return page(f"note {note_id}", f'<p class="note">{escape(body)}</p><p>{created:%c}</p>')
