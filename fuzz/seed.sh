#!/usr/bin/env bash
# Writes seed inputs for every fuzz target from the golden vectors in testvectors/tl/, the
# attestation evidence in testvectors/attest/ and the OpenAI bodies in fuzz/seeds/ into
# fuzz/corpus/<target>/ (git-ignored).
# Safe to run again: it only adds/overwrites seed-* files.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec python3 - "$here" <<'PY'
import os, sys, struct

fuzz = sys.argv[1]
vectors = os.path.join(fuzz, "..", "testvectors", "tl")

def load(name, cols):
    out = []
    for line in open(os.path.join(vectors, name)):
        line = line.rstrip("\n")
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        assert len(parts) == cols, (name, line[:60])
        out.append((parts[0], parts[1], bytes.fromhex(parts[-1])))
    return out

valid = load("handmade.txt", 3) + load("encoded.txt", 3)
invalid = load("invalid.txt", 4)

def clean(name):
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)

counts = {}
def write(target, name, data):
    d = os.path.join(fuzz, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + clean(name)), "wb") as f:
        f.write(data)
    counts[target] = counts.get(target, 0) + 1

# Streams: frames of one direction, in file order.
streams = {}
for name, kind, data in valid:
    if kind == "frame":
        streams.setdefault(name.split("/", 1)[0], []).append(data)

# tl_boxed: every object, every frame payload, and the nested data of tcp.query /
# tcp.queryAnswer / tcp.packet.
def tl_bytes(buf, at):
    n = buf[at]
    if n < 254:
        start, length = at + 1, n
    else:
        start, length = at + 4, int.from_bytes(buf[at + 1:at + 4], "little")
    return buf[start:start + length]

WITH_DATA = {0x3AF51908: 12, 0xC048C311: 12, 0x9C17BAF8: 4}  # id -> offset of `data`
for name, kind, data in valid + invalid:
    payload = data[8:] if kind == "frame" else data
    write("tl_boxed", name, payload)
    if len(payload) >= 4:
        off = WITH_DATA.get(struct.unpack("<I", payload[:4])[0])
        if off is not None and len(payload) > off:
            write("tl_boxed", name + "-data", tl_bytes(payload, off))

# frame_decoder: whole streams, single frames, invalid frames; header byte 0 = 1-byte chunks,
# 3 = chunks cycling through the next 3 sizes.
for s, frames in streams.items():
    write("frame_decoder", "stream-" + s, b"\x00" + b"".join(frames))
    write("frame_decoder", "stream-chunked-" + s, b"\x03\x06\x00\xff" + b"".join(frames))
for name, kind, data in valid:
    if kind == "frame":
        write("frame_decoder", name, b"\x00" + data)
for name, kind, data in invalid:
    if kind == "frame":
        write("frame_decoder", name, b"\x02\x07\x01" + data)

# session: the client->proxy or worker->proxy stream fed to an acceptor, and the
# proxy->client or proxy->worker stream to an initiator whose connect id matches.
# Layout (see fuzz_targets/session.rs): cfg byte, [connect id], ops; op 0 + len 0 = feed
# all the rest; op 0 + len n = feed n bytes; op 3 = send_query; op 9 + 0 = flush.
for s, frames in streams.items():
    stream = b"".join(frames)
    initiator = s.startswith("proxy-")
    head = b"\x01" + frames[0][12:20] if initiator else b"\x00"
    write("session", s, head + b"\x00\x00" + stream)
    # Chunked, with a query sent and time passing in between, and flushes.
    ops = b"\x03\x04ping\x10\x27"
    for i in range(0, len(stream), 200):
        chunk = stream[i:i + 200]
        ops += b"\x00" + bytes([len(chunk)]) + chunk + b"\x09\x00" + b"\x01\xe8\x03"
    write("session", s + "-chunked", head + ops + b"\x02")
for name, kind, data in invalid:
    if kind == "frame":
        write("session", name, b"\x00\x00\x00" + data)

# --- Attestation targets, from testvectors/attest/ (layouts: see each target's docs). ---
attest = os.path.join(fuzz, "..", "testvectors", "attest")

def read(*parts):
    with open(os.path.join(attest, *parts), "rb") as f:
        return f.read()

