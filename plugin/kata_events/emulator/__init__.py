"""A local stand-in for a Central Node's Events API (mutual TLS, approval, subscriptions, faults)."""
