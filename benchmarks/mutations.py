"""Seeded mutations of real DICOM files: what a fuzzer feeds the input stage.

Each mutation takes the bytes of a real corpus file and returns damaged bytes, the way files
arrive damaged from modalities, archives and gateways: bit flips, truncation at element
boundaries, wrong lengths and VRs, broken encapsulated fragments and offset tables, absurd image
attributes (pixel and frame bombs), deep sequence nesting, streams spliced from two files.

Used by ``benchmarks/fuzz.py`` (as many as you like) and ``tests/test_fuzz.py`` (a seeded few
hundred). Pure functions of (file, kind, seed): the same seed gives the same bytes.
"""

from __future__ import annotations

import io
import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pydicom

#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
SOME_VRS = [b"SQ", b"UN", b"OB", b"OW", b"US", b"UL", b"DS", b"IS", b"UI", b"CS", b"FD", b"AT", b"XX", b"\x00\x00"]


@dataclass(frozen=True)
class Element:
    """Where one top-level data element sits in the file."""

    tag: int
    start: int  # first byte of the tag
    length_at: int  # first byte of the length field
    length_size: int  # 2 or 4
    vr_at: int | None  # first byte of an explicit VR, None for implicit
    value_at: int
    length: int  # as stored (0xFFFFFFFF: undefined)


@dataclass(frozen=True)
class Layout:
    """A parsed corpus file: its bytes and element positions (data set and file meta)."""

    data: bytes
    elements: tuple[Element, ...]
    implicit: bool
    little: bool
    encapsulated: bool

    @property
    def pixel_data(self) -> Element | None:
        return next((e for e in self.elements if e.tag == 0x7FE00010), None)


def layout(path: Path) -> Layout:
    """Element positions of a real file (pydicom reads them lazily, with file offsets)."""
    data = Path(path).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data), force=True, defer_size=64)
    implicit, little = ds.original_encoding
    implicit = True if implicit is None else implicit
    little = True if little is None else little
    elements = []
    for dataset, is_meta in ((getattr(ds, "file_meta", None) or {}, True), (ds, False)):
        raw = getattr(dataset, "_dict", {})
        for tag in raw:
            el = raw[tag]
            tell = getattr(el, "value_tell", None)
            if tell is None:
                continue
            el_implicit = False if is_meta else implicit
            vr = data[tell - 8:tell - 6] if not el_implicit else None
            if el_implicit:
                start, length_at, size, vr_at = tell - 8, tell - 4, 4, None
            elif vr in LONG_VRS:
                start, length_at, size, vr_at = tell - 12, tell - 4, 4, tell - 8
            else:
                start, length_at, size, vr_at = tell - 8, tell - 2, 2, tell - 4
            elements.append(Element(int(tag), start, length_at, size, vr_at, tell, int(el.length)))
    elements.sort(key=lambda e: e.start)
    pixels = next((e for e in elements if e.tag == 0x7FE00010), None)
    return Layout(data, tuple(elements), implicit, little, bool(pixels and pixels.length == 0xFFFFFFFF))


def boundaries(lay: Layout) -> list[int]:
    """Every offset where an element starts or its value starts: the truncation points."""
    points = {0, 132}
    for e in lay.elements:
        points.update((e.start, e.length_at, e.value_at))
    if lay.pixel_data is not None and lay.encapsulated:
        points.update(o for o, _ in _fragments(lay))
    return sorted(p for p in points if p < len(lay.data))


def _fragments(lay: Layout) -> list[tuple[int, int]]:
    """(item start, item length) of the encapsulated Pixel Data items, offset table first."""
    px = lay.pixel_data
    out, pos, data = [], px.value_at, lay.data
    fmt = "<HHL" if lay.little else ">HHL"
    while pos + 8 <= len(data):
        group, elem, length = struct.unpack_from(fmt, data, pos)
        if (group, elem) != (0xFFFE, 0xE000):
            break
        out.append((pos, length))
        pos += 8 + length
    return out


# ---------------------------------------------------------------------------------------------
# The mutations: (layout, rng, corpus layouts) -> bytes


def bit_flips(lay: Layout, rng: random.Random, others: list[Layout]) -> bytes:
    """1-64 flipped bits; half the time in the header (before pixel data), where they bite."""
    data = bytearray(lay.data)
    px = lay.pixel_data
    header_end = px.value_at if px is not None and rng.random() < 0.5 else len(data)
    for _ in range(rng.randint(1, 64)):
        pos = rng.randrange(min(header_end, len(data)))
        data[pos] ^= 1 << rng.randrange(8)
    return bytes(data)


