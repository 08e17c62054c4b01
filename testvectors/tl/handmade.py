#!/usr/bin/env python3
"""Hand-made golden vectors for the COCOON wire protocol.

This script builds frames and TL objects byte by byte from the layout rules of the protocol
(docs/protocol.md), independently of the Rust encoder in crates/tl: it imports nothing of
ours, keeps its own copy of the declarations (written in canonical form) and computes the
constructor ids itself with zlib.crc32. Only the standard library is used.

    python3 testvectors/tl/handmade.py        # rewrites handmade.txt and invalid.txt

Output (next to this script):
    handmade.txt   name<TAB>kind<TAB>hex            kind: frame | object
    invalid.txt    name<TAB>kind<TAB>error<TAB>hex  error: substring of the expected error

Frame vectors are named `<stream>/<label>`; the frames of one stream (one direction of one
connection) appear in file order with seqnos 0, 1, 2, ... like a real conversation.
"""

import os
import sys
import struct
import zlib

# --------------------------------------------------------------------------------------------
# Declarations, in canonical form: name, fields and result separated by single spaces,
# `(vector X)` written `vector X`, no `;`, no explicit id.
# --------------------------------------------------------------------------------------------

DECLARATIONS = """
tcp.ping id:long = tcp.Packet
tcp.pong id:long = tcp.Packet
tcp.packet data:bytes = tcp.Packet
tcp.queryAnswer id:long data:bytes = tcp.Packet
tcp.queryError id:long code:int message:string = tcp.Packet
tcp.query id:long data:bytes = tcp.Packet
tcp.connected id:long = tcp.Packet
tcp.connect id:long = tcp.Packet
ton.blockIdExt workchain:int shard:long seqno:int root_hash:bytes file_hash:bytes = ton.BlockIdExt
test.answer id:long = test.Answer
test.query id:long = test.Answer
proxyRunner.config is_test:Bool is_testnet:Bool workers_rpc_port:int client_rpc_port:int http_port:int owner_address:string root_contract_address:string machine_specific_private_key:int256 node_wallet_key:int256 ton_config_filename:string db_path:string check_worker_hashes:Bool image_hash:int256 http_access_hash:string = proxyRunner.Config
workerRunner.config is_test:Bool is_testnet:Bool http_port:int owner_address:string proxy_connections:int connect_to_proxy_via:string model_name:string coefficient:int root_contract_address:string node_wallet_key:int256 forward_requests_to:string ton_config_filename:string check_proxy_hashes:Bool max_active_requests:int image_hash:int256 http_access_hash:string = workerRunner.Config
clientRunner.config is_test:Bool is_testnet:Bool http_port:int owner_address:string proxy_connections:int connect_to_proxy_via:string root_contract_address:string node_wallet_key:int256 check_proxy_hashes:Bool secret_string:string ton_config_filename:string http_access_hash:string = clientRunner.Config
keyStorageRunner.config is_test:Bool is_testnet:Bool rpc_port:int http_port:int root_contract_address:string machine_specific_private_key:int256 ton_config_filename:string db_path:string check_hashes:Bool image_hash:int256 http_access_hash:string = keyStorageRunner.Config
rootConfig.registeredProxy seqno:int address:string = rootConfig.RegisteredProxy
rootConfig.pseudo proxy_hashes:vector int256 worker_hashes:vector int256 model_hashes:vector int256 model_types:vector string registered_proxies:vector rootConfig.registeredProxy price_per_token:int worker_fee_per_token:int last_proxy_seqno:int version:int params_version:int proxy_sc_code:string worker_sc_code:string client_sc_code:string root_owner_address:string = rootConfig.Config
rootConfig.configV5 root_owner_address:string proxy_hashes:vector int256 registered_proxies:vector rootConfig.registeredProxy last_proxy_seqno:int worker_hashes:vector int256 model_hashes:vector int256 version:int struct_version:int params_version:int unique_id:int is_test:int price_per_token:long worker_fee_per_token:long prompt_tokens_price_multiplier:int cached_tokens_price_multiplier:int completion_tokens_price_multiplier:int reasoning_tokens_price_multiplier:int proxy_delay_before_close:int client_delay_before_close:int min_proxy_stake:long min_client_stake:long proxy_sc_code:string worker_sc_code:string client_sc_code:string = rootConfig.Config
proxyDb.clientInfo owner_address:string sc_address:string status:int balance:long sc_tokens_used:long tokens_used:long secret_hash:int256 last_request_at:int = proxyDb.ClientInfo
proxyDb.clientInfoV2 owner_address:string sc_address:string status:int balance:long stake:long sc_tokens_used:long tokens_used:long secret_hash:int256 last_request_at:int = proxyDb.ClientInfo
proxyDb.workerInfo owner_address:string sc_address:string sc_tokens:long tokens:long last_request_at:int = proxyDb.WorkerInfo
proxyDb.pendingBlockchainSeqnoCommit seqno:int session_hash:int256 = proxyDb.PendingBlockchainSeqnoCommit
proxyDb.configEmpty = proxyDb.Config
proxyDb.configV4 root_contract_address:string is_testnet:int root_contract_state:rootConfig.Config root_contract_state_block_ts:int sc_block_id:ton.blockIdExt last_seqno_committed_to_blockchain:int pending_blockchain_seqno_commits:vector proxyDb.pendingBlockchainSeqnoCommit = proxyDb.Config
proxyDb.configV4Disabled root_contract_address:string is_testnet:int root_contract_state:rootConfig.Config root_contract_state_block_ts:int disabled_until_version:long = proxyDb.Config
proxyDb.oldClient owner_address:string tokens:long next_client:string = proxyDb.OldClient
proxyDb.oldWorker owner_address:string tokens:long next_worker:string = proxyDb.OldWorker
proxyDb.oldInstance contract_address:string closing_state:int close_at:int next_client:string next_worker:string root_contract_state:rootConfig.Config = proxyDb.OldInstance
keyManagerDb.configEmpty = keyManagerDb.Config
keyManagerDb.configV1 root_contract_version:int = keyManagerDb.Config
keyManagerDb.key private_key:int256 for_proxies:Bool for_workers:Bool valid_since_config_version:int valid_since_utime:int valid_until_utime:int = keyManagerDb.Key
tokensUsed prompt_tokens_used:long cached_tokens_used:long completion_tokens_used:long reasoning_tokens_used:long total_tokens_used:long = TokensUsed
worker.params flags:# worker_owner_address:string model:string coefficient:int is_test:flags.0?Bool proxy_cnt:flags.0?int max_active_requests:flags.0?int min_proto_version:flags.1?int max_proto_version:flags.1?int = worker.Params
proxy.params flags:# proxy_public_key:int256 proxy_owner_address:string proxy_sc_address:string is_test:flags.0?Bool proto_version:flags.1?int = proxy.Params
client.params flags:# client_owner_address:string is_test:flags.0?Bool min_proto_version:flags.1?int max_proto_version:flags.1?int = client.Params
client.proxyConnectionAuthShort secret_hash:int256 nonce:long = client.ProxyConnectionAuth
client.proxyConnectionAuthLong nonce:long = client.ProxyConnectionAuth
client.authorizationWithProxySuccess signed_payment:proxy.SignedPayment tokens_committed_to_db:long max_tokens:long = client.AuthorizationWithProxy
client.authorizationWithProxyFailed error_code:int error:string = client.AuthorizationWithProxy
client.connectedToProxy params:proxy.params client_sc_address:string auth:client.ProxyConnectionAuth signed_payment:proxy.SignedPayment = client.ConnectedToProxy
client.queryAnswer answer:bytes is_completed:Bool request_id:int256 request_tokens_used:tokensUsed = client.QueryAnswer
client.queryAnswerError error_code:int error:string request_id:int256 request_tokens_used:tokensUsed = client.QueryAnswer
client.queryAnswerPart answer:bytes is_completed:Bool request_id:int256 request_tokens_used:tokensUsed = client.QueryAnswerPart
client.queryAnswerPartError error_code:int error:string request_id:int256 request_tokens_used:tokensUsed = client.QueryAnswerPart
client.queryFinalInfo flags:# tokens_used:tokensUsed worker_debug:flags.0?string proxy_debug:flags.0?string proxy_start_time:flags.1?double proxy_end_time:flags.1?double worker_start_time:flags.1?double worker_end_time:flags.1?double = client.QueryFinalInfo
client.queryAnswerEx request_id:int256 answer:bytes flags:# final_info:flags.0?client.queryFinalInfo = client.QueryAnswerEx
client.queryAnswerErrorEx request_id:int256 error_code:int error:string flags:# final_info:flags.0?client.queryFinalInfo = client.QueryAnswerEx
client.queryAnswerPartEx request_id:int256 answer:bytes flags:# final_info:flags.0?client.queryFinalInfo = client.QueryAnswerEx
client.refund data:bytes = client.Refund
client.refundRejected active_queries:long = client.Refund
client.workerType name:string active_workers:int coefficient_min:int coefficient_bucket50:int coefficient_max:int = client.WorkerType
client.workerTypes types:vector client.workerType = client.WorkerTypes
client.workerInstanceV2 flags:# coefficient:int active_requests:int max_active_requests:int = client.WorkerInstanceV2
client.workerTypeV2 name:string workers:vector client.workerInstanceV2 = client.WorkerTypeV2
client.workerTypesV2 types:vector client.workerTypeV2 = client.WorkerTypesV2
client.paymentStatus signed_payment:proxy.SignedPayment db_tokens:long max_tokens:long = client.PaymentStatus
proxy.clientRequestPayment request_id:int256 signed_payment:proxy.SignedPayment db_tokens:long max_tokens:long request_tokens:long = proxy.WorkerRequestPayment
client.connectToProxy params:client.params min_config_version:int = client.ConnectedToProxy
client.authorizeWithProxyShort data:bytes = client.AuthorizationWithProxy
client.authorizeWithProxyLong = client.AuthorizationWithProxy
client.runQuery model_name:string query:bytes max_coefficient:int max_tokens:int timeout:double request_id:int256 min_config_version:int = client.QueryAnswer
client.runQueryEx model_name:string query:bytes max_coefficient:int max_tokens:int timeout:double request_id:int256 min_config_version:int flags:# enable_debug:flags.0?Bool = client.QueryAnswerEx
client.requestRefund = client.Refund
client.updatePaymentStatus = client.PaymentStatus
client.getWorkerTypes = client.WorkerTypes
client.getWorkerTypesV2 = client.WorkerTypesV2
proxy.signedPayment data:bytes = proxy.SignedPayment
proxy.signedPaymentEmpty = proxy.SignedPayment
proxy.queryAnswer answer:bytes is_completed:Bool request_id:int256 tokens_used:tokensUsed = proxy.QueryAnswer
proxy.queryAnswerError error_code:int error:string request_id:int256 tokens_used:tokensUsed = proxy.QueryAnswer
proxy.queryAnswerPart answer:bytes is_completed:Bool request_id:int256 tokens_used:tokensUsed = proxy.QueryAnswerPart
proxy.queryAnswerPartError error_code:int error:string request_id:int256 tokens_used:tokensUsed = proxy.QueryAnswerPart
proxy.queryFinalInfo flags:# tokens_used:tokensUsed worker_debug:flags.0?string worker_start_time:flags.1?double worker_end_time:flags.1?double = proxy.QueryFinalInfo
proxy.queryAnswerEx request_id:int256 answer:bytes flags:# final_info:flags.0?proxy.queryFinalInfo = proxy.QueryAnswerEx
proxy.queryAnswerErrorEx request_id:int256 error_code:int error:string flags:# final_info:flags.0?proxy.queryFinalInfo = proxy.QueryAnswerEx
proxy.queryAnswerPartEx request_id:int256 answer:bytes flags:# final_info:flags.0?proxy.queryFinalInfo = proxy.QueryAnswerEx
proxy.workerRequestPayment request_id:int256 signed_payment:proxy.SignedPayment db_tokens:long max_tokens:long request_tokens:long request_client_owner:string = proxy.WorkerRequestPayment
proxy.runQuery query:bytes signed_payment:proxy.SignedPayment coefficient:long timeout:double request_id:int256 = proxy.QueryAnswer
proxy.runQueryEx query:bytes signed_payment:proxy.SignedPayment coefficient:long timeout:double request_id:int256 flags:# enable_debug:flags.0?Bool = proxy.QueryAnswer
worker.enabledDisabled disabled:int = worker.EnabledDisabled
worker.newCoefficient new_coefficient:int = worker.NewCoefficient
worker.connectedToProxy params:proxy.params worker_sc_address:string = worker.ConnectedToProxy
worker.compareBalanceWithProxyResult signed_payment:proxy.SignedPayment tokens_committed_to_db:long max_tokens:long error_code:int = worker.CompareBalanceWithProxyResult
worker.extendedCompareBalanceWithProxyResult error_code:int = worker.ExtendedCompareBalanceWithProxyResult
worker.proxyHandshakeCompleted = worker.HandshakeCompleted
worker.paymentStatus signed_payment:proxy.SignedPayment db_tokens:long max_tokens:long = worker.PaymentStatus
worker.connectToProxy params:worker.params = worker.ConnectedToProxy
worker.compareBalanceWithProxy tokens_committed_to_blockchain:long tokens_committed_to_db:long max_tokens:long = worker.CompareBalanceWithProxyResult
worker.extendedCompareBalanceWithProxy tokens_committed_to_db:long other:bytes = worker.ExtendedCompareBalanceWithProxyResult
worker.proxyHandshakeComplete is_disabled:Bool = worker.HandshakeCompleted
worker.updatePaymentStatus = worker.PaymentStatus
keyManager.privateKey valid_until_utime:int private_key:int256 = keyManager.PrivateKey
keyManager.privateKeys keys:vector keyManager.privateKey = keyManager.PrivateKeys
keyManager.getWorkerPrivateKeys min_config_version:int = keyManager.PrivateKeys
keyManager.getProxyPrivateKeys min_config_version:int = keyManager.PrivateKeys
http.header name:string value:string = http.Header
http.response http_version:string status_code:int reason:string headers:vector http.header payload:bytes = http.Response
http.request method:string url:string http_version:string headers:vector http.header payload:bytes = http.Response
client.cancelQuery request_id:int256 reason:string = client.CancelQuery
proxy.cancelQuery request_id:int256 reason:string = proxy.CancelQuery
"""

