"""Delivery: the stdout writer, the policies that decide when a line is taken (flush, drain, fsync,
acknowledgement), and the one recorder that persists the delivery point through the state store.

It must never speak HTTP, import the source, the runner or a command, or write anything but whole
event lines to stdout.
"""