quotes = {
    "tdx-v4": read("tdx_quote"),
    "cocoon-v4": read("cocoon_quote.dat"),
    "tdx-v5": read("tdx_quote_v5_outdated"),
    "sgx-v3": read("sgx_quote"),
}
collaterals = {
    "sample": read("tdx_quote_collateral.json"),
    "cocoon-90c06f": read("cocoon_quote_collateral_90c06f.json"),
}
# tdx_quote: mode 0 = quote vs the sample collateral, 1 = vs the 90c06f collateral,
# 2 = collateral JSON, 3 = quote under a lax policy.
for name, q in quotes.items():
    for mode in (0, 1, 3):
        write("tdx_quote", f"{name}-{mode}", bytes([mode]) + q)
    # The header alone and a truncated body reach the length checks.
    write("tdx_quote", f"{name}-header", b"\x01" + q[:48])
    write("tdx_quote", f"{name}-truncated", b"\x01" + q[: len(q) // 2])
for name, c in collaterals.items():
    write("tdx_quote", f"collateral-{name}", b"\x02" + c)

# sev_report: mode 0 = raw report, 1 = hex text, 2 = VCEK (DER), 3 = ASK/ARK chain (PEM).
report_hex = read("sev", "report_milan.hex")
report = bytes.fromhex("".join(report_hex.decode().split()))
write("sev_report", "milan-raw", b"\x00" + report)
write("sev_report", "milan-hex", b"\x01" + report_hex)
write("sev_report", "milan-truncated", b"\x00" + report[:0x2A0])
for gen in ("milan", "turin"):
    write("sev_report", f"vcek-{gen}", b"\x02" + read("sev", f"vcek_{gen}.der"))
    write("sev_report", f"chain-{gen}", b"\x03" + read("sev", f"cert_chain_{gen}"))

# ratls_cert: mode 0 = evidence-extension contents (envelopes), 1 = a certificate (DER),
# 2 = XOR mutation of a generated sim certificate (2-byte offset, then the flips).
def sev_envelope(*parts):
    out = b"CCN-SEV1"
    for p in parts:
        out += struct.pack("<I", len(p)) + p
    return out

write("ratls_cert", "env-tdx-cocoon", b"\x00" + quotes["cocoon-v4"])
write("ratls_cert", "env-tdx-sample", b"\x00" + quotes["tdx-v4"])
write("ratls_cert", "env-sev-milan",
      b"\x00" + sev_envelope(report, read("sev", "vcek_milan.der"), read("sev", "cert_chain_milan")))
write("ratls_cert", "env-sev-truncated",
      b"\x00" + sev_envelope(report, read("sev", "vcek_milan.der"))[:-10])
write("ratls_cert", "env-sim-empty", b"\x00" + b"CCN-SIM1")
write("ratls_cert", "env-reserved-magic", b"\x00" + b"CCN-XYZ1" + bytes(32))
# The certificates embedded in the evidence (PCK chain PEMs, VCEK) as whole-certificate
# inputs: real DER the X.509 parser accepts, rejected later by the RA-TLS checks.
write("ratls_cert", "der-vcek-milan", b"\x01" + read("sev", "vcek_milan.der"))
write("ratls_cert", "der-vcek-turin", b"\x01" + read("sev", "vcek_turin.der"))
for i, off in enumerate((0, 4, 200, 300, 400, 600)):
    write("ratls_cert", f"flip-{i}", b"\x02" + struct.pack("<H", off) + b"\x00\x01\x80\xff")
write("ratls_cert", "flip-none", b"\x02\x00\x00")

# --- OpenAI targets, from the committed bodies in fuzz/seeds/ and the engine's recorded vLLM
# stream (layouts: see each target's docs). ---
def seeds(target):
    d = os.path.join(fuzz, "seeds", target)
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            yield name, f.read()

# openai_validate: flags (bit 0 completions, bit 1 take extensions, bit 2 cap), total u32 LE.
for name, body in seeds("openai_validate"):
    completions = 1 if name.startswith("completions") else 0
    for flags, total in ((0, 1000), (2, 7), (6, 64), (2, 0xFFFFFFFF), (0, 1)):
        write("openai_validate", f"{name}-{flags}-{total}",
              bytes([flags | completions]) + struct.pack("<I", total) + body)

# openai_usage: flags (bit 0 collect text, bits 1-2 limit, rest coefficient / 250), then the
# chunk-size count and sizes: whole, 1-byte chunks, and chunks of 2, 17 and 64 bytes.
with open(os.path.join(fuzz, "..", "crates", "engine", "tests", "data", "vllm_chat_stream.sse"), "rb") as f:
    answers = [("vllm_chat_stream.sse", f.read())] + list(seeds("openai_usage"))
for name, body in answers:
    for head in (b"\x21\x00", b"\x20\x01\x00", b"\x31\x03\x01\x10\x3f", b"\x07\x02\x05\x00"):
        write("openai_usage", f"{name}-{head.hex()}", head + body)

# grammar: the committed schemas as they are.
for name, body in seeds("grammar"):
    write("grammar", name, body)

# tools: request bodies after flags 0; model outputs after flags 1 (auto) and 3 (required),
# whole and in chunks of 1, 5 and 17 characters.
for name, body in seeds("tools"):
    if name.endswith(".json"):
        write("tools", name, b"\x00" + body)
    else:
        for head in (b"\x01", b"\x03", b"\x01\x03\x00\x04\x10", b"\x03\x01\x00"):
            write("tools", f"{name}-{head.hex()}", head + body)

# responses: request bodies and whole chat answers after flags 0; chat streams after flags 1
# (limit 1 MiB), 3 (16 B) and 7 (4 KiB), whole and in chunks of 1, 5 and 17 bytes.
for name, body in seeds("responses"):
    if name.endswith(".json"):
        write("responses", name, b"\x00" + body)
    else:
        for head in (b"\x01", b"\x03\x01\x00", b"\x07\x03\x00\x04\x10"):
            write("responses", f"{name}-{head.hex()}", head + body)

for t in sorted(counts):
    print(f"{t}: {counts[t]} seeds in fuzz/corpus/{t}/")
PY
