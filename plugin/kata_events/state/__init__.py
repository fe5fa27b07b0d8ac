"""The state: the continuation token store, its companion progress record, and the safety rules of
their files (atomic replacement, 0600, no links followed, one lock).

It must never log, write to stdout, or import anything above the small shared modules.
"""
