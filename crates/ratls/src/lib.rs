#![forbid(unsafe_code)]
//! RA-TLS (COCOON-compatible, see docs/cocoon-compat.md).
//!
//! * [`pow`]: the pre-TLS proof-of-work exchange.
//! * [`cert`]: attested certificates ([`cert::Identity`]): fresh Ed25519
//!   key, claims = the raw public key, evidence binding `SHA-512(claims)` in critical
//!   extension `1.3.6.1.4.1.12345.1` (TDX raw; SEV-SNP and sim in a documented envelope).
//! * [`verifier`]: [`verifier::RatlsVerifier`], rustls' server *and* client certificate
//!   verifier, ending in `cocoon_attest::Policy::evaluate_bound`, with a verdict cache.
//! * [`config`]: rustls configurations (TLS 1.3, AES-GCM, ring, no resumption) and a
//!   swappable certificate resolver (with, under `net`, a periodic refresher).
//! * [`inspect`]: what `cocoon attest gen-cert|verify-cert` write and report.
//! * `net` (feature `net`): TCP → PoW → RA-TLS → `cocoon_net` session, connecting and
//!   accepting, with the peer's `VerifiedPeer` returned alongside each session.
//!
//! Without the `net` feature the crate does no I/O on sockets and pulls in neither tokio
//! nor `cocoon-net`; the roles turn it on.

pub mod cert;
pub mod config;
pub mod inspect;
#[cfg(feature = "net")]
pub mod net;
pub mod pow;
pub mod sign;
pub mod verifier;
