"""The operations run over a real store of each backend (the store contract's fixtures)."""

from tests.contract.conftest import database, open_store, store

__all__ = ["database", "open_store", "store"]
