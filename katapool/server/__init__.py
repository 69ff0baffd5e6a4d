"""The daemon (`katapool start`): named pools behind a Unix socket, a WebSocket endpoint,
/healthz and /metrics."""
