"""The HTTP gateway: LibreChat routes and Durable Streams over the NATS adapter."""
