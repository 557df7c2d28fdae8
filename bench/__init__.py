"""Benchmarks: genjobs beside raw nats-py and a LibreChat-style Redis store (``just bench``)."""