# The four declarations whose ids are given explicitly in the scheme (not CRC-32).
EXPLICIT_IDS = {
    "client.params": 0x40FDCA64,
    "proxy.params": 0xD5C5609F,
    "worker.params": 0x869C73ED,
    "client.workerInstanceV2": 0x3EA93D00,
}

BOOL_TRUE = 0x997275B5
BOOL_FALSE = 0xBC799737


class Decl:
    def __init__(self, text):
        self.text = text
        lhs, self.result = text.rsplit(" = ", 1)
        tokens = lhs.split(" ")
        self.name = tokens[0]
        self.fields = []  # (name, type, condition) with condition (flags_field, bit) or None
        for tok in tokens[1:]:
            if ":" not in tok:
                # element type of a preceding `vector X`
                fname, ftype, cond = self.fields[-1]
                assert ftype == "vector", text
                self.fields[-1] = (fname, "vector " + tok, cond)
                continue
            fname, ftype = tok.split(":", 1)
            cond = None
            if "?" in ftype:
                c, ftype = ftype.split("?", 1)
                flags, bit = c.split(".")
                cond = (flags, int(bit))
            self.fields.append((fname, ftype, cond))
        self.id = EXPLICIT_IDS.get(self.name, zlib.crc32(text.encode()) & 0xFFFFFFFF)


