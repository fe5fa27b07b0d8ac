"""The Central Node side: HTTP with mutual TLS, the Events API client, its pages and the splitter.

Owns every byte that crosses the network and turns outside failures (requests, ssl, OSError) into
the few exceptions of `errors`. It must never write to stdout, touch the state file, or import the
delivery, the runner or a command.
"""
