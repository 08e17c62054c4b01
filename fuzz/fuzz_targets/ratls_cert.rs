//! RA-TLS certificate and evidence-extension parsing on arbitrary bytes.
//!
//! The first byte chooses what the rest is:
//! * `0 mod 3`: the contents of the evidence extension: `EvidenceEnvelope::decode`; what
//!   decodes must encode back to the same bytes;
//! * `1 mod 3`: a whole certificate (DER) given to `RatlsVerifier::verify_cert` under the sim
//!   test policy at a fixed time;
//! * `2 mod 3`: a real sim certificate (generated once) with the input XOR-ed into it from an
//!   offset the next two bytes give, so the mutations land inside a well-formed certificate
//!   and reach the extension parsing.
//!
//! What must hold: no panic; a mutated certificate is only accepted if its evidence and key
//! are the original ones.
#![no_main]

use cocoon_attest::Policy;
use cocoon_attest::sim::SimKey;
use cocoon_ratls::cert::{EvidenceEnvelope, Identity, SimSource};
use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig, fixed_clock};
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::CertificateDer;
use std::sync::{Arc, OnceLock};

const NOW: u64 = 1_767_225_600;

fn verifier() -> &'static Arc<RatlsVerifier> {
    static V: OnceLock<Arc<RatlsVerifier>> = OnceLock::new();
    V.get_or_init(|| {
        let mut cfg = VerifierConfig::new(Policy::sim_test());
        cfg.clock = fixed_clock(NOW + 60);
        cfg.cache_ttl_secs = 0;
        RatlsVerifier::new(cfg)
    })
}

fn real_cert() -> &'static (Vec<u8>, [u8; 32]) {
    static C: OnceLock<(Vec<u8>, [u8; 32])> = OnceLock::new();
    C.get_or_init(|| {
        let source = SimSource(SimKey::generate().expect("sim key"));
        let id = Identity::generate(&source, NOW).expect("certificate");
        (id.cert_der().to_vec(), *id.public_key())
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            if let Ok(env) = EvidenceEnvelope::decode(rest) {
                assert_eq!(env.encode(), rest, "evidence envelope does not round-trip");
            }
        }
        1 => {
            let _ = verifier().verify_cert(&CertificateDer::from(rest), &[]);
        }
        _ => {
            let (cert, key) = real_cert();
            let Some((offset, flips)) = rest.split_first_chunk::<2>() else { return };
            let mut mutated = cert.clone();
            let start = usize::from(u16::from_le_bytes(*offset)) % mutated.len();
            for (b, f) in mutated[start..].iter_mut().zip(flips) {
                *b ^= f;
            }
            if let Ok(peer) = verifier().verify_cert(&CertificateDer::from(mutated.as_slice()), &[]) {
                assert_eq!(peer.public_key(), Some(key), "accepted a certificate for another key");
            }
        }
    }
});
