"""Protobuf messages built byte by byte from their descriptors, valid and hostile.

Python's protobuf refuses to build a message with invalid UTF-8 in a string field, an unknown
field or a wrong wire type, which are exactly what a hostile client sends; so messages are encoded
here at the wire level (tags, varints, length-delimited fields) and sent as raw bytes.

Every choice goes through a `Chooser`, so one generator serves both hypothesis (which shrinks a
failing input) and a seeded `random.Random` (the reliability benchmark).
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor

T = TypeVar("T")

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
MAX_FIELD_NUMBER = (1 << 29) - 1
# gRPC's default receive limit; our servers accept up to 32 MiB, so "huge" goes past both.
GRPC_DEFAULT_LIMIT = 4 * 1024 * 1024
MAX_DEPTH = 6
# A huge repeated field stops growing here: past the servers' 32 MiB limit, not the test's memory.
MAX_REPEATED_BYTES = 40 * 1024 * 1024

INVALID_UTF8 = (b"\xff", b"ok\x80", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf")
ODD_TEXT = ("", " ", "\x00", "名前🙂", "\u202eevil", "../../etc/passwd", "%s%n{0}", "' OR 1=1")
EDGE_INTS = (0, 1, -1, 2, 127, 128, 2**31 - 1, -(2**31), 2**32 - 1, 2**32, 2**63 - 1, -(2**63))
EDGE_FLOATS = (
    0.0,
    -0.0,
    0.5,
    1.0,
    -1.0,
    math.nan,
    math.inf,
    -math.inf,
    1e-45,
    5e-324,
    3.4e38,
    1e308,
)


class Chooser(Protocol):
    """Where every random choice comes from."""

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high]."""
        ...


@dataclass
class RandomChooser:
    """Choices from a seeded generator: the same seed, the same inputs."""

    rng: random.Random

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)


def pick(chooser: Chooser, options: Sequence[T]) -> T:
    return options[chooser.integer(0, len(options) - 1)]


def chance(chooser: Chooser, percent: int) -> bool:
    return chooser.integer(0, 99) < percent


# A field's valid value, drawn by a hint: a str, bytes, int, float, bool, or nested field hints.
Hint = Callable[[Chooser], object]


@dataclass(frozen=True)
class Shape:
    """How hostile the generated messages are, in percent."""

    hostile: int = 50  # a hinted field gets a hostile value instead of its hint
    present: int = 60  # an unhinted field is set at all
    mutate: int = 20  # the whole message is mutated (unknown field, truncation...)
    huge: int = 3  # a string or repeated field is beyond gRPC's 4 MiB default
    hints: Mapping[str, Hint] = field(default_factory=dict)


# Encoding --------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """`value` as a varint; negative numbers as 64-bit two's complement (ten bytes)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, LENGTH) + varint(len(payload)) + payload


def _zigzag(value: int) -> int:
    return ((value << 1) ^ (value >> 63)) & ((1 << 64) - 1)


_VARINT_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_BOOL,
    FieldDescriptor.TYPE_ENUM,
}
_SINT_TYPES = {FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64}
_FIXED32_TYPES = {
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_FLOAT,
}
_FIXED64_TYPES = {
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_DOUBLE,
}


def scalar_payload(fd: FieldDescriptor, value: object) -> tuple[int, bytes]:
    """(wire type, encoded value without its tag) of a scalar field."""
    if fd.type in _VARINT_TYPES or fd.type in _SINT_TYPES:
        number = int(value)  # type: ignore[call-overload]
        return VARINT, varint(_zigzag(number) if fd.type in _SINT_TYPES else number)
    if fd.type in _FIXED32_TYPES:
        if fd.type == FieldDescriptor.TYPE_FLOAT:
            return FIXED32, _float32(float(value))  # type: ignore[arg-type]
        return FIXED32, struct.pack("<I", int(value) & 0xFFFFFFFF)  # type: ignore[call-overload]
    if fd.type == FieldDescriptor.TYPE_DOUBLE:
        return FIXED64, struct.pack("<d", float(value))  # type: ignore[arg-type]
    return FIXED64, struct.pack("<Q", int(value) & ((1 << 64) - 1))  # type: ignore[call-overload]


def _float32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:  # beyond float32: what a client would send is infinity
        return struct.pack("<f", math.copysign(math.inf, value))


# Values ----------------------------------------------------------------------------------------


def hostile_text(chooser: Chooser, shape: Shape) -> bytes:
    """A string field's bytes: empty, odd, long, beyond 4 MiB, or invalid UTF-8."""
    kind = chooser.integer(0, 99)
    if kind < shape.huge:
        return b"y" * (GRPC_DEFAULT_LIMIT + chooser.integer(1, 1024 * 1024))
    if kind < 25:
        return pick(chooser, INVALID_UTF8) * chooser.integer(1, 3)
    if kind < 45:
        return b"x" * pick(chooser, (1_000, 70_000, 250_000, 1_100_000))
    return pick(chooser, ODD_TEXT).encode() * chooser.integer(1, 4)


