#!/usr/bin/env python3
"""Sets a PE image's COFF TimeDateStamp to SOURCE_DATE_EPOCH and recomputes the optional
header's CheckSum (objcopy writes the current time there). Usage: pe-fix.py FILE EPOCH."""
import struct
import sys

path, epoch = sys.argv[1], int(sys.argv[2])
data = bytearray(open(path, "rb").read())
pe = struct.unpack_from("<I", data, 0x3C)[0]
if data[pe:pe + 4] != b"PE\0\0":
    sys.exit(f"pe-fix: {path} is not a PE image")
struct.pack_into("<I", data, pe + 8, epoch & 0xFFFFFFFF)
csum_off = pe + 24 + 64
struct.pack_into("<I", data, csum_off, 0)
total = 0
padded = data + (b"\0" if len(data) % 2 else b"")
for (word,) in struct.iter_unpack("<H", padded):
    total += word
    total = (total & 0xFFFF) + (total >> 16)
total = (total & 0xFFFF) + (total >> 16)
struct.pack_into("<I", data, csum_off, (total + len(data)) & 0xFFFFFFFF)
open(path, "wb").write(data)
