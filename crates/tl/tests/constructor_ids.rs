//! Every constructor id of the `cocoon_api.tlo` that COCOON ships (listed in team notes, not
//! in the repo), checked against the ids our scheme produces.

use cocoon_tl::{CONSTRUCTORS, constructor_by_name, schema};

const INVENTORY: &[(&str, u32)] = &[
    ("tcp.connect", 0xa57c4261),
    ("tcp.connected", 0x636d41d6),
    ("tcp.query", 0x3af51908),
    ("tcp.queryAnswer", 0xc048c311),
    ("tcp.queryError", 0x4cd2f602),
    ("tcp.packet", 0x9c17baf8),
    ("tcp.ping", 0xbbe9627c),
    ("tcp.pong", 0x0bd4302c),
    ("http.request", 0x47492de5),
    ("http.response", 0x1cd0c42b),
    ("http.header", 0x8e9be511),
    ("tokensUsed", 0x70c5b15c),
    ("client.params", 0x40fdca64),
    ("proxy.params", 0xd5c5609f),
    ("worker.params", 0x869c73ed),
    ("client.workerInstanceV2", 0x3ea93d00),
    ("client.connectToProxy", 0xff5fa0f4),
    ("client.connectedToProxy", 0x95317ad1),
    ("client.proxyConnectionAuthShort", 0xd6ffc5af),
    ("client.proxyConnectionAuthLong", 0x417bf016),
    ("client.authorizeWithProxyShort", 0x6c276723),
    ("client.authorizeWithProxyLong", 0xd3474303),
    ("client.authorizationWithProxySuccess", 0x75d5ac34),
    ("client.authorizationWithProxyFailed", 0x60551c96),
    ("client.runQuery", 0xbc748f32),
    ("client.runQueryEx", 0xf54cb74b),
    ("client.queryAnswerEx", 0xcd524720),
    ("client.queryAnswerPartEx", 0xc07bfaec),
    ("client.queryAnswerErrorEx", 0x072562a8),
    ("client.queryFinalInfo", 0x69a452f0),
    ("client.queryAnswer", 0x9b943922),
    ("client.queryAnswerError", 0x6d60569a),
    ("client.queryAnswerPart", 0xb765de4c),
    ("client.queryAnswerPartError", 0xd790a022),
    ("client.updatePaymentStatus", 0x9ed1c697),
    ("client.paymentStatus", 0xaa8a0ecc),
    ("client.getWorkerTypes", 0x7f062bdb),
    ("client.workerTypes", 0xf64e0e01),
    ("client.getWorkerTypesV2", 0xb2133d72),
    ("client.workerTypesV2", 0x0cf0dc67),
    ("client.workerTypeV2", 0xb27d8197),
    ("client.workerType", 0x8210e21c),
    ("proxy.clientRequestPayment", 0xc6bcf127),
    ("proxy.workerRequestPayment", 0x1436c0d5),
    ("proxy.signedPayment", 0x02998182),
    ("proxy.signedPaymentEmpty", 0xb347ce64),
    ("proxy.runQuery", 0x47182416),
    ("proxy.runQueryEx", 0xc805e7e2),
    ("proxy.queryAnswerEx", 0x1ce574e8),
    ("proxy.queryAnswerPartEx", 0x6d85b50f),
    ("proxy.queryAnswerErrorEx", 0x8f7fb0a7),
    ("proxy.queryFinalInfo", 0xe794e6fc),
    ("proxy.queryAnswer", 0x37e5f725),
    ("proxy.queryAnswerError", 0x669d014e),
    ("proxy.queryAnswerPart", 0x72eb00ee),
    ("proxy.queryAnswerPartError", 0x940e1168),
    ("worker.connectToProxy", 0xcc484c5d),
    ("worker.connectedToProxy", 0x66bc82ee),
    ("worker.compareBalanceWithProxy", 0xdb386501),
    ("worker.compareBalanceWithProxyResult", 0x9054c411),
    ("worker.extendedCompareBalanceWithProxy", 0xf8dd9914),
    ("worker.extendedCompareBalanceWithProxyResult", 0x0c10973e),
    ("worker.proxyHandshakeComplete", 0xf843b066),
    ("worker.proxyHandshakeCompleted", 0x3ad9b886),
    ("worker.updatePaymentStatus", 0xdc70a524),
    ("worker.paymentStatus", 0xa88bd701),
    ("worker.enabledDisabled", 0xb3b71039),
    ("worker.newCoefficient", 0x6af092b0),
];

#[test]
fn every_inventory_id_matches() {
    let mut wrong = Vec::new();
    for (name, id) in INVENTORY {
        match constructor_by_name(name) {
            Some(info) if info.id == *id => {}
            Some(info) => wrong.push(format!("{name}: ours {:08x}, COCOON {id:08x}", info.id)),
            None => wrong.push(format!("{name}: missing from our scheme")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn crc_rule_reproduces_ids_that_are_not_explicit() {
    for c in CONSTRUCTORS {
        if !c.explicit_id {
            assert_eq!(schema::crc32(c.canonical.as_bytes()), c.id, "{}", c.name);
        }
    }
    // The rule on the built-in declarations gives the well-known ids.
    assert_eq!(schema::crc32(b"boolTrue = Bool"), cocoon_tl::BOOL_TRUE);
    assert_eq!(schema::crc32(b"boolFalse = Bool"), cocoon_tl::BOOL_FALSE);
    assert_eq!(
        schema::crc32(b"vector t:Type # [ t ] = Vector t"),
        0x1cb5c415
    );
}

#[test]
fn only_the_four_scheme_ids_are_explicit() {
    let explicit: Vec<&str> = CONSTRUCTORS
        .iter()
        .filter(|c| c.explicit_id)
        .map(|c| c.name)
        .collect();
    assert_eq!(
        explicit,
        [
            "worker.params",
            "proxy.params",
            "client.params",
            "client.workerInstanceV2"
        ]
    );
}

#[test]
fn ids_are_unique_and_version_3_ids_follow_the_rule() {
    let mut seen = std::collections::HashMap::new();
    for c in CONSTRUCTORS {
        if let Some(other) = seen.insert(c.id, c.name) {
            panic!("{} and {other} share id {:08x}", c.name, c.id);
        }
    }
    let v3: Vec<_> = CONSTRUCTORS.iter().filter(|c| c.since_proto >= 3).collect();
    assert!(!v3.is_empty());
    for c in v3 {
        assert!(!c.explicit_id);
        assert_eq!(schema::crc32(c.canonical.as_bytes()), c.id);
    }
    assert_eq!(
        constructor_by_name("client.cancelQuery").map(|c| c.canonical),
        Some("client.cancelQuery request_id:int256 reason:string = client.CancelQuery")
    );
}

#[test]
fn scheme_has_every_declaration_of_the_cocoon_scheme() {
    // 111 declarations in COCOON's cocoon_api.tl, less the 13 built-ins (int, long, double,
    // string, object, function, bytes, true, boolTrue, boolFalse, vector, int128, int256).
    let v2 = CONSTRUCTORS.iter().filter(|c| c.since_proto == 2).count();
    assert_eq!(v2, 98);
}
