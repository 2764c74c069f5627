"""Print bytes as they come as valid UTF-8 text."""

from __future__ import annotations

import codecs


class Utf8Stream:
    """Bytes in, text out: a multi-byte character comes out once all its bytes are in; bytes that cannot
    be UTF-8 come out escaped (b"\\xff" -> "\\xff"), so the text is always valid and nothing is lost."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        """The end of the stream: an unfinished character comes out escaped."""
        return self._decoder.decode(b"", final=True)
