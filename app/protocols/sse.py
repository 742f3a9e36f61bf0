"""Markers the front doors' frame iterators yield besides their frames (read by api/streaming.py)."""

# Continue only once everything before it has been handed to the server (e.g. before settling a
# request: a client that left before the end is then seen as gone).
FLUSH = b""
# The last frame of a stream, sent together with the end of the body (one socket write, not two).
# Recognised by identity: yield this object, not an equal one.
END = b"data: [DONE]\n\n"
