"""Thinkgate's usage API on the wire: usage totals and records (JSON or CSV), a key's balance, and
the token count (its request is a chat request: app/protocols/chat/types.py)."""
