"""Hostile image payloads shared by the hardening benches (bench/attack.py, bench/fuzz_kinds.py; issue 13).

Why one module: both benches must attack the node with the same bytes, so a finding of one reproduces with the
other, and a builder fixed once is fixed for both. Pure functions of OpenCV and numpy, no sockets, no edge_gfs.

    bomb_jpeg(65000, 65000)                   a ~630-byte JPEG whose SOF0 says 65000x65000
    bomb_jpeg(20000, 20000, stray_zero=True)  the same with a stray 0x00 before the SOF marker
    bomb_png(100000, 100000)                  a tiny PNG whose IHDR says 100000x100000 (CRC fixed)
    resized_jpeg(img, 1920, 1200)             a real JPEG of that size, made from a real frame
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def bomb_jpeg(width: int, height: int, stray_zero: bool = False) -> bytes:
    """A tiny real JPEG whose SOF0 header claims width x height: the decoder allocates for the claim.

    With `stray_zero`, one 0x00 byte before the SOF marker: libjpeg skips it ("extraneous bytes before marker")
    and still reads the size, while a naive marker walk stops there and reads none."""
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 127, np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    if stray_zero:
        data[sof:sof] = b"\x00"
    return bytes(data)


def bomb_png(width: int, height: int, fix_crc: bool = True) -> bytes:
    """A tiny real PNG whose IHDR claims width x height. With `fix_crc` (the default) the chunk's CRC is
    recomputed, so a decoder believes the size; without, libpng should refuse the header."""
    ok, buf = cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))
    data = bytearray(buf.tobytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR body starts at 16: after signature, length, type
    if fix_crc:
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def resized_jpeg(img: np.ndarray, width: int, height: int) -> bytes:
    """A real JPEG of width x height (a BGR frame resized, quality 90 as protocol.encode_jpeg): honest bytes whose
    only fault may be their size."""
    ok, buf = cv2.imencode(".jpg", cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR),
                           [cv2.IMWRITE_JPEG_QUALITY, 90])
    return buf.tobytes()
