"""The Flask notes app in the replica region ``lax`` of the embedded two-region stack.

Uses the writebus pytest plugin's ``writebus_stack`` fixture and Flask's test client.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from html import escape

import pytest
from flask import Flask
from flask_notes_app import close_app, create_app

from writebus import SyncDatabase
from writebus.testing import WritebusStack


@pytest.fixture
def app(writebus_stack: WritebusStack) -> Iterator[Flask]:
    """The app in ``lax``; its SyncDatabase is closed afterwards."""
    flask_app = create_app(writebus_stack.settings("lax"))
    try:
        yield flask_app
    finally:
        close_app(flask_app)


def test_each_created_note_shows_on_the_page_its_redirect_opens(
    app: Flask, writebus_stack: WritebusStack
) -> None:
    """50 rounds of POST /notes -> 303 -> GET /notes/<id>, reads on the lax replica: every
    page shows its note (0 stale pages)."""
    db: SyncDatabase = app.extensions["writebus"]
    assert db.settings.region == "lax" and not db.settings.is_primary
    assert db.settings.database_url == writebus_stack.replica_url
    client = app.test_client()
    stale = []
    for i in range(50):
        body = f"note {i} <{uuid.uuid4().hex[:8]}>"
        created = client.post("/notes", data={"body": body})
        assert created.status_code == 303, created.text
        shown = client.get(created.headers["Location"])
        if shown.status_code != 200 or f'<p class="note">{escape(body)}</p>' not in shown.text:
            stale.append((created.headers["Location"], shown.status_code))
    assert stale == []


def test_the_index_lists_the_newest_note_and_unknown_notes_are_404(app: Flask) -> None:
    """The index shows a note right after it was created; a missing id is a 404."""
    client = app.test_client()
    body = f"indexed {uuid.uuid4().hex[:8]}"
    created = client.post("/notes", data={"body": body}, follow_redirects=True)
    assert created.status_code == 200 and escape(body) in created.text
    assert escape(body) in client.get("/").text
    assert client.get("/notes/999999999").status_code == 404
