"""Keeping a connection string's password out of the messages made from it.

libpq quotes what it cannot parse -- ``invalid percent-encoded token: "50%secret"`` -- and a
password with an unescaped ``@`` turns its tail into the host name (``sst@db``), which then
appears in every message about the host. :func:`scrub` takes each form of the password out of a
text; :func:`secrets_of` finds those forms, also in a string libpq refuses.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

#: What a password is replaced with.
MASK = "***"
#: Shorter forms are taken out only where they stand alone (``pa`` of ``password`` stays).
_SHORT = 4
# Up to the last "@" before the query: a password with an unescaped "/" or "@" is still in it
# (libpq then reads it as host, port and path, and quotes it in its messages).
_URL_USERINFO = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://([^?#]*)@")
_URL_QUERY = re.compile(r"[?&]password=([^&#]*)")
# An unquoted value runs to the next "key=" (a space in it is malformed, and libpq quotes the
# rest of it in its message).
_KEYWORD = re.compile(
    r"\bpassword\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+(?:\s+(?![A-Za-z_]\w*\s*=)\S+)*))"
)


def secrets_of(conninfo: str) -> list[str]:
    """Every form of ``conninfo``'s password that a message could quote, longest first: as
    written, percent-decoded, and each part around an unescaped ``@``."""
    found: set[str] = set()
    try:
        password = conninfo_to_dict(conninfo).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        found.add(str(password))
    url = _URL_USERINFO.match(conninfo)
    if url and ":" in url.group(1):
        written = url.group(1).split(":", 1)[1]
        found.add(written)
        found.update(re.split(r"[@/]", written))
    found.update(m.group(1) for m in _URL_QUERY.finditer(conninfo))
    for m in _KEYWORD.finditer(conninfo):
        found.add(m.group(1) or m.group(2))
        if m.group(2):  # unquoted: libpq quotes the word after a space it cannot parse
            found.update(m.group(2).split())
    found |= {unquote(s) for s in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with each of ``secrets`` replaced by :data:`MASK`."""
    for secret in secrets:
        if len(secret) >= _SHORT:
            text = text.replace(secret, MASK)
        else:
            alone = rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])"
            text = re.sub(alone, MASK, text)
    return text


def quotes_a_secret(text: str, secrets: list[str]) -> bool:
    """Whether ``text`` holds any of ``secrets`` (by :func:`scrub`'s rules)."""
    return scrub(text, secrets) != text
