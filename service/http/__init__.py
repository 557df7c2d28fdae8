"""The HTTP gateway (issue 13): browsers get genjobs' guarantees over SSE.

``app`` builds the aiohttp application and runs it; ``chat`` has LibreChat's routes (SSE with
resume by sequence), ``health`` the probes and metrics, ``auth`` the JWT check, ``sse`` the
framing, heartbeats and slow-client bound. docs/http.md describes every route and setting.
"""
