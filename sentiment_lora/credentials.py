"""Passwords in URLs (an Optuna storage, an MLflow tracking URI) reach no file the harness writes and no line it
prints. SQLAlchemy parses the URL (it reads every `scheme://user:password@host...` form, database or not), so
these helpers never split a URL by hand; everything that writes or prints a URL goes through them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"  # what SQLAlchemy's render_as_string(hide_password=True) writes in place of a password


def _url(value: Any):
    """The SQLAlchemy URL of `value`, or None when it is not one."""
    if not isinstance(value, str) or "://" not in value:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(value)
    except (ArgumentError, ValueError, TypeError):
        return None


def password_of(value: Any) -> str | None:
    """The password in a URL, or None (not a URL, or one without a password)."""
    url = _url(value)
    return url.password if url is not None and url.password else None


def masked(value: Any) -> Any:
    """A URL with its password shown as ***; anything else (a URL without a password included) as it is."""
    url = _url(value)
    if url is None or not url.password:
        return value
    return url.render_as_string(hide_password=True)


def without_password(value: str) -> str:
    """The URL with no password at all: what a client that finds the password elsewhere (PGPASSWORD) connects to."""
    url = _url(value)
    if url is None or not url.password:
        return value
    from sqlalchemy.engine import URL

    # URL.set(password=None) keeps the password (None means "unchanged" there): build the URL without one.
    bare = URL.create(url.drivername, url.username, None, url.host, url.port, url.database, url.query)
    return bare.render_as_string(hide_password=False)


def redacted(text: str, *urls: Any) -> str:
    """`text` (a library's error message, say) with the password of each URL replaced by ***, however the message
    quotes it: the URL itself, the bare password, or its percent-encoded forms."""
    for value in urls:
        password = password_of(value)
        if not password:
            continue
        text = text.replace(value, masked(value))
        for form in sorted({password, quote(password, safe=""), quote_plus(password)}, key=len, reverse=True):
            text = text.replace(form, MASK)
    return text


def masked_override(item: str) -> str:
    """A command-line override `key=value` with a password in its value masked (quotes around the value too)."""
    key, sep, value = item.partition("=")
    bare = value.strip("'\"")
    if not sep or password_of(bare) is None:
        return item
    return f"{key}={masked(bare)}"


def masked_values(node: Any) -> Any:
    """A plain container (dicts, lists) with every URL's password masked."""
    if isinstance(node, dict):
        return {key: masked_values(value) for key, value in node.items()}
    if isinstance(node, list):
        return [masked_values(value) for value in node]
    return masked(node)
