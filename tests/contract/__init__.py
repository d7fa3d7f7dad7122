"""The store contract: the same tests for every adapter of the store port (SQLite, PostgreSQL)."""
