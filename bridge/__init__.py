"""munsit-bridge: signed, durable webhooks for the Munsit denoise API."""

from __future__ import annotations

__version__ = "0.1.0"
