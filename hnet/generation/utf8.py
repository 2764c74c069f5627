"""Print bytes as they come as valid, unambiguous UTF-8 text.

Shown as they are: every valid character but a backslash and the control characters. Escaped: a backslash
as `\\\\`, each byte that cannot be UTF-8 and each byte of a control character other than newline and tab
as `\\xNN`. So `\\xff` generated as four characters and the one byte 0xff never look alike, and generated
bytes cannot drive the terminal; `hnet generate --raw` gives the bytes themselves.
"""

from __future__ import annotations

import codecs
import unicodedata


def show(text: str) -> str:
    """Text decoded with errors="surrogateescape" (an invalid byte b is U+DC00+b), for display."""
    return "".join(_show(ch) for ch in text)


def _show(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cs"):
        return ch
    return "".join(f"\\x{b:02x}" for b in ch.encode("utf-8", errors="surrogateescape"))


def show_bytes(data: bytes) -> str:
    return show(data.decode("utf-8", errors="surrogateescape"))


class Utf8Stream:
    """Bytes in, text out: a multi-byte character comes out once all its bytes are in; bytes that cannot
    be UTF-8 come out escaped (`show`), so the text is always valid and nothing is lost."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")

    def feed(self, data: bytes) -> str:
        return show(self._decoder.decode(data))

    def flush(self) -> str:
        """The end of the stream: an unfinished character comes out escaped."""
        return show(self._decoder.decode(b"", final=True))