DECLS = {}
for _line in DECLARATIONS.strip().splitlines():
    _d = Decl(_line.strip())
    assert _d.name not in DECLS, _d.name
    DECLS[_d.name] = _d

# Sanity checks of the CRC rule against ids published for COCOON (docs/protocol.md and team
# notes, not in the repo): if one of these fails, the declaration text above is wrong.
for _name, _id in [
    ("tcp.ping", 0xBBE9627C),
    ("tcp.query", 0x3AF51908),
    ("tcp.queryAnswer", 0xC048C311),
    ("tcp.connect", 0xA57C4261),
    ("client.runQueryEx", 0xF54CB74B),
    ("client.queryAnswerPartEx", 0xC07BFAEC),
    ("http.request", 0x47492DE5),
    ("tokensUsed", 0x70C5B15C),
    ("worker.connectToProxy", 0xCC484C5D),
]:
    assert DECLS[_name].id == _id, (_name, hex(DECLS[_name].id))
assert zlib.crc32(b"boolTrue = Bool") == BOOL_TRUE
assert zlib.crc32(b"boolFalse = Bool") == BOOL_FALSE

# --------------------------------------------------------------------------------------------
# Primitive encoders: TL little-endian, strings/bytes with 1- or 4-byte length header and
# zero padding to a multiple of 4 (header included).
# --------------------------------------------------------------------------------------------


def u32(v):
    return struct.pack("<I", v)


def i32(v):
    return struct.pack("<i", v)


def i64(v):
    return struct.pack("<q", v)


def f64(v):
    return struct.pack("<d", v)


def tl_bytes(data):
    n = len(data)
    if n < 254:
        out = bytes([n]) + data
    else:
        assert n < (1 << 24)
        out = b"\xfe" + bytes([n & 0xFF, (n >> 8) & 0xFF, (n >> 16) & 0xFF]) + data
    while len(out) % 4:
        out += b"\x00"
    return out


def tl_bool(v):
    return u32(BOOL_TRUE if v else BOOL_FALSE)


# Hand-checked spellings of the primitives.
assert tl_bytes(b"abc") == b"\x03abc"
assert tl_bytes(b"abcd") == b"\x04abcd\x00\x00\x00"
assert tl_bytes(b"") == b"\x00\x00\x00\x00"
assert tl_bytes(b"x" * 254)[:4] == b"\xfe\xfe\x00\x00" and len(tl_bytes(b"x" * 254)) == 260
assert tl_bool(True) == b"\xb5\x75\x72\x99"


class Obj:
    """A boxed TL object: constructor name + field values."""

    def __init__(self, ctor, /, **fields):
        assert ctor in DECLS, ctor
        self.name = ctor
        self.fields = fields

    def encode(self):
        return u32(DECLS[self.name].id) + encode_fields(self.name, self.fields)


ENCODED = set()  # names of the declarations encoded so far (boxed or bare)


def encode_fields(name, values):
    ENCODED.add(name)
    decl = DECLS[name]
    names = {f[0] for f in decl.fields}
    for k in values:
        assert k in names, f"{name} has no field {k}"
    flags = {}
    out = b""
    for fname, ftype, cond in decl.fields:
        if ftype == "#":
            v = values[fname]  # flags are always given explicitly
            flags[fname] = v
            out += u32(v)
            continue
        if cond is not None:
            present = flags[cond[0]] >> cond[1] & 1
            assert present == (fname in values), f"{name}.{fname}: flag bit vs presence"
            if not present:
                continue
        out += encode_value(ftype, values[fname], f"{name}.{fname}")
    return out


def encode_value(ftype, v, where):
    if ftype == "int":
        return i32(v)
    if ftype == "long":
        return i64(v)
    if ftype == "double":
        return f64(v)
    if ftype == "string":
        return tl_bytes(v.encode("utf-8") if isinstance(v, str) else v)
    if ftype == "bytes":
        return tl_bytes(v.encode() if isinstance(v, Obj) else v)
    if ftype == "int256":
        assert len(v) == 32, where
        return v
    if ftype == "Bool":
        return tl_bool(v)
    if ftype.startswith("vector "):
        inner = ftype[len("vector ") :]
        return i32(len(v)) + b"".join(encode_value(inner, x, where) for x in v)
    last = ftype.rsplit(".", 1)[-1]
    if last[0].islower():
        # bare constructor: a dict of its fields, no constructor id
        assert isinstance(v, dict), where
        return encode_fields(ftype, v)
    # boxed type: an Obj of one of its constructors
    assert isinstance(v, Obj), where
    assert DECLS[v.name].result == ftype, f"{where}: {v.name} is not a {ftype}"
    return v.encode()


def frame(seqno, payload):
    return u32(len(payload)) + i32(seqno) + payload


# A tcp.ping frame spelled out completely by hand: len 12, seqno 0, bbe9627c, id 1.
assert frame(0, Obj("tcp.ping", id=1).encode()) == bytes.fromhex(
    "0c000000" "00000000" "7c62e9bb" "0100000000000000"
)

# --------------------------------------------------------------------------------------------
# Deterministic "random-looking" values (xorshift64*), so the file is reproducible.
# --------------------------------------------------------------------------------------------

_state = [0x243F6A8885A308D3]


