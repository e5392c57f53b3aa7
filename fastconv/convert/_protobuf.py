"""A small protobuf reader: the binary wire format and the text format, without generated code.

Converters need only a handful of fields from a few message types (Caffe's NetParameter,
LayerParameter, BlobProto), so a schema-less reader is smaller than a dependency on the
``protobuf`` package plus a compiled ``.proto``: the caller picks fields by number (binary) or
by name (text) and checks them itself.

Binary: ``fields(data, start, end)`` walks one message and yields ``Field`` tuples. A
length-delimited value is returned as a ``(start, end)`` span into the same buffer, so nested
messages and packed arrays are read in place: nothing is ever allocated from a declared length,
and every declared length is checked against the bytes that remain before it is used.

>>> data = bytes([0x08, 0x96, 0x01, 0x12, 0x02, 0x68, 0x69])   # field 1 = 150, field 2 = "hi"
>>> [(f.number, f.value) for f in fields(data)]
[(1, 150), (2, (5, 7))]
>>> string(data, (5, 7))
'hi'

Text: ``parse_text(text)`` returns a ``TextMessage`` tree (field name -> values, in order).

>>> msg = parse_text('layer { name: "conv1" kernel_size: 5 pool: MAX }  # a comment')
>>> layer = msg.get("layer")
>>> layer.get("name"), layer.get("kernel_size"), layer.get("pool")
('conv1', 5, Identifier('MAX'))
"""
import re
from collections import namedtuple

import numpy as np

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
# Nesting of text-format messages, as protobuf's own parsers limit it (the parser recurses).
MAX_DEPTH = 100
_WIRE_NAMES = {VARINT: "varint", FIXED64: "64-bit", LENGTH: "length-delimited", FIXED32: "32-bit"}
_MAX_VARINT_BYTES = 10

# One field of a binary message. ``value``: an int for varints; a (start, end) span of ``data``
# for length-delimited, 32-bit and 64-bit values; ``offset``: where the field's key starts.
Field = namedtuple("Field", "number wire_type value offset")


class ProtobufError(ValueError):
    """Malformed protobuf data; ``offset`` is the byte (binary) or ``line`` the line (text)."""

    def __init__(self, message, offset=None, line=None):
        super().__init__(message)
        self.offset = offset
        self.line = line


# ---------------------------------------------------------------------------------------------
# Binary wire format


def read_varint(data, pos, end):
    """(value, next position) of the base-128 varint at ``pos``; at most 10 bytes."""
    value = shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= end:
            raise ProtobufError(f"truncated varint at byte {pos}", offset=pos)
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + i + 1
        shift += 7
    raise ProtobufError(f"varint longer than {_MAX_VARINT_BYTES} bytes at byte {pos}", offset=pos)


def fields(data, start=0, end=None):
    """Yield the ``Field``s of the message in ``data[start:end]``, in file order."""
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        offset = pos
        key, pos = read_varint(data, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ProtobufError(f"invalid field number 0 at byte {offset}", offset=offset)
        if wire_type == VARINT:
            value, pos = read_varint(data, pos, end)
        elif wire_type in (FIXED32, FIXED64, LENGTH):
            if wire_type == LENGTH:
                size, pos = read_varint(data, pos, end)
            else:
                size = 4 if wire_type == FIXED32 else 8
            # Check before use: a damaged length must not make us read (or allocate) past the end.
            if size > end - pos:
                raise ProtobufError(
                    f"field {number} at byte {offset} declares {size} bytes "
                    f"({_WIRE_NAMES[wire_type]}) but only {end - pos} remain", offset=offset)
            value, pos = (pos, pos + size), pos + size
        else:
            raise ProtobufError(f"field {number} at byte {offset} has unsupported wire type "
                                f"{wire_type} (groups are not used by these files)", offset=offset)
        yield Field(number, wire_type, value, offset)


def expect(field, wire_type, what):
    """``field``'s value, after checking its wire type (one damaged key byte changes it)."""
    if field.wire_type != wire_type:
        raise ProtobufError(f"field {field.number} ({what}) at byte {field.offset}: expected a "
                            f"{_WIRE_NAMES[wire_type]} value, found a "
                            f"{_WIRE_NAMES.get(field.wire_type, '?')} one", offset=field.offset)
    return field.value


def string(data, span):
    """A length-delimited UTF-8 string."""
    try:
        return bytes(data[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtobufError(f"invalid UTF-8 string at byte {span[0]}", offset=span[0]) from None


def signed64(value):
    """An int64 varint (two's complement in 64 bits) as a Python int."""
    return value - (1 << 64) if value >= 1 << 63 else value


def packed_varints(data, span):
    """The values of a packed repeated varint field, as unsigned ints."""
    values, pos = [], span[0]
    while pos < span[1]:
        value, pos = read_varint(data, pos, span[1])
        values.append(value)
    return values


def reals(data, items, dtype):
    """A 1-D array from the occurrences of one repeated float (``"<f4"``) or double (``"<f8"``)
    field: packed (length-delimited) runs and single fixed-width values, in order."""
    width = np.dtype(dtype).itemsize
    parts = []
    single = FIXED32 if width == 4 else FIXED64
    for item in items:
        ok = item.wire_type in (LENGTH, single)
        start, end = item.value if ok else (item.offset, item.offset)
        if not ok or (end - start) % width:
            raise ProtobufError(f"field {item.number} at byte {item.offset}: expected "
                                f"{'floats' if width == 4 else 'doubles'}, found a "
                                f"{_WIRE_NAMES.get(item.wire_type, '?')} value", offset=item.offset)
        # A view of the file's bytes; the caller copies it once, into the layer's float32 weights.
        parts.append(np.frombuffer(data, dtype=dtype, count=(end - start) // width, offset=start))
    if not parts:
        return np.zeros(0, dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


# ---------------------------------------------------------------------------------------------
# Text format


class Identifier(str):
    """An unquoted word in the text format: an enum value (``MAX``), ``true``/``false``,
    ``inf``/``nan``. Distinct from ``str`` so that ``pool: "MAX"`` and ``pool: MAX`` differ."""

    def __repr__(self):
        return f"Identifier({str.__repr__(self)})"


class TextMessage:
    """One message of a text-format file: its fields in file order as (name, value, line)."""

    def __init__(self, line):
        self.line = line
        self.items = []

    def get_all(self, name):
        return [value for key, value, _ in self.items if key == name]

    def get(self, name, default=None):
        """The last value of ``name`` (protobuf keeps the last of a repeated scalar)."""
        values = self.get_all(name)
        return values[-1] if values else default

    def line_of(self, name):
        lines = [line for key, _, line in self.items if key == name]
        return lines[-1] if lines else self.line

    def names(self):
        return list(dict.fromkeys(key for key, _, _ in self.items))

    def __contains__(self, name):
        return any(key == name for key, _, _ in self.items)

    def __repr__(self):
        return f"TextMessage(line {self.line}, {[k for k, _, _ in self.items]})"


_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\f\v]+) | (?P<newline>\n) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?))
  | (?P<word>-?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}<>:;,\[\]])
