"""Passwords in URLs (an Optuna storage, an MLflow tracking URI), and secrets in their query (`?token=...`), reach
no file the harness writes and no line it prints. SQLAlchemy parses the URL (it reads every
`scheme://user:password@host...` form, database or not), so these helpers never split a URL by hand for its
password; everything that writes or prints a URL goes through them.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus

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


# Query parameters whose value is a secret, by the words of their name ("api_key", "access_token",
# "X-Amz-Signature", "sig" of an Azure SAS URL, "password" of a libpq URL).
SECRET_WORDS = frozenset(
    "password passwd pwd pass token secret key apikey accesskey secretkey authtoken accesstoken signature sig auth "
    "credential credentials".split()
)
MIN_BARE_SECRET = 4
# A query parameter as it stands in the text: after "?", "&" or ";", up to the next "&", "#", space or quote.
QUERY_PARAMETER = re.compile(r"(?<=[?&;])([A-Za-z0-9_.~%-]+)=([^&#\s'\"]*)")


def is_secret_name(name: str) -> bool:
    return any(word in SECRET_WORDS for word in re.split(r"[^a-z0-9]+", unquote_plus(name).lower()))


def query_secrets(value: Any) -> list[str]:
    """The values of a URL's secret query parameters (`...?password=S&token=T`), as they stand in it."""
    if not isinstance(value, str) or "://" not in value or "?" not in value:
        return []
    query = value.split("?", 1)[1]
    return [
        found.group(2)
        for found in QUERY_PARAMETER.finditer("?" + query)
        if is_secret_name(found.group(1)) and found.group(2)
    ]


def _masked_query(text: str) -> str:
    """Hand-written: no library masks query parameters (SQLAlchemy hides a URL's password only), and a message
    quotes the URL inside other text, where no URL parser can find where it ends."""

    def mask(found: re.Match) -> str:
        return f"{found.group(1)}={MASK}" if is_secret_name(found.group(1)) and found.group(2) else found.group(0)

    return QUERY_PARAMETER.sub(mask, text) if "://" in text else text


def masked(value: Any) -> Any:
    """A URL with its password, and its secret query parameters, shown as ***; anything else (a URL without
    either included) as it is."""
    url = _url(value)
    if url is not None and url.password:
        value = url.render_as_string(hide_password=True)
    return _masked_query(value) if isinstance(value, str) else value


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
        # A query secret of a few characters ("1") would mask every "1" of the message: those go by their
        # `name=` only (_masked_query).
        query = [secret for secret in query_secrets(value) if len(unquote_plus(secret)) >= MIN_BARE_SECRET]
        secrets = [password_of(value) or "", *query, *(unquote_plus(secret) for secret in query)]
        if not any(secrets):
            continue
        text = text.replace(value, masked(value))
        forms = {form for secret in secrets if secret for form in (secret, quote(secret, safe=""), quote_plus(secret))}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, MASK)
    return _masked_query(text)


def masked_override(item: str) -> str:
    """A command-line override `key=value` with a password in its value masked (quotes around the value too)."""
    key, sep, value = item.partition("=")
    bare = value.strip("'\"")
    if not sep or masked(bare) == bare:
        return item
    return f"{key}={masked(bare)}"


def masked_values(node: Any) -> Any:
    """A plain container (dicts, lists) with every URL's password masked."""
    if isinstance(node, dict):
        return {key: masked_values(value) for key, value in node.items()}
    if isinstance(node, list):
        return [masked_values(value) for value in node]
    return masked(node)
