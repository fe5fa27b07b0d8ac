"""Allow ``python -m kata_events``."""

from kata_events.cli import console_main

console_main()
