//! The test network's constants, addresses, prices and root configurations.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cocoon_openai::{Multipliers, PriceTable};
use cocoon_ton::root::{CocoonParams, RootConfig, model_hash};
use cocoon_ton::{Cell, HashBytes, StdAddr};

/// How long a test waits for anything before it fails.
pub const LIMIT: Duration = Duration::from_secs(20);
/// The model every fake worker serves.
pub const MODEL: &str = "Smol@r1:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
/// Proof-of-work difficulty of test listeners.
pub const POW: u32 = 2;
/// The admin bearer token of test proxies.
pub const TOKEN: &str = "s3cret-admin-token";
/// The client secret of short authorisation.
pub const SECRET: &[u8] = b"client secret string";
/// The signing key seed of test proxies (real and fake).
pub const PROXY_SEED: [u8; 32] = [7; 32];

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The basechain address whose 32 bytes are all `n`.
pub fn addr(n: u8) -> StdAddr {
    StdAddr::new(0, HashBytes([n; 32]))
}

/// The measurement of sim attestation, as a root lists it.
pub fn sim_image() -> HashBytes {
    HashBytes(cocoon_attest::sim::sim_image_hash())
}

/// A compiled contract's code from `contracts/build` (`proxy`, `worker`, `client`, `root`).
pub fn contract_code(name: &str) -> Cell {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../contracts/build")
        .join(format!("{name}.code.boc"));
    cocoon_ton::codec::decode_boc(&std::fs::read(&p).unwrap()).unwrap()
}

/// Prices of the test network, with the real contract codes.
pub fn params() -> CocoonParams {
    CocoonParams {
        is_test: true,
        price_per_token: 20,
        worker_fee_per_token: 10,
        prompt_tokens_price_multiplier: 10_000,
        cached_tokens_price_multiplier: 5_000,
        completion_tokens_price_multiplier: 20_000,
        reasoning_tokens_price_multiplier: 10_000,
        proxy_code: Some(contract_code("proxy")),
        worker_code: Some(contract_code("worker")),
        client_code: Some(contract_code("client")),
        ..CocoonParams::default()
    }
}

/// The worker's price table matching [`params`].
pub fn prices() -> PriceTable {
    PriceTable {
        price_per_token: 20,
        worker_fee_per_token: 10,
        multipliers: Multipliers {
            prompt: 10_000,
            cached: 5_000,
            completion: 20_000,
            reasoning: 10_000,
        },
    }
}

/// A root configuration allowing the sim image for workers and [`MODEL`] (each optionally).
pub fn root(version: u32, image_ok: bool, model_ok: bool) -> RootConfig {
    RootConfig {
        owner: addr(0x01),
        version,
        proxy_hashes: vec![],
        registered_proxies: vec![],
        last_proxy_seqno: 0,
        worker_hashes: if image_ok {
            vec![sim_image()]
        } else {
            vec![HashBytes([0xAB; 32])]
        },
        model_hashes: if model_ok {
            vec![model_hash(MODEL)]
        } else {
            vec![model_hash("Other@r1:ff")]
        },
        params: params(),
    }
}

/// [`root`] (all allowed) that also allows the sim image for proxies, or a foreign image.
pub fn root_with_proxy_image(version: u32, proxy_image_ok: bool) -> RootConfig {
    let mut r = root(version, true, true);
    r.proxy_hashes = vec![if proxy_image_ok {
        sim_image()
    } else {
        HashBytes([0xAB; 32])
    }];
    r
}

/// Redials a second after a session ends, so that the reason it ended stays readable (the
/// refused redial overwrites it).
pub fn slow_redial() -> cocoon_net::BackoffConfig {
    cocoon_net::BackoffConfig {
        base: Duration::from_secs(1),
        max: Duration::from_secs(1),
        jitter: 0.0,
        ..cocoon_net::BackoffConfig::default()
    }
}

/// Whether a missing test prerequisite (the default model, a tool, a browser, a server that
/// `scripts/setup` installs) must fail the test instead of skipping it: `scripts/test` sets
/// `COCOON_REQUIRE_PREREQS=1`, and `CI` counts too.
pub fn prereqs_required() -> bool {
    std::env::var_os("COCOON_REQUIRE_PREREQS").is_some() || std::env::var_os("CI").is_some()
}

/// The default model (`COCOON_TEST_MODEL`), or `None` with a message when it is not set and
/// [`prereqs_required`] is false; when it is true, a missing model fails the test.
pub fn test_model() -> Option<PathBuf> {
    match std::env::var_os("COCOON_TEST_MODEL") {
        Some(p) => Some(p.into()),
        None => {
            assert!(
                !prereqs_required(),
                "COCOON_TEST_MODEL must be set under scripts/test (it pulls the default model)"
            );
            eprintln!("skipped: COCOON_TEST_MODEL is not set");
            None
        }
    }
}

/// The public key of the test proxies ([`PROXY_SEED`]).
pub fn proxy_public_key() -> HashBytes {
    HashBytes(
        cocoon_ton::keys::SigningKey::from_seed(&PROXY_SEED)
            .unwrap()
            .public_key(),
    )
}

/// The proxy contract `params` give the test proxies (owner `addr(0x33)`, key of
/// [`PROXY_SEED`]) under the root at `root_address`.
pub fn derived_proxy_sc(params: &CocoonParams, root_address: &StdAddr) -> StdAddr {
    cocoon_ton::contracts::proxy_contract(params, &addr(0x33), &proxy_public_key(), root_address)
        .unwrap()
        .address
}

/// The worker contract `params` give a worker owned by `owner` with the test proxy whose
/// contract is `proxy_sc`.
pub fn derived_worker_sc(params: &CocoonParams, owner: &StdAddr, proxy_sc: &StdAddr) -> StdAddr {
    cocoon_ton::contracts::worker_contract(params, owner, proxy_sc, &proxy_public_key())
        .unwrap()
        .address
}
