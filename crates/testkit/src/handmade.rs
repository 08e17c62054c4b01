//! COCOON messages encoded by hand, byte by byte, from the layout rules of the scheme (as
//! `testvectors/tl/handmade.py` does): constructor ids are literals from COCOON's
//! `cocoon_api.tlo` (listed in docs/protocol.md's interop table), fields are written with the
//! TL rules (little-endian `int`/`long`/`double`, raw `int256`, padded `bytes`/`string`, boxed
//! `Bool`, bare `vector` of bare `http.header`, bare `tokensUsed`). Nothing here uses
//! `cocoon-tl`'s encoder, so a test that plays these frames at a role checks our decoder and
//! handlers against the scheme, not against themselves.

/// `boolTrue`.
pub const BOOL_TRUE: u32 = 0x997275b5;
/// `boolFalse`.
pub const BOOL_FALSE: u32 = 0xbc799737;

/// A TL object under construction.
#[derive(Default)]
pub struct Tl(pub Vec<u8>);

impl Tl {
    /// A boxed object: its constructor id first.
    pub fn boxed(id: u32) -> Tl {
        Tl(id.to_le_bytes().to_vec())
    }

    pub fn int(mut self, v: i32) -> Tl {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn long(mut self, v: i64) -> Tl {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn double(mut self, v: f64) -> Tl {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn int256(mut self, v: [u8; 32]) -> Tl {
        self.0.extend_from_slice(&v);
        self
    }

    pub fn bool(self, v: bool) -> Tl {
        self.int(if v { BOOL_TRUE } else { BOOL_FALSE } as i32)
    }

    /// `bytes`/`string`: a 1-byte length up to 253, else `0xfe` and 3 bytes; zero padding
    /// to a multiple of 4, the length prefix included.
    pub fn bytes(mut self, v: &[u8]) -> Tl {
        let head = if v.len() <= 253 {
            self.0.push(v.len() as u8);
            1
        } else {
            self.0.push(0xfe);
            self.0
                .extend_from_slice(&(v.len() as u32).to_le_bytes()[..3]);
            4
        };
        self.0.extend_from_slice(v);
        let pad = (4 - (head + v.len()) % 4) % 4;
        self.0.extend(std::iter::repeat_n(0, pad));
        self
    }

    pub fn string(self, v: &str) -> Tl {
        self.bytes(v.as_bytes())
    }

    /// Raw bytes of an object written elsewhere (a boxed field).
    pub fn raw(mut self, v: &[u8]) -> Tl {
        self.0.extend_from_slice(v);
        self
    }

    /// Bare `(vector http.header)`.
    pub fn headers(self, h: &[(&str, &str)]) -> Tl {
        let mut t = self.int(h.len() as i32);
        for (n, v) in h {
            t = t.string(n).string(v);
        }
        t
    }

    /// Bare `tokensUsed prompt cached completion reasoning total`.
    pub fn tokens(self, t: [i64; 5]) -> Tl {
        t.iter().fold(self, |acc, v| acc.long(*v))
    }

    pub fn done(self) -> Vec<u8> {
        self.0
    }
}

/// `http.request#47492de5 method url http_version headers payload`.
pub fn http_request(url: &str, body: &[u8]) -> Vec<u8> {
    Tl::boxed(0x47492de5)
        .string("POST")
        .string(url)
        .string("HTTP/1.1")
        .headers(&[("Content-Type", "application/json")])
        .bytes(body)
        .done()
}

/// `http.response#1cd0c42b http_version status_code reason headers payload`.
pub fn http_response(status: i32, headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    Tl::boxed(0x1cd0c42b)
        .string("HTTP/1.1")
        .int(status)
        .string("OK")
        .headers(headers)
        .bytes(payload)
        .done()
}

/// Worker → proxy, protocol 0: `proxy.queryAnswer#37e5f725 answer:bytes is_completed:Bool
/// request_id:int256 tokens_used:tokensUsed`.
pub fn proxy_query_answer(answer: &[u8], completed: bool, id: [u8; 32], t: [i64; 5]) -> Vec<u8> {
    answer_v0(0x37e5f725, answer, completed, id, t)
}

/// Worker → proxy, protocol 0: `proxy.queryAnswerPart#72eb00ee answer:bytes
/// is_completed:Bool request_id:int256 tokens_used:tokensUsed`.
pub fn proxy_query_answer_part(
    answer: &[u8],
    completed: bool,
    id: [u8; 32],
    t: [i64; 5],
) -> Vec<u8> {
    answer_v0(0x72eb00ee, answer, completed, id, t)
}

/// Worker → proxy, protocol 0: `proxy.queryAnswerError#669d014e error_code:int error:string
/// request_id:int256 tokens_used:tokensUsed`.
pub fn proxy_query_answer_error(code: i32, error: &str, id: [u8; 32], t: [i64; 5]) -> Vec<u8> {
    error_v0(0x669d014e, code, error, id, t)
}

/// Worker → proxy, protocol 0: `proxy.queryAnswerPartError#940e1168 error_code:int
/// error:string request_id:int256 tokens_used:tokensUsed`.
pub fn proxy_query_answer_part_error(code: i32, error: &str, id: [u8; 32], t: [i64; 5]) -> Vec<u8> {
    error_v0(0x940e1168, code, error, id, t)
}

/// Worker → proxy: `proxy.queryAnswerErrorEx#8f7fb0a7 request_id error_code error flags=1
/// final_info:proxy.queryFinalInfo` (bare, flags 0: usage only).
pub fn proxy_query_answer_error_ex(id: [u8; 32], code: i32, error: &str, t: [i64; 5]) -> Vec<u8> {
    Tl::boxed(0x8f7fb0a7)
        .int256(id)
        .int(code)
        .string(error)
        .int(1)
        .int(0)
        .tokens(t)
        .done()
}

/// Worker → proxy: `worker.enabledDisabled#b3b71039 disabled:int`.
pub fn worker_enabled_disabled(disabled: bool) -> Vec<u8> {
    Tl::boxed(0xb3b71039).int(i32::from(disabled)).done()
}

/// Worker → proxy: `worker.newCoefficient#6af092b0 new_coefficient:int`.
pub fn worker_new_coefficient(c: i32) -> Vec<u8> {
    Tl::boxed(0x6af092b0).int(c).done()
}

/// Client → proxy, protocol 0: `client.runQuery#bc748f32 model_name query:bytes
/// max_coefficient:int max_tokens:int timeout:double request_id:int256
/// min_config_version:int`.
pub fn client_run_query(
    model: &str,
    query: &[u8],
    max_coefficient: i32,
    max_tokens: i32,
    timeout: f64,
    id: [u8; 32],
) -> Vec<u8> {
    Tl::boxed(0xbc748f32)
        .client_query(model, query, max_coefficient, max_tokens, timeout, id)
        .done()
}

/// Client → proxy, protocol 1+: `client.runQueryEx#f54cb74b model_name query max_coefficient
/// max_tokens timeout request_id min_config_version flags enable_debug:flags.0?Bool`.
pub fn client_run_query_ex(
    model: &str,
    query: &[u8],
    max_tokens: i32,
    timeout: f64,
    id: [u8; 32],
    debug: bool,
) -> Vec<u8> {
    let t = Tl::boxed(0xf54cb74b).client_query(model, query, 4000, max_tokens, timeout, id);
    if debug {
        t.int(1).bool(true).done()
    } else {
        t.int(0).done()
    }
}

/// Client → proxy query, declared but served by no COCOON proxy: `client.requestRefund#238d863d`
/// (no fields; id = crc32 of `client.requestRefund = client.Refund`).
pub fn client_request_refund() -> Vec<u8> {
    Tl::boxed(0x238d863d).done()
}

/// `proxy.signedPaymentEmpty#b347ce64`.
pub fn signed_payment_empty() -> Vec<u8> {
    Tl::boxed(0xb347ce64).done()
}

/// Proxy → worker, protocol 0: `proxy.runQuery#47182416 query:bytes
/// signed_payment:proxy.SignedPayment coefficient:long timeout:double request_id:int256`.
pub fn proxy_run_query(query: &[u8], coefficient: i64, timeout: f64, id: [u8; 32]) -> Vec<u8> {
    Tl::boxed(0x47182416)
        .proxy_query(query, coefficient, timeout, id)
        .done()
}

/// Proxy → worker: `proxy.runQueryEx#c805e7e2 query signed_payment coefficient timeout
/// request_id flags enable_debug:flags.0?Bool` (COCOON's proxy always sets flags = 1).
pub fn proxy_run_query_ex(
    query: &[u8],
    coefficient: i64,
    timeout: f64,
    id: [u8; 32],
    debug: bool,
) -> Vec<u8> {
    Tl::boxed(0xc805e7e2)
        .proxy_query(query, coefficient, timeout, id)
        .int(1)
        .bool(debug)
        .done()
}

/// Proxy → worker: `proxy.workerRequestPayment#1436c0d5 request_id
/// signed_payment:proxy.SignedPayment db_tokens max_tokens request_tokens
/// request_client_owner:string`, with the signed payout `boc` (`proxy.signedPayment#02998182
/// data:bytes`) or none.
pub fn proxy_worker_request_payment(
    id: [u8; 32],
    boc: Option<&[u8]>,
    db: i64,
    max: i64,
    request: i64,
    client_owner: &str,
) -> Vec<u8> {
    Tl::boxed(0x1436c0d5)
        .int256(id)
        .raw(&signed_payment(boc))
        .long(db)
        .long(max)
        .long(request)
        .string(client_owner)
        .done()
}

/// Proxy → worker: `proxy.signedPayment#02998182 data:bytes`.
pub fn proxy_signed_payment(boc: &[u8]) -> Vec<u8> {
    Tl::boxed(0x02998182).bytes(boc).done()
}

/// Worker → proxy query: `worker.connectToProxy#cc484c5d params:worker.params` with the bare
/// `worker.params flags=3 owner model coefficient is_test proxy_cnt max_active_requests
/// min_proto max_proto` a COCOON worker sends.
pub fn worker_connect_to_proxy(
    owner: &str,
    model: &str,
    coefficient: i32,
    max_active: i32,
    protos: (i32, i32),
) -> Vec<u8> {
    Tl::boxed(0xcc484c5d)
        .int(3)
        .string(owner)
        .string(model)
        .int(coefficient)
        .bool(true)
        .int(1)
        .int(max_active)
        .int(protos.0)
        .int(protos.1)
        .done()
}

/// Worker → proxy query: `worker.compareBalanceWithProxy#db386501
/// tokens_committed_to_blockchain tokens_committed_to_db max_tokens`.
pub fn worker_compare_balance(blockchain: i64, db: i64, max: i64) -> Vec<u8> {
    Tl::boxed(0xdb386501)
        .long(blockchain)
        .long(db)
        .long(max)
        .done()
}

/// Worker → proxy query: `worker.extendedCompareBalanceWithProxy#f8dd9914
/// tokens_committed_to_db other:bytes`.
pub fn worker_extended_compare(db: i64) -> Vec<u8> {
    Tl::boxed(0xf8dd9914).long(db).bytes(&[]).done()
}

/// Worker → proxy query: `worker.proxyHandshakeComplete#f843b066 is_disabled:Bool`.
pub fn worker_handshake_complete(disabled: bool) -> Vec<u8> {
    Tl::boxed(0xf843b066).bool(disabled).done()
}

/// Worker → proxy query: `worker.updatePaymentStatus#dc70a524`.
pub fn worker_update_payment_status() -> Vec<u8> {
    Tl::boxed(0xdc70a524).done()
}

/// A boxed `proxy.SignedPayment`: `proxy.signedPayment#02998182 data` or
/// `proxy.signedPaymentEmpty#b347ce64`.
pub fn signed_payment(boc: Option<&[u8]>) -> Vec<u8> {
    match boc {
        Some(b) => proxy_signed_payment(b),
        None => signed_payment_empty(),
    }
}

/// Proxy → worker answer: `worker.connectedToProxy#66bc82ee params:proxy.params
/// worker_sc_address` with the bare `proxy.params flags=3 key owner proxy_sc is_test proto`.
pub fn worker_connected_to_proxy(
    key: [u8; 32],
    owner: &str,
    proxy_sc: &str,
    proto: i32,
    worker_sc: &str,
) -> Vec<u8> {
    Tl::boxed(0x66bc82ee)
        .proxy_params(key, owner, proxy_sc, proto)
        .string(worker_sc)
        .done()
}

/// Proxy → worker answer: `worker.compareBalanceWithProxyResult#9054c411 signed_payment
/// tokens_committed_to_db max_tokens error_code`.
pub fn worker_compare_result(boc: Option<&[u8]>, db: i64, max: i64, error: i32) -> Vec<u8> {
    Tl::boxed(0x9054c411)
        .raw(&signed_payment(boc))
        .long(db)
        .long(max)
        .int(error)
        .done()
}

/// Proxy → worker answer: `worker.extendedCompareBalanceWithProxyResult#0c10973e error_code`.
pub fn worker_extended_compare_result(error: i32) -> Vec<u8> {
    Tl::boxed(0x0c10973e).int(error).done()
}

/// Proxy → worker answer: `worker.proxyHandshakeCompleted#3ad9b886`.
pub fn worker_handshake_completed() -> Vec<u8> {
    Tl::boxed(0x3ad9b886).done()
}

/// Proxy → worker answer: `worker.paymentStatus#a88bd701 signed_payment db_tokens
/// max_tokens`.
pub fn worker_payment_status(boc: Option<&[u8]>, db: i64, max: i64) -> Vec<u8> {
    payment_status(0xa88bd701, boc, db, max)
}

/// Client → proxy query: `client.connectToProxy#ff5fa0f4 params:client.params
/// min_config_version:int` with the bare `client.params flags=3 owner is_test min_proto
/// max_proto` a COCOON client sends.
pub fn client_connect_to_proxy(owner: &str, protos: (i32, i32)) -> Vec<u8> {
    Tl::boxed(0xff5fa0f4)
        .int(3)
        .string(owner)
        .bool(true)
        .int(protos.0)
        .int(protos.1)
        .int(0)
        .done()
}

/// Client → proxy query: `client.authorizeWithProxyShort#6c276723 data:bytes`.
pub fn client_authorize_short(secret: &[u8]) -> Vec<u8> {
    Tl::boxed(0x6c276723).bytes(secret).done()
}

/// Client → proxy query: `client.authorizeWithProxyLong#d3474303`.
pub fn client_authorize_long() -> Vec<u8> {
    Tl::boxed(0xd3474303).done()
}

/// Client → proxy query: `client.updatePaymentStatus#9ed1c697`.
pub fn client_update_payment_status() -> Vec<u8> {
    Tl::boxed(0x9ed1c697).done()
}

/// Client → proxy query: `client.getWorkerTypes#7f062bdb`.
pub fn client_get_worker_types() -> Vec<u8> {
    Tl::boxed(0x7f062bdb).done()
}

/// Client → proxy query: `client.getWorkerTypesV2#b2133d72`.
pub fn client_get_worker_types_v2() -> Vec<u8> {
    Tl::boxed(0xb2133d72).done()
}

// ------------------------------------------------------------------ proxy → client

/// A `client.queryFinalInfo` (bare, with its own `flags:#`): the usage, the worker's and the
/// proxy's debug texts (flag bit 0) and the timings (flag bit 1, protocol 2).
pub struct ClientFinal {
    /// `tokensUsed`: prompt, cached, completion, reasoning, total.
    pub tokens: [i64; 5],
    /// `(worker_debug, proxy_debug)`: flag bit 0.
    pub debug: Option<(&'static str, &'static str)>,
    /// `(proxy_start, proxy_end, worker_start, worker_end)`: flag bit 1.
    pub times: Option<[f64; 4]>,
}

impl Tl {
    /// `flags:#` of a `client.*Ex` answer and, when `f` is given (bit 0), the bare
    /// `client.queryFinalInfo flags tokens_used worker_debug:flags.0?string
    /// proxy_debug:flags.0?string proxy_start_time:flags.1?double proxy_end_time:flags.1?double
    /// worker_start_time:flags.1?double worker_end_time:flags.1?double`.
    pub fn client_final(self, f: Option<&ClientFinal>) -> Tl {
        let Some(f) = f else {
            return self.int(0);
        };
        let flags = i32::from(f.debug.is_some()) | (i32::from(f.times.is_some()) << 1);
        let mut t = self.int(1).int(flags).tokens(f.tokens);
        if let Some((wd, pd)) = f.debug {
            t = t.string(wd).string(pd);
        }
        if let Some(times) = f.times {
            t = times.into_iter().fold(t, Tl::double);
        }
        t
    }
}

/// Proxy → client, protocol 0: `client.queryAnswer#9b943922 answer:bytes is_completed:Bool
/// request_id:int256 request_tokens_used:tokensUsed`.
pub fn client_query_answer(answer: &[u8], completed: bool, id: [u8; 32], t: [i64; 5]) -> Vec<u8> {
    answer_v0(0x9b943922, answer, completed, id, t)
}

/// Proxy → client, protocol 0: `client.queryAnswerPart#b765de4c answer:bytes
/// is_completed:Bool request_id:int256 request_tokens_used:tokensUsed`.
pub fn client_query_answer_part(
    answer: &[u8],
    completed: bool,
    id: [u8; 32],
    t: [i64; 5],
) -> Vec<u8> {
    answer_v0(0xb765de4c, answer, completed, id, t)
}

/// Proxy → client, any protocol (COCOON's proxy's refusals): `client.queryAnswerError#6d60569a
/// error_code:int error:string request_id:int256 request_tokens_used:tokensUsed`.
pub fn client_query_answer_error(code: i32, error: &str, id: [u8; 32], t: [i64; 5]) -> Vec<u8> {
    error_v0(0x6d60569a, code, error, id, t)
}

/// Proxy → client, any protocol: `client.queryAnswerPartError#d790a022 error_code:int
/// error:string request_id:int256 request_tokens_used:tokensUsed`.
pub fn client_query_answer_part_error(
    code: i32,
    error: &str,
    id: [u8; 32],
    t: [i64; 5],
) -> Vec<u8> {
    error_v0(0xd790a022, code, error, id, t)
}

/// Proxy → client, protocol 1+: `client.queryAnswerEx#cd524720 request_id answer:bytes
/// flags final_info:flags.0?client.queryFinalInfo`.
pub fn client_query_answer_ex(id: [u8; 32], answer: &[u8], f: Option<&ClientFinal>) -> Vec<u8> {
    answer_ex(0xcd524720, id, answer, f)
}

/// Proxy → client, protocol 1+: `client.queryAnswerPartEx#c07bfaec request_id answer:bytes
/// flags final_info:flags.0?client.queryFinalInfo`.
pub fn client_query_answer_part_ex(
    id: [u8; 32],
    answer: &[u8],
    f: Option<&ClientFinal>,
) -> Vec<u8> {
    answer_ex(0xc07bfaec, id, answer, f)
}

/// Proxy → client, protocol 1+: `client.queryAnswerErrorEx#072562a8 request_id error_code
/// error flags final_info:flags.0?client.queryFinalInfo`.
pub fn client_query_answer_error_ex(
    id: [u8; 32],
    code: i32,
    error: &str,
    f: Option<&ClientFinal>,
) -> Vec<u8> {
    Tl::boxed(0x072562a8)
        .int256(id)
        .int(code)
        .string(error)
        .client_final(f)
        .done()
}

/// Proxy → client: `proxy.clientRequestPayment#c6bcf127 request_id
/// signed_payment:proxy.SignedPayment db_tokens max_tokens request_tokens`.
pub fn proxy_client_request_payment(
    id: [u8; 32],
    boc: Option<&[u8]>,
    db: i64,
    max: i64,
    request: i64,
) -> Vec<u8> {
    Tl::boxed(0xc6bcf127)
        .int256(id)
        .raw(&signed_payment(boc))
        .long(db)
        .long(max)
        .long(request)
        .done()
}

/// Proxy → client answer: `client.connectedToProxy#95317ad1 params:proxy.params
/// client_sc_address auth:client.ProxyConnectionAuth signed_payment`, with the bare
/// `proxy.params flags=3 key owner proxy_sc is_test proto`, the short authorisation
/// `client.proxyConnectionAuthShort#d6ffc5af secret_hash nonce=0` and no receipt.
pub fn client_connected_to_proxy(
    key: [u8; 32],
    owner: &str,
    proxy_sc: &str,
    proto: i32,
    client_sc: &str,
    secret_hash: [u8; 32],
) -> Vec<u8> {
    Tl::boxed(0x95317ad1)
        .proxy_params(key, owner, proxy_sc, proto)
        .string(client_sc)
        .raw(&Tl::boxed(0xd6ffc5af).int256(secret_hash).long(0).done())
        .raw(&signed_payment_empty())
        .done()
}

/// Proxy → client answer: `client.authorizationWithProxySuccess#75d5ac34 signed_payment
/// tokens_committed_to_db max_tokens`.
pub fn client_authorization_success(boc: Option<&[u8]>, db: i64, max: i64) -> Vec<u8> {
    payment_status(0x75d5ac34, boc, db, max)
}

/// Proxy → client answer: `client.authorizationWithProxyFailed#60551c96 error_code error`.
pub fn client_authorization_failed(code: i32, error: &str) -> Vec<u8> {
    Tl::boxed(0x60551c96).int(code).string(error).done()
}

/// Proxy → client answer: `client.paymentStatus#aa8a0ecc signed_payment db_tokens
/// max_tokens`.
pub fn client_payment_status(boc: Option<&[u8]>, db: i64, max: i64) -> Vec<u8> {
    payment_status(0xaa8a0ecc, boc, db, max)
}

/// Proxy → client answer: `client.workerTypesV2#0cf0dc67 types:(vector client.workerTypeV2)`
/// of one model whose workers are `(coefficient, active, max)`: bare `client.workerTypeV2
/// name workers:(vector client.workerInstanceV2)`, bare `client.workerInstanceV2 flags=0
/// coefficient active_requests max_active_requests`.
pub fn client_worker_types_v2(model: &str, workers: &[(i32, i32, i32)]) -> Vec<u8> {
    let mut t = Tl::boxed(0x0cf0dc67)
        .int(1)
        .string(model)
        .int(workers.len() as i32);
    for (c, a, m) in workers {
        t = t.int(0).int(*c).int(*a).int(*m);
    }
    t.done()
}

// ------------------------------------------------------------------ shapes shared by several messages

/// A version 0 answer or part (`proxy.queryAnswer`, `client.queryAnswerPart`, ...):
/// `answer:bytes is_completed:Bool request_id:int256 tokens_used:tokensUsed`.
fn answer_v0(ctor: u32, answer: &[u8], completed: bool, id: [u8; 32], t: [i64; 5]) -> Vec<u8> {
    Tl::boxed(ctor)
        .bytes(answer)
        .bool(completed)
        .int256(id)
        .tokens(t)
        .done()
}

/// A version 0 error (`proxy.queryAnswerError`, `client.queryAnswerPartError`, ...):
/// `error_code:int error:string request_id:int256 tokens_used:tokensUsed`.
fn error_v0(ctor: u32, code: i32, error: &str, id: [u8; 32], t: [i64; 5]) -> Vec<u8> {
    Tl::boxed(ctor)
        .int(code)
        .string(error)
        .int256(id)
        .tokens(t)
        .done()
}

/// A `client.queryAnswerEx` or `client.queryAnswerPartEx`: `request_id answer:bytes flags
/// final_info:flags.0?client.queryFinalInfo`.
fn answer_ex(ctor: u32, id: [u8; 32], answer: &[u8], f: Option<&ClientFinal>) -> Vec<u8> {
    Tl::boxed(ctor)
        .int256(id)
        .bytes(answer)
        .client_final(f)
        .done()
}

/// A payment status (`worker.paymentStatus`, `client.paymentStatus`,
/// `client.authorizationWithProxySuccess`): `signed_payment:proxy.SignedPayment
/// db_tokens:long max_tokens:long`.
fn payment_status(ctor: u32, boc: Option<&[u8]>, db: i64, max: i64) -> Vec<u8> {
    Tl::boxed(ctor)
        .raw(&signed_payment(boc))
        .long(db)
        .long(max)
        .done()
}

impl Tl {
    /// The fields `client.runQuery` and `client.runQueryEx` start with: `model_name:string
    /// query:bytes max_coefficient:int max_tokens:int timeout:double request_id:int256
    /// min_config_version=0`.
    fn client_query(
        self,
        model: &str,
        query: &[u8],
        max_coefficient: i32,
        max_tokens: i32,
        timeout: f64,
        id: [u8; 32],
    ) -> Tl {
        self.string(model)
            .bytes(query)
            .int(max_coefficient)
            .int(max_tokens)
            .double(timeout)
            .int256(id)
            .int(0)
    }

    /// The bare `proxy.params flags=3 key owner proxy_sc is_test=true proto` a proxy
    /// answers a connecting worker or client with.
    fn proxy_params(self, key: [u8; 32], owner: &str, proxy_sc: &str, proto: i32) -> Tl {
        self.int(3)
            .int256(key)
            .string(owner)
            .string(proxy_sc)
            .bool(true)
            .int(proto)
    }

    /// The fields `proxy.runQuery` and `proxy.runQueryEx` start with: `query:bytes
    /// signed_payment=proxy.signedPaymentEmpty coefficient:long timeout:double
    /// request_id:int256`.
    fn proxy_query(self, query: &[u8], coefficient: i64, timeout: f64, id: [u8; 32]) -> Tl {
        self.bytes(query)
            .raw(&signed_payment_empty())
            .long(coefficient)
            .double(timeout)
            .int256(id)
    }
}
