"""The OpenRouter-compatible HTTP API: app factory, endpoints, SSE, errors, auth, usage, metrics."""
