"""The streaming UTF-8 printer of `hnet generate`."""

from hnet.generation import Utf8Stream


def feed_bytewise(data: bytes) -> list[str]:
    stream = Utf8Stream()
    return [stream.feed(data[i:i + 1]) for i in range(len(data))] + [stream.flush()]


def test_multibyte_characters_split_across_steps_print_once_complete():
    assert feed_bytewise("é東🙂a".encode()) == ["", "é", "", "", "東", "", "", "", "🙂", "a", ""]


def test_invalid_bytes_are_escaped_and_nothing_is_lost():
    # 0xff is never UTF-8; e6 9d starts a 3-byte character that 'b' breaks off; a lone e6 at the end.
    out = "".join(feed_bytewise(b"x\xffa\xe6\x9db\xe6"))
    assert out == "x\\xffa\\xe6\\x9db\\xe6"
    out.encode("utf-8")  # valid text


def test_chunks_of_several_bytes():
    stream = Utf8Stream()
    data = "naïve 東京".encode()
    assert stream.feed(data[:3]) + stream.feed(data[3:8]) + stream.feed(data[8:]) + stream.flush() == "naïve 東京"


def test_a_backslash_is_escaped_so_escapes_are_unambiguous():
    assert "".join(feed_bytewise(b"\\xff")) == "\\\\xff"  # the four characters \xff
    assert "".join(feed_bytewise(b"\xff")) == "\\xff"  # the one byte 0xff
    assert "".join(feed_bytewise(b"a\x1b[2Jb\n\tc\x00")) == "a\\x1b[2Jb\n\tc\\x00"  # no terminal control
