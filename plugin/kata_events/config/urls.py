"""Central Node addresses in a configuration: checked and normalized, and what is derived from them.

A base address or a full events URL becomes ``https://host[:port]`` (and the external system id it
may name); the run's default name is its host; a proxy URL loses its credentials for a log line; a
pinned certificate's fingerprint is read in any usual spelling and shown the way dialogs show it.
Never touches the network nor loads cryptography.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple
from urllib.parse import urlsplit

from kata_events import options as opts

#: The path of the Events API under a Central Node's base address, with an id and /events or not.
_EVENTS_PATH = re.compile(r"^/kata/events_api/v1(?:/(?P<id>[^/]+))?(?:/events)?/*$", re.IGNORECASE)


def node_name_of(url: str) -> str:
    """The default ``name`` of a run: the host of its (first) url, lowercase, without the port.

    ``https://CN.example.local:8443`` → ``cn.example.local``; ``https://10.0.0.5`` → ``10.0.0.5``;
    an IPv6 literal ``https://[fd00::5]`` → ``fd00--5`` (a name is a label and a file name: no
    colons). Anything that does not parse gives ``kata-events``.
    """
    try:
        host = (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:
        host = ""
    name = re.sub(r"[^a-z0-9._-]", "-", host).strip("-._")[:63]
    return name or "kata-events"


def without_credentials(url: str) -> str:
    """``http://user:password@host:port`` → ``http://host:port``: a URL fit for a log line."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def normalize_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint in any usual spelling (colons, spaces, either case) as lowercase hex;
    ``ValueError`` when it is not 32 bytes of hex."""
    clean = re.sub(r"[\s:]", "", text).lower()
    if clean.startswith("sha256"):
        clean = clean[len("sha256") :].lstrip("=/")
    if not re.fullmatch(r"[0-9a-f]{64}", clean):
        raise ValueError(f"not a SHA-256 fingerprint (64 hex digits, colons optional): {text!r}")
    return clean


def format_fingerprint(hex_fingerprint: str) -> str:
    """``"abcd..."`` (colons optional) as ``"AB:CD:..."``, the way certificate dialogs show it."""
    clean = normalize_fingerprint(hex_fingerprint)
    return ":".join(clean[i : i + 2] for i in range(0, len(clean), 2)).upper()


#: A DNS name (internationalised ones too) or an IPv4 address; IPv6 literals come in brackets.
_HOST = re.compile(r"[\w-]+(\.[\w-]+)*\.?")


def normalize_url(url: str) -> Tuple[str, Optional[str]]:
    """A Central Node address → (``https://host[:port]``, external system id found in it or None).

    Accepts a base address (``https://cn.example.local``, ``https://10.0.0.5:443``) or a full
    events URL copied from the documentation; the scheme is required. Raises ValueError with a
    reason otherwise.
    """
    text = url.strip()
    if "://" not in text:
        raise ValueError(f"the scheme is missing: write https://{text} (https:// is required)")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "http":
        raise ValueError("http:// is refused: the Events API needs mutual TLS, use https://")
    if scheme != "https":
        raise ValueError(f"the scheme must be https://, not {parts.scheme}://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("remove the user name/password: the Central Node authenticates by certificate")
    if parts.query or parts.fragment:
        raise ValueError("remove the ?query/#fragment: give max_events and filter as options")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("the host name is missing")
    if ":" not in host and not _HOST.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or IP address (letters, digits, '-' and '.' only)")
    found_id = None
    if parts.path.strip("/"):
        match = _EVENTS_PATH.match(parts.path)
        if match is None:
            raise ValueError(
                f"unexpected path {parts.path!r}: give the base address (https://host[:port]) or the "
                "events URL /kata/events_api/v1/<external_system_id>/events"
            )
        found_id = match.group("id")
        if found_id is not None and not re.match(opts.UUID_PATTERN, found_id):
            raise ValueError(f"{found_id!r} in the path is not a UUID")
    if ":" in host:
        host = f"[{host}]"
    # The default port is dropped so that equal addresses compare equal (the state file records it).
    base = f"https://{host}" if port in (None, 443) else f"https://{host}:{port}"
    return base, found_id