def hostile_number(chooser: Chooser, fd: FieldDescriptor) -> object:
    if fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return pick(chooser, EDGE_FLOATS)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        assert fd.enum_type is not None
        known = [v.number for v in fd.enum_type.values]
        return pick(chooser, (*known, -1, 99, 2**31 - 1, len(known)))
    return pick(chooser, EDGE_INTS)


def message_type(fd: FieldDescriptor) -> Descriptor:
    """The message type of a message field."""
    assert fd.message_type is not None, fd.full_name
    return fd.message_type


def _encode_value(
    fd: FieldDescriptor, value: object, chooser: Chooser, shape: Shape, depth: int
) -> bytes:
    """One occurrence of `fd` (tag included) holding `value`."""
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        payload = (
            value
            if isinstance(value, bytes)
            else message(message_type(fd), chooser, shape, depth + 1)
        )
        return length_delimited(fd.number, payload)
    if fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        raw = value if isinstance(value, bytes) else str(value).encode()
        return length_delimited(fd.number, raw)
    wire_type, payload = scalar_payload(fd, value)
    return tag(fd.number, wire_type) + payload


def _value(fd: FieldDescriptor, chooser: Chooser, shape: Shape, depth: int) -> object:
    hint = None if fd.is_repeated else shape.hints.get(fd.full_name)  # those hint whole lists
    if hint is not None and not chance(chooser, shape.hostile):
        return hint(chooser)
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return message(message_type(fd), chooser, shape, depth + 1)
    if fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return hostile_text(chooser, shape)
    return hostile_number(chooser, fd)


def _repeated(fd: FieldDescriptor, chooser: Chooser, shape: Shape, depth: int) -> bytes:
    hint = shape.hints.get(fd.full_name)
    if hint is not None and not chance(chooser, shape.hostile):
        values = hint(chooser)
        assert isinstance(values, list | tuple)
        return b"".join(_encode_value(fd, v, chooser, shape, depth) for v in values)
    count = pick(chooser, (0, 1, 2, 3))
    if chance(chooser, shape.huge * 3):
        # One value many times: cheap to build, as costly to receive as distinct ones.
        count = pick(chooser, (2_000, 50_000, 300_000))
    if count == 0:
        return b""
    if count > 3:
        one = _encode_value(fd, _value(fd, chooser, shape, depth), chooser, shape, depth)
        return one * min(count, max(MAX_REPEATED_BYTES // max(len(one), 1), 1))
    values = [_value(fd, chooser, shape, depth) for _ in range(count)]
    packable = fd.type not in (
        FieldDescriptor.TYPE_MESSAGE,
        FieldDescriptor.TYPE_STRING,
        FieldDescriptor.TYPE_BYTES,
    )
    if packable and chance(chooser, 50):
        packed = b"".join(scalar_payload(fd, v)[1] for v in values)
        return length_delimited(fd.number, packed)
    return b"".join(_encode_value(fd, v, chooser, shape, depth) for v in values)


def message(descriptor: Descriptor, chooser: Chooser, shape: Shape, depth: int = 0) -> bytes:
    """An encoded `descriptor` message, maybe mutated (see `mutate`)."""
    if depth > MAX_DEPTH:
        return b""
    parts: list[bytes] = []
    for fd in descriptor.fields:
        hinted = fd.full_name in shape.hints
        if not hinted and not chance(chooser, shape.present):
            continue
        if fd.is_repeated:
            parts.append(_repeated(fd, chooser, shape, depth))
        else:
            parts.append(
                _encode_value(fd, _value(fd, chooser, shape, depth), chooser, shape, depth)
            )
    encoded = b"".join(parts)
    return mutate(encoded, descriptor, chooser) if chance(chooser, shape.mutate) else encoded


def mutate(encoded: bytes, descriptor: Descriptor, chooser: Chooser) -> bytes:
    """Break an encoded message the ways a hostile or buggy client would."""
    numbers = [fd.number for fd in descriptor.fields] or [1]
    kind = chooser.integer(0, 6)
    if kind == 0:  # an unknown field, of any wire type
        number = pick(chooser, (max(numbers) + 1, 999, MAX_FIELD_NUMBER))
        return encoded + pick(
            chooser,
            (
                tag(number, VARINT) + varint(-1),
                tag(number, FIXED64) + b"\x00" * 8,
                length_delimited(number, b"\xff" * 16),
                tag(number, FIXED32) + b"\x01" * 4,
            ),
        )
    if kind == 1:  # a known field number with the wrong wire type
        number = pick(chooser, numbers)
        return (
            encoded + tag(number, pick(chooser, (VARINT, FIXED64, LENGTH, FIXED32))) + b"\x05" * 8
        )
    if kind == 2 and encoded:  # cut short
        return encoded[: chooser.integer(0, len(encoded) - 1)]
    if kind == 3:  # groups nested far beyond any parser's recursion limit
        depth = pick(chooser, (50, 200, 5_000))
        return encoded + tag(999, START_GROUP) * depth + tag(999, END_GROUP) * depth
    if kind == 4:  # field number 0 and a length running past the end
        return encoded + pick(chooser, (b"\x00\x01", b"\x0a\xff\xff\xff\x0f"))
    if kind == 5:  # the same fields twice: a valid merge
        return encoded + encoded
    return bytes(chooser.integer(0, 255) for _ in range(chooser.integer(1, 64)))