def rnd64():
    x = _state[0]
    x ^= x >> 12
    x ^= (x << 25) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 27
    _state[0] = x
    return (x * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF


def rbytes(n):
    out = b""
    while len(out) < n:
        out += struct.pack("<Q", rnd64())
    return out[:n]


def rlong():
    return struct.unpack("<q", struct.pack("<Q", rnd64()))[0]


def int256():
    return rbytes(32)


# --------------------------------------------------------------------------------------------
# Realistic values
# --------------------------------------------------------------------------------------------

CLIENT_OWNER = "UQDc2m5xVyDk0d3hNAzoqZBVjmU8mLxZb0u0ZK8c-7OqBtDM"
PROXY_OWNER = "UQBvW8Z5huBkMJYdnfAEM5JqTNkuWX3diqYENkWsIL0XggGG"
WORKER_OWNER = "UQAoQ8ZBp3iTVuFrVB2uSbXhE0eSEBLGrYcDQ3p0JmGqmyXX"
PROXY_SC = "EQC4t5f7Ju3-M0qs5m9ssRxH2K6pXe7kB1Fd8y1pHbVNyVsq"
CLIENT_SC = "EQB2VbDqKo1Kk3yH9gU7n0o_1pRrZx8fT0sH5cVqYbLm6WQe"
WORKER_SC = "EQDkq0PZmT9ZpJ3u6yHq3cN7w1eS4rQbF2xG8aLvK5oYt-Ah"
ROOT_CONTRACT = "EQCns7bYSp0igFvS1wpb5wsZjCKCV19MD5AVzI4EyxsnU73k"
MODEL = "Qwen/Qwen3-32B"
MODEL2 = "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"

PROXY_KEY = int256()


def tokens(prompt, cached, completion, reasoning):
    return {
        "prompt_tokens_used": prompt,
        "cached_tokens_used": cached,
        "completion_tokens_used": completion,
        "reasoning_tokens_used": reasoning,
        "total_tokens_used": prompt + completion + reasoning,
    }


def chat_request(prompt, stream=True):
    body = (
        '{"model":"%s","messages":[{"role":"system","content":"You are a helpful assistant."},'
        '{"role":"user","content":"%s"}],"max_tokens":512,"temperature":0.7,"stream":%s}'
        % (MODEL, prompt, "true" if stream else "false")
    ).encode()
    return Obj(
        "http.request",
        method="POST",
        url="/v1/chat/completions",
        http_version="HTTP/1.1",
        headers=[
            {"name": "Content-Type", "value": "application/json"},
            {"name": "Accept", "value": "text/event-stream" if stream else "application/json"},
            {"name": "Content-Length", "value": str(len(body))},
        ],
        payload=body,
    )


def chat_response_head(stream=True, body=b""):
    return Obj(
        "http.response",
        http_version="HTTP/1.1",
        status_code=200,
        reason="OK",
        headers=[
            {"name": "Content-Type", "value": "text/event-stream" if stream else "application/json"},
            {"name": "Cache-Control", "value": "no-cache"},
        ],
        payload=body,
    )


def sse(content, finish=None):
    chunk = (
        '{"id":"chatcmpl-7f3a","object":"chat.completion.chunk","created":1760000000,'
        '"model":"%s","choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":%s}]}'
        % (MODEL, content, "null" if finish is None else '"%s"' % finish)
    )
    return ("data: " + chunk + "\n\n").encode()


SIGNED_PAYMENT = Obj("proxy.signedPayment", data=rbytes(96))
BOC_MAGIC = bytes.fromhex("b5ee9c72")


def sc_code(n):
    # Contract code is a BOC (binary), which the scheme carries in a `string` field.
    return BOC_MAGIC + bytes.fromhex("0102010100") + rbytes(n)


# --------------------------------------------------------------------------------------------
# Conversations
# --------------------------------------------------------------------------------------------

VECTORS = []  # (name, kind, bytes)


class Stream:
    """One direction of one connection: frames numbered from 0."""

    def __init__(self, name):
        self.name = name
        self.seqno = 0
        self.count = 0

    def send(self, label, packet):
        payload = packet.encode()
        VECTORS.append((f"{self.name}/{self.count:02d}-{label}", "frame", frame(self.seqno, payload)))
        self.seqno += 1
        self.count += 1


def query(s, qid, obj):
    s.send(f"tcp.query-{obj.name}", Obj("tcp.query", id=qid, data=obj))


def answer(s, qid, obj):
    s.send(f"tcp.queryAnswer-{obj.name}", Obj("tcp.queryAnswer", id=qid, data=obj))


def message(s, obj, label=None):
    s.send(f"tcp.packet-{label or obj.name}", Obj("tcp.packet", data=obj))


def client_session():
    c2p, p2c = Stream("client-proxy"), Stream("proxy-client")
    cid = rlong()
    c2p.send("tcp.connect", Obj("tcp.connect", id=cid))
    p2c.send("tcp.connected", Obj("tcp.connected", id=cid))

    # Handshake (protocol versions 1..2 offered, test network).
    query(c2p, 1, Obj(
        "client.connectToProxy",
        params={"flags": 3, "client_owner_address": CLIENT_OWNER, "is_test": True,
                "min_proto_version": 1, "max_proto_version": 2},
        min_config_version=7,
    ))
    secret_hash = int256()
    answer(p2c, 1, Obj(
        "client.connectedToProxy",
        params={"flags": 3, "proxy_public_key": PROXY_KEY, "proxy_owner_address": PROXY_OWNER,
                "proxy_sc_address": PROXY_SC, "is_test": True, "proto_version": 2},
        client_sc_address=CLIENT_SC,
        auth=Obj("client.proxyConnectionAuthShort", secret_hash=secret_hash, nonce=rlong()),
        signed_payment=Obj("proxy.signedPaymentEmpty"),
    ))
    query(c2p, 2, Obj("client.authorizeWithProxyShort", data=b"my-client-secret-0c8f1e"))
    answer(p2c, 2, Obj(
        "client.authorizationWithProxySuccess",
        signed_payment=SIGNED_PAYMENT, tokens_committed_to_db=120_345, max_tokens=10_000_000,
    ))

    # Model list.
    query(c2p, 3, Obj("client.getWorkerTypesV2"))
    answer(p2c, 3, Obj("client.workerTypesV2", types=[
        {"name": MODEL, "workers": [
            {"flags": 0, "coefficient": 1000, "active_requests": 3, "max_active_requests": 16},
            {"flags": 0, "coefficient": 1500, "active_requests": 0, "max_active_requests": 8},
        ]},
        {"name": MODEL2, "workers": [
            {"flags": 0, "coefficient": 2000, "active_requests": 7, "max_active_requests": 7},
        ]},
    ]))
    query(c2p, 4, Obj("client.getWorkerTypes"))
    answer(p2c, 4, Obj("client.workerTypes", types=[
        {"name": MODEL, "active_workers": 2, "coefficient_min": 1000,
         "coefficient_bucket50": 1000, "coefficient_max": 1500},
        {"name": MODEL2, "active_workers": 1, "coefficient_min": 2000,
         "coefficient_bucket50": 2000, "coefficient_max": 2000},
    ]))

    # A streamed chat completion with debug info and timings (final_info flags 0|1).
    r1 = int256()
    message(c2p, Obj(
        "client.runQueryEx", model_name=MODEL,
        query=chat_request("Explain TL serialization in one paragraph."),
        max_coefficient=4000, max_tokens=512, timeout=120.0, request_id=r1,
        min_config_version=7, flags=1, enable_debug=True,
    ))
    message(p2c, Obj("client.queryAnswerEx", request_id=r1, answer=chat_response_head(), flags=0))
    message(p2c, Obj("client.queryAnswerPartEx", request_id=r1,
                     answer=sse("TL (Type Language) describes"), flags=0), "client.queryAnswerPartEx-chunk")
    message(p2c, Obj(
        "client.queryAnswerPartEx", request_id=r1,
        answer=sse(" binary objects.", "stop") + b"data: [DONE]\n\n", flags=1,
        final_info={
            "flags": 3, "tokens_used": tokens(42, 0, 311, 0),
            "worker_debug": '{"worker":"w-3","queue_ms":2}',
            "proxy_debug": '{"proxy":"p-1","worker_coefficient":1000}',
            "proxy_start_time": 1760000000.125, "proxy_end_time": 1760000004.5,
            "worker_start_time": 1760000000.25, "worker_end_time": 1760000004.375,
        },
    ), "client.queryAnswerPartEx-final-debug-timings")

    # Non-streamed answer in one message, final info with tokens only.
    r2 = int256()
    message(c2p, Obj(
        "client.runQueryEx", model_name=MODEL, query=chat_request("Say hi.", stream=False),
        max_coefficient=4000, max_tokens=16, timeout=30.0, request_id=r2,
        min_config_version=7, flags=0,
    ), "client.runQueryEx-nodebug")
    body = (b'{"id":"chatcmpl-80b1","object":"chat.completion","choices":[{"index":0,'
            b'"message":{"role":"assistant","content":"Hi!"},"finish_reason":"stop"}]}')
    message(p2c, Obj(
        "client.queryAnswerEx", request_id=r2, answer=chat_response_head(False, body), flags=1,
        final_info={"flags": 0, "tokens_used": tokens(20, 16, 3, 0)},
    ), "client.queryAnswerEx-final")

    # Errors: without and with final info (timings only).
    r3 = int256()
    message(c2p, Obj(
        "client.runQueryEx", model_name=MODEL2, query=chat_request("Prove P != NP."),
        max_coefficient=1000, max_tokens=4096, timeout=300.0, request_id=r3,
        min_config_version=7, flags=1, enable_debug=False,
    ))
    message(p2c, Obj("client.queryAnswerErrorEx", request_id=r3, error_code=503,
                     error="no worker with coefficient <= 1000 for this model", flags=0))
    r4 = int256()
    message(c2p, Obj(
        "client.runQueryEx", model_name=MODEL, query=chat_request("Count to ten."),
        max_coefficient=4000, max_tokens=64, timeout=5.0, request_id=r4,
        min_config_version=7, flags=0,
    ), "client.runQueryEx-short-timeout")
    message(p2c, Obj(
        "client.queryAnswerErrorEx", request_id=r4, error_code=652, error="query timed out",
        flags=1,
        final_info={"flags": 2, "tokens_used": tokens(25, 0, 17, 0),
                    "proxy_start_time": 1760000010.0, "proxy_end_time": 1760000015.0,
                    "worker_start_time": 1760000010.0625, "worker_end_time": 1760000015.0},
    ), "client.queryAnswerErrorEx-final-timings")

    # Version 3: the caller goes away, the client cancels.
    r5 = int256()
    message(c2p, Obj(
        "client.runQueryEx", model_name=MODEL, query=chat_request("Write a long story."),
        max_coefficient=4000, max_tokens=4096, timeout=600.0, request_id=r5,
        min_config_version=7, flags=0,
    ), "client.runQueryEx-to-cancel")
    message(c2p, Obj("client.cancelQuery", request_id=r5, reason="http client disconnected"))
    message(p2c, Obj(
        "client.queryAnswerPartEx", request_id=r5, answer=b"", flags=1,
        final_info={"flags": 1, "tokens_used": tokens(30, 0, 120, 0),
                    "worker_debug": "cancelled", "proxy_debug": "cancelled by client"},
    ), "client.queryAnswerPartEx-final-debug")

    # Protocol version 0 (legacy) answers.
    r6 = int256()
    message(c2p, Obj(
        "client.runQuery", model_name=MODEL, query=chat_request("Legacy streaming."),
        max_coefficient=4000, max_tokens=128, timeout=60.0, request_id=r6, min_config_version=7,
    ))
    message(p2c, Obj("client.queryAnswer", answer=chat_response_head(), is_completed=False,
                     request_id=r6, request_tokens_used=tokens(12, 0, 0, 0)))
    message(p2c, Obj("client.queryAnswerPart", answer=sse("Once upon a time", "stop"),
                     is_completed=True, request_id=r6, request_tokens_used=tokens(12, 0, 40, 0)))
    r7 = int256()
    message(c2p, Obj(
        "client.runQuery", model_name=MODEL, query=chat_request("Legacy failure."),
        max_coefficient=4000, max_tokens=128, timeout=60.0, request_id=r7, min_config_version=7,
    ), "client.runQuery-2")
    message(p2c, Obj("client.queryAnswerPart", answer=sse("Partial"), is_completed=False,
                     request_id=r7, request_tokens_used=tokens(12, 0, 1, 0)),
            "client.queryAnswerPart-chunk")
    message(p2c, Obj("client.queryAnswerPartError", error_code=502, error="worker disconnected",
                     request_id=r7, request_tokens_used=tokens(12, 0, 1, 0)))
    r8 = int256()
    message(c2p, Obj(
        "client.runQuery", model_name="unknown/model", query=chat_request("?"),
        max_coefficient=4000, max_tokens=128, timeout=60.0, request_id=r8, min_config_version=7,
    ), "client.runQuery-3")
    message(p2c, Obj("client.queryAnswerError", error_code=404, error="unknown model",
                     request_id=r8, request_tokens_used=tokens(0, 0, 0, 0)))

    # Keepalive, payments, refunds.
    ping = rlong()
    c2p.send("tcp.ping", Obj("tcp.ping", id=ping))
    p2c.send("tcp.pong", Obj("tcp.pong", id=ping))
    message(p2c, Obj(
        "proxy.clientRequestPayment", request_id=r1, signed_payment=SIGNED_PAYMENT,
        db_tokens=120_698, max_tokens=10_000_000, request_tokens=353,
    ))
    query(c2p, 5, Obj("client.updatePaymentStatus"))
    answer(p2c, 5, Obj("client.paymentStatus", signed_payment=SIGNED_PAYMENT,
                       db_tokens=121_051, max_tokens=10_000_000))
    query(c2p, 6, Obj("client.requestRefund"))
    answer(p2c, 6, Obj("client.refundRejected", active_queries=1))
    query(c2p, 7, Obj("client.requestRefund"))
    answer(p2c, 7, Obj("client.refund", data=rbytes(100)))
    query(c2p, 8, Obj("client.getWorkerTypesV2"))
    p2c.send("tcp.queryError", Obj("tcp.queryError", id=8, code=652,
                                   message="query timed out after 10 s"))
    ping = rlong()
    p2c.send("tcp.ping", Obj("tcp.ping", id=ping))
    c2p.send("tcp.pong", Obj("tcp.pong", id=ping))


def client_session_long_auth():
    # A version-0 client (no proto range) that authorises with the long method.
    c2p, p2c = Stream("client-proxy-long"), Stream("proxy-client-long")
    cid = rlong()
    c2p.send("tcp.connect", Obj("tcp.connect", id=cid))
    p2c.send("tcp.connected", Obj("tcp.connected", id=cid))
    query(c2p, 1, Obj(
        "client.connectToProxy",
        params={"flags": 1, "client_owner_address": CLIENT_OWNER, "is_test": False},
        min_config_version=0,
    ))
    answer(p2c, 1, Obj(
        "client.connectedToProxy",
        params={"flags": 0, "proxy_public_key": PROXY_KEY, "proxy_owner_address": PROXY_OWNER,
                "proxy_sc_address": PROXY_SC},
        client_sc_address=CLIENT_SC,
        auth=Obj("client.proxyConnectionAuthLong", nonce=rlong()),
        signed_payment=SIGNED_PAYMENT,
    ))
    query(c2p, 2, Obj("client.authorizeWithProxyLong"))
    answer(p2c, 2, Obj("client.authorizationWithProxyFailed", error_code=403,
                       error="client contract is not active"))


def worker_session():
    w2p, p2w = Stream("worker-proxy"), Stream("proxy-worker")
    cid = rlong()
    w2p.send("tcp.connect", Obj("tcp.connect", id=cid))
    p2w.send("tcp.connected", Obj("tcp.connected", id=cid))
    query(w2p, 1, Obj("worker.connectToProxy", params={
        "flags": 3, "worker_owner_address": WORKER_OWNER, "model": MODEL, "coefficient": 1000,
        "is_test": True, "proxy_cnt": 2, "max_active_requests": 16,
        "min_proto_version": 1, "max_proto_version": 2,
    }))
    answer(p2w, 1, Obj(
        "worker.connectedToProxy",
        params={"flags": 3, "proxy_public_key": PROXY_KEY, "proxy_owner_address": PROXY_OWNER,
                "proxy_sc_address": PROXY_SC, "is_test": True, "proto_version": 2},
        worker_sc_address=WORKER_SC,
    ))
    query(p2w, 1, Obj("worker.proxyHandshakeComplete", is_disabled=False))
    answer(w2p, 1, Obj("worker.proxyHandshakeCompleted"))
    query(w2p, 2, Obj("worker.compareBalanceWithProxy", tokens_committed_to_blockchain=50_000,
                      tokens_committed_to_db=51_200, max_tokens=2_000_000))
    answer(p2w, 2, Obj("worker.compareBalanceWithProxyResult", signed_payment=SIGNED_PAYMENT,
                       tokens_committed_to_db=51_200, max_tokens=2_000_000, error_code=0))
    query(w2p, 3, Obj("worker.extendedCompareBalanceWithProxy", tokens_committed_to_db=51_200,
                      other=rbytes(40)))
    answer(p2w, 3, Obj("worker.extendedCompareBalanceWithProxyResult", error_code=0))
    query(w2p, 4, Obj("worker.updatePaymentStatus"))
    answer(p2w, 4, Obj("worker.paymentStatus", signed_payment=Obj("proxy.signedPaymentEmpty"),
                       db_tokens=51_200, max_tokens=2_000_000))

    # Streamed query with debug and timings.
    r1 = int256()
    message(p2w, Obj(
        "proxy.runQueryEx", query=chat_request("Explain TL serialization in one paragraph."),
        signed_payment=SIGNED_PAYMENT, coefficient=1000, timeout=119.5, request_id=r1,
        flags=1, enable_debug=True,
    ))
    message(w2p, Obj("proxy.queryAnswerEx", request_id=r1, answer=chat_response_head(), flags=0))
    message(w2p, Obj("proxy.queryAnswerPartEx", request_id=r1,
                     answer=sse("TL (Type Language) describes"), flags=0), "proxy.queryAnswerPartEx-chunk")
    message(w2p, Obj(
        "proxy.queryAnswerPartEx", request_id=r1,
        answer=sse(" binary objects.", "stop") + b"data: [DONE]\n\n", flags=1,
        final_info={"flags": 3, "tokens_used": tokens(42, 0, 311, 0),
                    "worker_debug": '{"worker":"w-3","queue_ms":2}',
                    "worker_start_time": 1760000000.25, "worker_end_time": 1760000004.375},
    ), "proxy.queryAnswerPartEx-final-debug-timings")
    message(p2w, Obj(
        "proxy.workerRequestPayment", request_id=r1, signed_payment=SIGNED_PAYMENT,
        db_tokens=51_553, max_tokens=2_000_000, request_tokens=353,
        request_client_owner=CLIENT_OWNER,
    ))

    r2 = int256()
    message(p2w, Obj(
        "proxy.runQueryEx", query=chat_request("Say hi.", stream=False),
        signed_payment=Obj("proxy.signedPaymentEmpty"), coefficient=1000, timeout=29.5,
        request_id=r2, flags=0,
    ), "proxy.runQueryEx-nodebug")
    message(w2p, Obj(
        "proxy.queryAnswerEx", request_id=r2, answer=chat_response_head(False, b"{}"), flags=1,
        final_info={"flags": 1, "tokens_used": tokens(20, 16, 3, 0), "worker_debug": "{}"},
    ), "proxy.queryAnswerEx-final-debug")
    r3 = int256()
    message(p2w, Obj(
        "proxy.runQueryEx", query=chat_request("Too long."), signed_payment=SIGNED_PAYMENT,
        coefficient=1000, timeout=299.5, request_id=r3, flags=0,
    ), "proxy.runQueryEx-3")
    message(w2p, Obj("proxy.queryAnswerErrorEx", request_id=r3, error_code=400,
                     error="prompt exceeds the context window", flags=0))
    r4 = int256()
    message(p2w, Obj(
        "proxy.runQueryEx", query=chat_request("Count to ten."), signed_payment=SIGNED_PAYMENT,
        coefficient=1000, timeout=4.5, request_id=r4, flags=0,
    ), "proxy.runQueryEx-4")
    message(w2p, Obj(
        "proxy.queryAnswerErrorEx", request_id=r4, error_code=652, error="timeout", flags=1,
        final_info={"flags": 2, "tokens_used": tokens(25, 0, 17, 0),
                    "worker_start_time": 1760000010.0625, "worker_end_time": 1760000014.5},
    ), "proxy.queryAnswerErrorEx-final-timings")

    # Version 3 cancellation.
    r5 = int256()
    message(p2w, Obj(
        "proxy.runQueryEx", query=chat_request("Write a long story."),
        signed_payment=SIGNED_PAYMENT, coefficient=1000, timeout=599.5, request_id=r5, flags=0,
    ), "proxy.runQueryEx-to-cancel")
    message(p2w, Obj("proxy.cancelQuery", request_id=r5, reason="client cancelled"))
    message(w2p, Obj(
        "proxy.queryAnswerPartEx", request_id=r5, answer=b"", flags=1,
        final_info={"flags": 0, "tokens_used": tokens(30, 0, 120, 0)},
    ), "proxy.queryAnswerPartEx-final")

    # Legacy (version 0) answers.
    r6 = int256()
    message(p2w, Obj("proxy.runQuery", query=chat_request("Legacy streaming."),
                     signed_payment=SIGNED_PAYMENT, coefficient=1000, timeout=59.5, request_id=r6))
    message(w2p, Obj("proxy.queryAnswer", answer=chat_response_head(), is_completed=False,
                     request_id=r6, tokens_used=tokens(12, 0, 0, 0)))
    message(w2p, Obj("proxy.queryAnswerPart", answer=sse("Once upon a time", "stop"),
                     is_completed=True, request_id=r6, tokens_used=tokens(12, 0, 40, 0)))
    r7 = int256()
    message(p2w, Obj("proxy.runQuery", query=chat_request("Legacy failure."),
                     signed_payment=SIGNED_PAYMENT, coefficient=1000, timeout=59.5, request_id=r7),
            "proxy.runQuery-2")
    message(w2p, Obj("proxy.queryAnswerPartError", error_code=502, error="inference crashed",
                     request_id=r7, tokens_used=tokens(12, 0, 1, 0)))
    r8 = int256()
    message(p2w, Obj("proxy.runQuery", query=chat_request("?"), signed_payment=SIGNED_PAYMENT,
                     coefficient=1000, timeout=59.5, request_id=r8), "proxy.runQuery-3")
    message(w2p, Obj("proxy.queryAnswerError", error_code=429, error="too many active requests",
                     request_id=r8, tokens_used=tokens(0, 0, 0, 0)))

    # Worker-side notifications and keepalive.
    message(w2p, Obj("worker.newCoefficient", new_coefficient=1200))
    message(w2p, Obj("worker.enabledDisabled", disabled=1))
    ping = rlong()
    p2w.send("tcp.ping", Obj("tcp.ping", id=ping))
    w2p.send("tcp.pong", Obj("tcp.pong", id=ping))
    query(w2p, 5, Obj("worker.updatePaymentStatus"))
    p2w.send("tcp.queryError", Obj("tcp.queryError", id=5, code=651, message="proxy is not ready"))


def objects():
    def obj(label, o):
        VECTORS.append((label, "object", o.encode()))

    hashes = [int256() for _ in range(3)]
    proxies = [{"seqno": 1, "address": "203.0.113.7:11001"},
               {"seqno": 2, "address": "198.51.100.20:11001"}]
    v5 = Obj(
        "rootConfig.configV5", root_owner_address=PROXY_OWNER, proxy_hashes=hashes[:2],
        registered_proxies=proxies, last_proxy_seqno=2, worker_hashes=hashes[1:],
        model_hashes=[int256()], version=17, struct_version=5, params_version=3,
        unique_id=0x5EED, is_test=1, price_per_token=2000, worker_fee_per_token=1800,
        prompt_tokens_price_multiplier=10000, cached_tokens_price_multiplier=1000,
        completion_tokens_price_multiplier=80000, reasoning_tokens_price_multiplier=80000,
        proxy_delay_before_close=86400, client_delay_before_close=172800,
        min_proxy_stake=1_000_000_000_000, min_client_stake=10_000_000_000,
        proxy_sc_code=sc_code(300), worker_sc_code=sc_code(120), client_sc_code=sc_code(40),
    )
    pseudo = Obj(
        "rootConfig.pseudo", proxy_hashes=hashes[:1], worker_hashes=hashes[1:2],
        model_hashes=hashes[2:], model_types=[MODEL, MODEL2], registered_proxies=proxies[:1],
        price_per_token=2000, worker_fee_per_token=1800, last_proxy_seqno=1, version=9,
        params_version=2, proxy_sc_code=sc_code(16), worker_sc_code=sc_code(8),
        client_sc_code=b"", root_owner_address=PROXY_OWNER,
    )
    obj("rootConfig.configV5", v5)
    obj("rootConfig.pseudo", pseudo)
    obj("rootConfig.registeredProxy", Obj("rootConfig.registeredProxy", **proxies[0]))
    block = {"workchain": -1, "shard": -0x8000000000000000, "seqno": 48_123_456,
             "root_hash": int256(), "file_hash": int256()}
    obj("ton.blockIdExt", Obj("ton.blockIdExt", **block))
    obj("proxyDb.configEmpty", Obj("proxyDb.configEmpty"))
    obj("proxyDb.configV4", Obj(
        "proxyDb.configV4", root_contract_address=ROOT_CONTRACT, is_testnet=1,
        root_contract_state=v5, root_contract_state_block_ts=1_760_000_000, sc_block_id=block,
        last_seqno_committed_to_blockchain=41,
        pending_blockchain_seqno_commits=[{"seqno": 42, "session_hash": int256()},
                                          {"seqno": 43, "session_hash": int256()}],
    ))
    obj("proxyDb.configV4Disabled", Obj(
        "proxyDb.configV4Disabled", root_contract_address=ROOT_CONTRACT, is_testnet=0,
        root_contract_state=pseudo, root_contract_state_block_ts=1_759_000_000,
        disabled_until_version=18,
    ))
    obj("proxyDb.clientInfo", Obj(
        "proxyDb.clientInfo", owner_address=CLIENT_OWNER, sc_address=CLIENT_SC, status=1,
        balance=5_000_000_000, sc_tokens_used=100_000, tokens_used=121_051,
        secret_hash=int256(), last_request_at=1_760_000_004,
    ))
    obj("proxyDb.clientInfoV2", Obj(
        "proxyDb.clientInfoV2", owner_address=CLIENT_OWNER, sc_address=CLIENT_SC, status=1,
        balance=5_000_000_000, stake=10_000_000_000, sc_tokens_used=100_000,
        tokens_used=121_051, secret_hash=int256(), last_request_at=1_760_000_004,
    ))
    obj("proxyDb.workerInfo", Obj(
        "proxyDb.workerInfo", owner_address=WORKER_OWNER, sc_address=WORKER_SC,
        sc_tokens=50_000, tokens=51_553, last_request_at=1_760_000_004,
    ))
    obj("proxyDb.pendingBlockchainSeqnoCommit", Obj(
        "proxyDb.pendingBlockchainSeqnoCommit", seqno=42, session_hash=int256()))
    obj("proxyDb.oldClient", Obj("proxyDb.oldClient", owner_address=CLIENT_OWNER,
                                 tokens=99_000, next_client=""))
    obj("proxyDb.oldWorker", Obj("proxyDb.oldWorker", owner_address=WORKER_OWNER,
                                 tokens=77_000, next_worker=WORKER_OWNER))
    obj("proxyDb.oldInstance", Obj(
        "proxyDb.oldInstance", contract_address=PROXY_SC, closing_state=2,
        close_at=1_760_086_400, next_client=CLIENT_OWNER, next_worker="",
        root_contract_state=v5,
    ))
    obj("keyManagerDb.configEmpty", Obj("keyManagerDb.configEmpty"))
    obj("keyManagerDb.configV1", Obj("keyManagerDb.configV1", root_contract_version=17))
    obj("keyManagerDb.key", Obj(
        "keyManagerDb.key", private_key=int256(), for_proxies=True, for_workers=False,
        valid_since_config_version=15, valid_since_utime=1_759_000_000,
        valid_until_utime=1_761_592_000,
    ))
    keys = [{"valid_until_utime": 1_761_592_000, "private_key": int256()},
            {"valid_until_utime": 1_764_184_000, "private_key": int256()}]
    obj("keyManager.getWorkerPrivateKeys", Obj("keyManager.getWorkerPrivateKeys",
                                               min_config_version=17))
    obj("keyManager.getProxyPrivateKeys", Obj("keyManager.getProxyPrivateKeys",
                                              min_config_version=17))
    obj("keyManager.privateKeys", Obj("keyManager.privateKeys", keys=keys))
    obj("keyManager.privateKey", Obj("keyManager.privateKey", **keys[0]))
    obj("proxyRunner.config", Obj(
        "proxyRunner.config", is_test=True, is_testnet=True, workers_rpc_port=11001,
        client_rpc_port=11002, http_port=8080, owner_address=PROXY_OWNER,
        root_contract_address=ROOT_CONTRACT, machine_specific_private_key=int256(),
        node_wallet_key=int256(), ton_config_filename="/etc/cocoon/testnet-global.config.json",
        db_path="/var/lib/cocoon/proxy-db", check_worker_hashes=True, image_hash=int256(),
        http_access_hash="3f2a9c0d",
    ))
    obj("workerRunner.config", Obj(
        "workerRunner.config", is_test=True, is_testnet=True, http_port=8081,
        owner_address=WORKER_OWNER, proxy_connections=2,
        connect_to_proxy_via="203.0.113.7:11001", model_name=MODEL, coefficient=1000,
        root_contract_address=ROOT_CONTRACT, node_wallet_key=int256(),
        forward_requests_to="http://127.0.0.1:8000", ton_config_filename="testnet.json",
        check_proxy_hashes=False, max_active_requests=16, image_hash=int256(),
        http_access_hash="",
    ))
    obj("clientRunner.config", Obj(
        "clientRunner.config", is_test=False, is_testnet=False, http_port=10000,
        owner_address=CLIENT_OWNER, proxy_connections=1, connect_to_proxy_via="",
        root_contract_address=ROOT_CONTRACT, node_wallet_key=int256(), check_proxy_hashes=True,
        secret_string="correct horse battery staple", ton_config_filename="mainnet.json",
        http_access_hash="b7e1",
    ))
    obj("keyStorageRunner.config", Obj(
        "keyStorageRunner.config", is_test=True, is_testnet=True, rpc_port=11010,
        http_port=8090, root_contract_address=ROOT_CONTRACT,
        machine_specific_private_key=int256(), ton_config_filename="testnet.json",
        db_path="/var/lib/cocoon/keys", check_hashes=True, image_hash=int256(),
        http_access_hash="ff00",
    ))
    obj("test.query", Obj("test.query", id=1))
    obj("test.answer", Obj("test.answer", id=1))
    # A few session objects on their own too (e.g. as COCOON logs them).
    obj("http.request", chat_request("Standalone request object."))
    obj("http.header", Obj("http.header", name="X-Request-Id", value="5b0e6c1f"))
    obj("client.getWorkerTypesV2", Obj("client.getWorkerTypesV2"))


# --------------------------------------------------------------------------------------------
# Invalid vectors
# --------------------------------------------------------------------------------------------

INVALID = []  # (name, kind, expected error substring, bytes)


def invalid():
    def bad(name, kind, expected, data):
        INVALID.append((name, kind, expected, data))

    ping = Obj("tcp.ping", id=7).encode()
    # Framing.
    body = Obj("tcp.query", id=1, data=Obj("client.getWorkerTypesV2")).encode()
    bad("frame-truncated-body", "frame", "truncated frame", frame(0, body)[:-5])
    bad("frame-truncated-header", "frame", "truncated frame", frame(0, ping)[:6])
    bad("frame-len-above-16MiB", "frame", "frame too long: 16777217 bytes",
        u32((1 << 24) + 1) + i32(0) + ping)
    bad("frame-len-4GiB", "frame", "frame too long: 4294967295 bytes", u32(0xFFFFFFFF) + i32(0))
    bad("frame-len-below-4", "frame", "frame too short: 3 bytes", u32(3) + i32(0) + b"\x01\x02\x03")
    bad("frame-len-zero", "frame", "frame too short: 0 bytes", u32(0) + i32(0))
    bad("frame-bad-seqno", "frame", "bad frame seqno: expected 1, got 5",
        frame(0, ping) + frame(5, Obj("tcp.pong", id=7).encode()))
    bad("frame-first-seqno-not-zero", "frame", "bad frame seqno: expected 0, got 1", frame(1, ping))
    # Payload.
    bad("frame-unknown-packet-constructor", "frame", "unknown constructor id deadbeef for tcp.Packet",
        frame(0, u32(0xDEADBEEF) + i64(1)))
    bad("frame-trailing-garbage", "frame", "4 trailing bytes after value",
        frame(0, ping + b"\x00\x00\x00\x00"))
    bad("frame-payload-too-short", "frame", "unexpected end of input",
        frame(0, u32(DECLS["tcp.ping"].id) + b"\x01\x02\x03\x04"))
    bad("frame-nested-unknown-constructor", "frame", "unknown constructor id 12345678",
        frame(0, Obj("tcp.query", id=1, data=u32(0x12345678) + i32(0)).encode()))
    bad("frame-nested-invalid-utf8", "frame", "string is not valid UTF-8",
        frame(0, Obj("tcp.packet", data=u32(DECLS["client.cancelQuery"].id) + int256()
                     + tl_bytes(b"\xff\xfe\xfd")).encode()))
    bad("frame-nested-bad-flags", "frame", "unknown bits 0x4 in flags",
        frame(0, Obj("tcp.packet", data=u32(DECLS["client.queryAnswerEx"].id) + int256()
                     + tl_bytes(b"x") + u32(4)).encode()))
    # Objects.
    bad("object-unknown-constructor", "object", "unknown constructor id 01020304", u32(0x01020304))
    bad("object-bad-bool", "object", "invalid Bool: constructor id 11223344",
        u32(DECLS["worker.proxyHandshakeComplete"].id) + u32(0x11223344))
    bad("object-bad-bool-in-params", "object", "client.params.is_test: invalid Bool",
        u32(DECLS["client.connectToProxy"].id) + u32(1) + tl_bytes(CLIENT_OWNER.encode())
        + u32(0) + i32(0))
    bad("object-nonzero-padding", "object", "non-canonical encoding: non-zero string padding",
        u32(DECLS["tcp.queryError"].id) + i64(1) + i32(652) + b"\x02ok\x01")
    bad("object-long-length-for-short-string", "object",
        "non-canonical encoding: short string with long length prefix",
        u32(DECLS["tcp.queryError"].id) + i64(1) + i32(652) + b"\xfe\x02\x00\x00ok\x00\x00")
    bad("object-vector-count-too-large", "object", "length 1000 exceeds the remaining",
        u32(DECLS["client.workerTypesV2"].id) + i32(1000) + tl_bytes(b"m") + i32(0))
    bad("object-vector-count-negative", "object", "negative vector length -1",
        u32(DECLS["keyManager.privateKeys"].id) + i32(-1))
    bad("object-bytes-length-too-large", "object", "length 200 exceeds the remaining",
        u32(DECLS["tcp.packet"].id) + b"\xc8abc")
    bad("object-trailing-garbage", "object", "4 trailing bytes after value",
        ping + b"\xde\xad\xbe\xef")
    # (Error-text fields such as tcp.queryError.message are decoded lossily, so use an address.)
    bad("object-invalid-utf8", "object", "rootConfig.registeredProxy.address: string is not valid UTF-8",
        u32(DECLS["rootConfig.registeredProxy"].id) + i32(1) + tl_bytes(b"10.0.0.1:\xc3\x28"))
    bad("object-unknown-flag-bits", "object", "unknown bits 0x4 in flags",
        u32(DECLS["client.runQueryEx"].id) + tl_bytes(MODEL.encode()) + tl_bytes(b"")
        + i32(1000) + i32(16) + f64(30.0) + int256() + i32(7) + u32(5) + tl_bool(True))
    bad("object-flags-on-workerInstanceV2", "object", "unknown bits 0x1 in flags",
        u32(DECLS["client.workerInstanceV2"].id) + u32(1) + i32(1000) + i32(0) + i32(8))
    bad("object-truncated", "object", "unexpected end of input",
        Obj("client.connectToProxy", params={"flags": 0, "client_owner_address": CLIENT_OWNER},
            min_config_version=1).encode()[:-2])
    bad("object-wrong-type-in-boxed-field", "object", "unknown constructor id b347ce64 for client.ProxyConnectionAuth",
        Obj("client.connectedToProxy",
            params={"flags": 0, "proxy_public_key": PROXY_KEY, "proxy_owner_address": "",
                    "proxy_sc_address": ""},
            client_sc_address="", auth=Obj("client.proxyConnectionAuthLong", nonce=1),
            signed_payment=Obj("proxy.signedPaymentEmpty")).encode().replace(
                u32(DECLS["client.proxyConnectionAuthLong"].id), u32(DECLS["proxy.signedPaymentEmpty"].id), 1))


# --------------------------------------------------------------------------------------------

def main():
    client_session()
    client_session_long_auth()
    worker_session()
    objects()
    invalid()

    here = os.path.dirname(os.path.abspath(__file__))
    names = set()
    valid = ["# Generated by testvectors/tl/handmade.py (independent of crates/tl). Do not edit.\n",
             "# name<TAB>kind<TAB>hex; frames are named <stream>/<label> and numbered per stream.\n"]
    for name, kind, data in VECTORS:
        assert name not in names, name
        names.add(name)
        valid.append(f"{name}\t{kind}\t{data.hex()}\n")
    invalid_lines = ["# Generated by testvectors/tl/handmade.py (independent of crates/tl). Do not edit.\n",
               "# name<TAB>kind<TAB>expected error substring<TAB>hex\n"]
    for name, kind, expected, data in INVALID:
        assert "\t" not in expected
        invalid_lines.append(f"{name}\t{kind}\t{expected}\t{data.hex()}\n")
    outputs = {"handmade.txt": "".join(valid), "invalid.txt": "".join(invalid_lines)}
    if "--check" in sys.argv[1:]:
        # CI: the committed files must be exactly what this script writes.
        stale = []
        for fname, text in outputs.items():
            with open(os.path.join(here, fname)) as f:
                if f.read() != text:
                    stale.append(fname)
        if stale:
            print(f"stale: {', '.join(stale)}; run python3 testvectors/tl/handmade.py")
            sys.exit(1)
        print(f"{len(VECTORS)} vectors and {len(INVALID)} invalid vectors are up to date")
        return
    for fname, text in outputs.items():
        with open(os.path.join(here, fname), "w") as f:
            f.write(text)

    missing = sorted(set(DECLS) - ENCODED)
    print(f"wrote {len(VECTORS)} vectors and {len(INVALID)} invalid vectors; "
          f"{len(DECLS) - len(missing)} of {len(DECLS)} declarations used")
    if missing:
        print("not used:", ", ".join(missing))


if __name__ == "__main__":
    main()
