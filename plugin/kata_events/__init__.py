"""kata-events: stream a KATA/KEDR Central Node's Events API to stdout as NDJSON.

The package is layered top-down: ``cli`` parses and wires, ``runner`` loops, ``api`` speaks HTTP,
``stream`` splits response bytes into events, ``delivery`` writes and tracks what was taken,
``state`` persists the continuation token. ``emulator`` is a stand-in Central Node that the product
never imports at run time (except ``demo``).
"""

__version__ = "0.1.0"
