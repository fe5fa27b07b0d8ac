"""What a continuation token may look like before it is saved or sent.

A token is opaque, but it travels in a URL's query string and sits in the state file, and a broken
server or proxy can send anything: a token of megabytes, once saved, would make every later request
fail across restarts. So a token is checked before it is committed (a page whose token fails is
fetched again) and when it is loaded from the state file (one that fails starts a new subscription).

The check is loose about the alphabet (base64, base64url, hex, UUIDs, JWTs, percent-encoding pass);
what fails is what no token holds: whitespace, control characters, non-ASCII, quotes, backslashes,
angle brackets, or a length past `MAX_TOKEN_CHARS`. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Optional

#: Longer than any real token; short enough that the request line stays within common server limits
#: (nginx and Apache refuse request lines over about 8 KiB with 414).
MAX_TOKEN_CHARS = 4096
_FIRST_BAD = re.compile(r"[^!#-&(-;=?-\[\]-_a-~]")  # anything but visible ASCII, or " ' < > \ `


def token_problem(token: object) -> Optional[str]:
    """Why ``token`` is not one a server would send (None when it looks fine); never quotes it whole."""
    if not isinstance(token, str):
        return f"it is a {type(token).__name__}, not a string"
    if not token:
        return "it is empty"
    if len(token) > MAX_TOKEN_CHARS:
        return f"it is {len(token)} characters long (at most {MAX_TOKEN_CHARS} are accepted)"
    bad = _FIRST_BAD.search(token)
    if bad:
        return (
            f"it holds {ascii(bad.group())} at position {bad.start()} (a token holds visible ASCII "
            "only, without quotes, backslashes or angle brackets)"
        )
    return None
