"""Test-only seam: make chosen OS calls fail with a chosen errno inside a real kata-events process.

Loaded by Python at start-up when this directory is on PYTHONPATH (see `disk_helpers.OsFaults`), and
only then: the product has no such hook. It wraps ``os.open``, ``os.write``, ``os.fsync`` and
``os.replace``; a wrapped call whose file lies under a given path fails, while the JSON control file
named by ``KATA_TEST_OS_FAULTS`` says so::

    {"errno": "EIO", "calls": ["fsync"], "under": "/tmp/x/state"}

With ``"delay": seconds`` instead of ``errno`` the call succeeds after that long (a slow disk).

An absent or empty control file means no fault, so a test switches faults on and off mid-run by
writing and removing it. File descriptors are resolved through /proc/self/fd.
"""

import errno as _errno
import json as _json
import os as _os
import time as _time

_CONTROL = _os.environ.get("KATA_TEST_OS_FAULTS", "")
_real = {name: getattr(_os, name) for name in ("open", "write", "fsync", "replace")}
_cache = {"key": None, "rule": None}


def _rule():
    try:
        st = _os.stat(_CONTROL)
    except OSError:
        return None
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    if _cache["key"] != key:
        try:
            with open(_CONTROL, encoding="utf-8") as fh:
                text = fh.read()
            _cache["rule"] = _json.loads(text) if text.strip() else None
        except (OSError, ValueError):
            return None
        _cache["key"] = key
    return _cache["rule"]


def _path_of(target):
    if isinstance(target, int):
        try:
            return _os.readlink(f"/proc/self/fd/{target}")
        except OSError:
            return ""
    return _os.fsdecode(_os.fspath(target))


def _check(call, target):
    rule = _rule()
    if not rule or call not in rule.get("calls", ()):
        return
    if _path_of(target).startswith(rule["under"]):
        if "delay" in rule:
            _time.sleep(rule["delay"])
            return
        code = getattr(_errno, rule["errno"])
        raise OSError(code, _os.strerror(code))


class _Wrapped:
    """A callable, not a function: stored as a class attribute (Python 3.9's pathlib keeps
    ``open = os.open`` on its accessor class) it must not become a bound method."""

    def __init__(self, call):
        self.call = call
        self.real = _real[call]
        self.__name__ = call

    def __call__(self, *args, **kwargs):
        _check(self.call, args[0])
        return self.real(*args, **kwargs)


if _CONTROL:
    for _name in _real:
        setattr(_os, _name, _Wrapped(_name))
