"""A local stand-in for a Central Node's Events API (mutual TLS, approval, subscriptions, faults).

The product never imports this package at run time (except ``kata-events demo``).
"""

from kata_events.emulator.faults import Fault, FaultSpecError
from kata_events.emulator.filters import FilterSyntaxError, compile_filter
from kata_events.emulator.server import Emulator

__all__ = ["Emulator", "Fault", "FaultSpecError", "FilterSyntaxError", "compile_filter"]
