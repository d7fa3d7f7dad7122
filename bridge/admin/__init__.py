"""The admin HTTP server: health, metrics and the operator's API."""
