"""Allow ``python -m kata_events``."""

from kata_events.cli import main

raise SystemExit(main())