""", re.VERBOSE)
_CLOSING = {"{": "}", "<": ">"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a",
            "b": "\b", "f": "\f", "v": "\v", "?": "?"}


def _tokens(text):
    """(kind, text, line, column) for every token, then ("end", "", line, column)."""
    line, line_start, pos = 1, 0, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ProtobufError(f"line {line}, column {pos - line_start + 1}: unexpected "
                                f"character {text[pos]!r}", line=line)
        kind = match.lastgroup
        if kind == "newline":
            line, line_start = line + 1, match.end()
        elif kind not in ("space", "comment"):
            yield kind, match.group(), line, pos - line_start + 1
        pos = match.end()
    yield "end", "", line, pos - line_start + 1


def _unquote(token, line):
    body, out, i = token[1:-1], [], 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1:]).group()
            out.append(chr(int(digits, 8)))
            i += 1 + len(digits)
        elif nxt in "xX" and re.match(r"[0-9a-fA-F]", body[i + 2:i + 3]):
            digits = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:]).group()
            out.append(chr(int(digits, 16)))
            i += 2 + len(digits)
        else:
            raise ProtobufError(f"line {line}: unknown escape \\{nxt} in string {token}", line=line)
    return "".join(out)


def _number(token):
    body = token.rstrip("fF") if not token.lower().startswith(("0x", "-0x")) else token
    if re.fullmatch(r"-?0[xX][0-9a-fA-F]+", body):
        return int(body, 16)
    if re.fullmatch(r"-?\d+", body) and not token.endswith(("f", "F")):
        return int(body)
    return float(body)


class _TextParser:
    """Recursive descent over the token stream; every error names line and column."""

    def __init__(self, text):
        self._tokens = _tokens(text)
        self._depth = 0
        self._advance()

    def _advance(self):
        self.kind, self.text, self.line, self.column = next(self._tokens)

    def _fail(self, expected):
        found = "the end of the file" if self.kind == "end" else repr(self.text)
        raise ProtobufError(f"line {self.line}, column {self.column}: expected {expected}, "
                            f"found {found}", line=self.line)

    def message(self, closing, line):
        msg = TextMessage(line)
        while not (self.kind == "punct" and self.text == closing) and not \
                (closing == "" and self.kind == "end"):
            if self.kind != "word" or self.text.startswith("-"):
                self._fail("a field name" + (f" or {closing!r}" if closing else ""))
            name, name_line = self.text, self.line
            self._advance()
            for value in self._field_values():
                msg.items.append((name, value, name_line))
            if self.kind == "punct" and self.text in ";,":
                self._advance()
        if closing:
            self._advance()
        return msg

    def _field_values(self):
        """The value(s) after a field name: ``: scalar``, ``: [a, b]``, ``{...}``, ``: {...}``."""
        colon = self.kind == "punct" and self.text == ":"
        if colon:
            self._advance()
        if self.kind == "punct" and self.text in _CLOSING:
            return [self._submessage()]
        if not colon:
            self._fail("':' or '{' after the field name")
        if self.kind == "punct" and self.text == "[":
            return self._list()
        return [self._scalar()]

    def _submessage(self):
        opening, line = self.text, self.line
        if self._depth == MAX_DEPTH:
            raise ProtobufError(f"line {line}: messages nested more than {MAX_DEPTH} deep", line=line)
        self._advance()
        self._depth += 1
        message = self.message(_CLOSING[opening], line)
        self._depth -= 1
        return message

    def _list(self):
        self._advance()
        values = []
        while not (self.kind == "punct" and self.text == "]"):
            if values:
                if not (self.kind == "punct" and self.text == ","):
                    self._fail("',' or ']'")
                self._advance()
            is_message = self.kind == "punct" and self.text in _CLOSING
            values.append(self._submessage() if is_message else self._scalar())
        self._advance()
        return values

    def _scalar(self):
        if self.kind == "string":
            parts = []
            while self.kind == "string":        # adjacent literals concatenate, as in C
                parts.append(_unquote(self.text, self.line))
                self._advance()
            return "".join(parts)
        if self.kind == "number":
            value = _number(self.text)
        elif self.kind == "word":
            value = Identifier(self.text)
        else:
            self._fail("a value (number, string or identifier)")
        self._advance()
        return value


def parse_text(text):
    """The top-level ``TextMessage`` of a protobuf text-format document."""
    return _TextParser(text).message("", 1)