def truncate_at_boundary(lay: Layout, rng: random.Random, others: list[Layout]) -> bytes:
    return lay.data[: rng.choice(boundaries(lay))]


def truncate_anywhere(lay: Layout, rng: random.Random, others: list[Layout]) -> bytes:
    return lay.data[: rng.randrange(1, len(lay.data))]


def wrong_length(lay: Layout, rng: random.Random, others: list[Layout]) -> bytes:
    el = rng.choice(lay.elements)
    data = bytearray(lay.data)
    big = 0xFFFFFFFF if el.length_size == 4 else 0xFFFF
    value = rng.choice([0, 1, 3, el.length + 1, max(0, el.length - 1), el.length * 2 + 7, big, big - 15,
                        len(data) * 4, rng.randrange(big + 1)]) & big
    fmt = ("<" if lay.little else ">") + ("L" if el.length_size == 4 else "H")
    struct.pack_into(fmt, data, el.length_at, value)
    return bytes(data)


def wrong_vr(lay: Layout, rng: random.Random, others: list[Layout]) -> bytes:
    explicit = [e for e in lay.elements if e.vr_at is not None]
    if not explicit:
        return wrong_length(lay, rng, others)
    el = rng.choice(explicit)
    data = bytearray(lay.data)
    data[el.vr_at:el.vr_at + 2] = rng.choice(SOME_VRS)
    return bytes(data)


