"""The subcommands (`run`, `check`, `status`, `state`, `init`, `demo`): parse, wire and report.

A command decides nothing about delivery or retries; it builds the pieces and hands them to the
runner or reads local files. Nothing outside this package (but the entry point `cli`) imports a
command.
"""
