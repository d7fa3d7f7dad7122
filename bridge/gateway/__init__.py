"""The gateway: Munsit's own API, in front of Munsit, with per-job callbacks (CONTRACT §8)."""