def broken_fragments(lay: Layout, rng: random.Random, others: list[Layout]) -> bytes:
    """Offset table entries, item lengths, item tags, delimiters or code-stream headers damaged."""
    if not lay.encapsulated:
        return absurd_attributes(lay, rng, others)
    frags = _fragments(lay)
    data = bytearray(lay.data)
    end = "<" if lay.little else ">"
    choice = rng.randrange(6)
    if choice == 0 and frags:  # offset table with bogus offsets (added if empty)
        bot_at, bot_len = frags[0]
        n = max(1, bot_len // 4)
        entries = struct.pack(end + f"{n}L", *[rng.choice([0, 1, 7, 0xFFFFFFFF, rng.randrange(1 << 32)]) for _ in range(n)])
        data[bot_at:bot_at + 8 + bot_len] = struct.pack(end + "HHL", 0xFFFE, 0xE000, len(entries)) + entries
    elif choice == 1 and len(frags) > 1:  # a fragment's item length wrong
        at, length = rng.choice(frags[1:])
        struct.pack_into(end + "L", data, at + 4, rng.choice([0, 1, length + 2, max(0, length - 2), 0xFFFFFFFF, length * 3]))
    elif choice == 2 and len(frags) > 1:  # an item tag that is not an item
        at, _ = rng.choice(frags[1:])
        struct.pack_into(end + "HH", data, at, *rng.choice([(0xFFFE, 0xE0DD), (0x0000, 0x0000), (0x7FE0, 0x0010)]))
    elif choice == 3:  # sequence delimiter removed: the stream runs to the end of the file
        tail = data.rfind(struct.pack(end + "HH", 0xFFFE, 0xE0DD))
        if tail >= 0:
            del data[tail:tail + 8]
    elif choice == 4 and len(frags) > 1:  # code-stream header (SIZ, SOF, COD, ...) bytes scrambled
        at, length = frags[1]
        for _ in range(rng.randint(1, 16)):
            pos = at + 8 + rng.randrange(min(length, 256) or 1)
            if pos < len(data):
                data[pos] = rng.randrange(256)
    elif len(frags) > 1:  # the code stream cut short inside its item (item length kept)
        at, length = frags[1]
        cut = at + 8 + rng.randrange(max(1, length))
        data[cut:at + 8 + length] = bytes(at + 8 + length - cut)
    return bytes(data)


def absurd_attributes(lay: Layout, rng: random.Random, others: list[Layout]) -> bytes:
    """Header values no real image has: pixel and frame bombs, impossible bit depths, ..."""
    ds = pydicom.dcmread(io.BytesIO(lay.data), force=True)
    changes = rng.sample([
        ("Rows", rng.choice([0, 1, 60000, 65535])), ("Columns", rng.choice([0, 1, 60000, 65535])),
        ("NumberOfFrames", rng.choice(["0", "10000", "2147483647", "-1", "abc"])),
        ("BitsAllocated", rng.choice([0, 1, 7, 12, 24, 64, 65535])), ("BitsStored", rng.choice([0, 17, 40, 65535])),
        ("HighBit", rng.choice([0, 31, 65535])), ("SamplesPerPixel", rng.choice([0, 2, 3, 4, 65535])),
        ("PixelRepresentation", rng.choice([1, 2, 65535])), ("PlanarConfiguration", rng.choice([1, 2])),
        ("PhotometricInterpretation", rng.choice(["PALETTE COLOR", "YBR_FULL_422", "XYZ", "RGB", ""])),
        ("WindowWidth", rng.choice(["0", "-5", "NaN", "1e308", "inf"])),
        ("RescaleSlope", rng.choice(["0", "NaN", "1e300", "-inf"])),
    ], k=rng.randint(1, 3))
    if rng.random() < 0.3:  # the classic bombs, as the issue names them
        changes = [("Rows", 60000), ("Columns", 60000)] if rng.random() < 0.5 else [("NumberOfFrames", "10000")]
    swaps = []
    for keyword, value in changes:
        try:
            setattr(ds, keyword, value)
        except Exception:  # pydicom refuses the value for its VR: write a stand-in, put the bytes in after
            stand_in = "9" * len(str(value))
            setattr(ds, keyword, stand_in)
            swaps.append((stand_in, str(value)))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    data = out.getvalue()
    for stand_in, value in swaps:
        data = data.replace(_padded(stand_in), _padded(value), 1)
    return data


def _padded(text: str) -> bytes:
    raw = text.encode()
    return raw + b" " if len(raw) % 2 else raw


def deep_nesting(lay: Layout, rng: random.Random, others: list[Layout]) -> bytes:
    """A sequence nested thousands deep (undefined lengths), inserted before Pixel Data."""
    depth = rng.choice([64, 1000, 5000, 20000])
    end = "<" if lay.little else ">"
    tag = struct.pack(end + "HH", 0x0040, 0xA730)
    head = tag + (struct.pack(end + "L", 0xFFFFFFFF) if lay.implicit else b"SQ\x00\x00" + struct.pack(end + "L", 0xFFFFFFFF))
    item = struct.pack(end + "HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack(end + "HHL", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack(end + "HHL", 0xFFFE, 0xE0DD, 0)
    blob = (head + item) * depth + (item_end + seq_end) * depth
    px = lay.pixel_data
    at = px.start if px is not None else len(lay.data)
    return lay.data[:at] + blob + lay.data[at:]


def spliced(lay: Layout, rng: random.Random, others: list[Layout]) -> bytes:
    """This file's head on another file's tail (streams spliced by a broken transfer)."""
    other = rng.choice(others)
    return lay.data[: rng.randrange(1, len(lay.data))] + other.data[rng.randrange(len(other.data)):]


def huge_pixel_length(lay: Layout, rng: random.Random, others: list[Layout]) -> bytes:
    """Native Pixel Data whose length claims gigabytes (the file holds far less)."""
    px = lay.pixel_data
    if px is None or lay.encapsulated or px.length_size != 4:
        return wrong_length(lay, rng, others)
    data = bytearray(lay.data)
    struct.pack_into(("<" if lay.little else ">") + "L", data, px.length_at, rng.choice([0xFFFFFFF0, 0x7FFFFFFE, px.length * 1000 & 0xFFFFFFFE]))
    return bytes(data)


MUTATIONS: dict[str, Callable[[Layout, random.Random, list[Layout]], bytes]] = {
    "bit_flips": bit_flips,
    "truncate_at_boundary": truncate_at_boundary,
    "truncate_anywhere": truncate_anywhere,
    "wrong_length": wrong_length,
    "wrong_vr": wrong_vr,
    "broken_fragments": broken_fragments,
    "absurd_attributes": absurd_attributes,
    "deep_nesting": deep_nesting,
    "spliced": spliced,
    "huge_pixel_length": huge_pixel_length,
}


def mutate(layouts: list[Layout], kind: str, seed: int) -> tuple[int, bytes]:
    """Mutation ``kind`` of a corpus file chosen by ``seed``: (index of that file, bytes)."""
    rng = random.Random(f"{kind}:{seed}")
    i = rng.randrange(len(layouts))
    return i, MUTATIONS[kind](layouts[i], rng, layouts)


def write_mutants(corpus_files: list[Path], out: Path, count: int, seed: int = 0,
                  kinds: list[str] | None = None) -> list[tuple[Path, str, str]]:
    """``count`` mutated files in ``out`` (kinds in turn, seeds from ``seed``): (path, kind, source name)."""
    layouts = [layout(p) for p in corpus_files]
    kinds = kinds or list(MUTATIONS)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n in range(count):
        kind = kinds[n % len(kinds)]
        i, data = mutate(layouts, kind, seed + n)
        path = out / f"{n:06d}_{kind}_{corpus_files[i].stem}.dcm"
        path.write_bytes(data)
        written.append((path, kind, corpus_files[i].name))
    return written
