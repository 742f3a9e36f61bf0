"""Thinkgate's admin API on the wire: API keys and their limits (the same operations as
`thinkgate keys ...`)."""
