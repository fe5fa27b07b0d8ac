"""Loaded at start-up by the interpreter of a test's `kata-events run` (PYTHONPATH): counts the calls
into requests, jsonschema and python-json-logger that the process makes, and writes the counts to
$KATA_TEST_STACK_FILE when it exits (`os._exit`, as the console script ends). It imports none of
them itself: a module that the run does not load stays unloaded and counts nothing.
"""

import importlib.abc
import importlib.util
import json
import os
import sys

COUNTS = {"requests": 0, "jsonschema": 0, "pythonjsonlogger": 0}


def _counting(owner, name, key):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        COUNTS[key] += 1
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def _patch(module):
    name = module.__name__
    if name == "requests.sessions":
        _counting(module.Session, "send", "requests")
    elif name == "jsonschema.validators":
        for cls in (module.Draft202012Validator,):
            _counting(cls, "iter_errors", "jsonschema")
        create = module.create

        def counted_create(*args, **kwargs):
            cls = create(*args, **kwargs)
            _counting(cls, "iter_errors", "jsonschema")
            return cls

        module.create = counted_create
    elif name == "pythonjsonlogger.core":
        _counting(module.BaseJsonFormatter, "format", "pythonjsonlogger")


class _Finder(importlib.abc.MetaPathFinder):
    WATCHED = ("requests.sessions", "jsonschema.validators", "pythonjsonlogger.core")

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.WATCHED:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


sys.meta_path.insert(0, _Finder())
_exit = os._exit


def _dump_and_exit(code):
    loaded = {key: key in sys.modules for key in COUNTS}
    with open(os.environ["KATA_TEST_STACK_FILE"], "w") as out:
        json.dump({"loaded": loaded, "calls": COUNTS}, out)
    _exit(code)


os._exit = _dump_and_exit
