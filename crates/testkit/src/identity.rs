//! Sim identities, verifiers and RA-TLS connectors and acceptors.

use std::sync::Arc;

use cocoon_attest::{Policy, SimKey};
use cocoon_ratls::cert::{EvidenceSource, Identity, SimSource};
use cocoon_ratls::config::CertResolver;
use cocoon_ratls::net::{RatlsAcceptor, RatlsConnector};
use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig};

use crate::fixtures::{POW, now};

/// An identity with `source`'s evidence, valid from a minute ago.
pub fn identity_from(source: &dyn EvidenceSource) -> Identity {
    Identity::generate(source, now() - 60).unwrap()
}

/// A fresh sim identity.
pub fn sim_identity() -> Identity {
    identity_from(&SimSource(SimKey::generate().unwrap()))
}

/// A verifier of the sim test policy.
pub fn sim_verifier() -> Arc<RatlsVerifier> {
    RatlsVerifier::new(VerifierConfig::new(Policy::sim_test()))
}

/// A verifier of the sim test policy whose verdicts hold `secs`, accepting peers without
/// evidence or not.
pub fn short_lived_verifier(secs: u64, allow_unattested: bool) -> Arc<RatlsVerifier> {
    let mut v = VerifierConfig::new(Policy {
        max_validity_secs: secs,
        ..Policy::sim_test()
    });
    v.allow_unattested = allow_unattested;
    RatlsVerifier::new(v)
}

/// A connector presenting `source`'s evidence and verifying peers under `policy`.
pub fn connector_as(source: &dyn EvidenceSource, policy: Policy) -> RatlsConnector {
    RatlsConnector::new(
        CertResolver::new(&identity_from(source)).unwrap(),
        RatlsVerifier::new(VerifierConfig::new(policy)),
        16,
        cocoon_net::Config::default(),
    )
    .unwrap()
}

/// A sim connector verifying peers under `policy`.
pub fn connector_with(policy: Policy) -> RatlsConnector {
    connector_as(&SimSource(SimKey::generate().unwrap()), policy)
}

/// A sim connector of the sim test policy.
pub fn connector() -> RatlsConnector {
    connector_with(Policy::sim_test())
}

/// A sim acceptor of the sim test policy, asking for [`POW`].
pub fn acceptor() -> RatlsAcceptor {
    RatlsAcceptor::new(
        CertResolver::new(&sim_identity()).unwrap(),
        sim_verifier(),
        POW,
        cocoon_net::Config::default(),
    )
    .unwrap()
}
