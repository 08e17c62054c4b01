//! What the RA-TLS test binaries share: the test vectors and the policy for AMD's public
//! SEV-SNP sample.

use cocoon_attest::Policy;
use cocoon_attest::sev::SevReportInfo;

/// The SEV policy, relaxed only where the public Milan sample guest `info` needs it.
pub(crate) fn sample_sev_policy(info: &SevReportInfo) -> Policy {
    let mut policy = Policy::sev_default();
    // The 2022 sample is below AMD's current TCB floors and no AMD CRL is available
    // offline (both are tested in cocoon-attest): drop them explicitly for this sample.
    policy.sev.min_tcb = cocoon_attest::sev::SevMinTcb::NONE;
    policy.sev.require_crl = false;
    policy.sev.allow_debug = info.debug_allowed;
    policy.sev.allow_migration_agent = info.migrate_ma_allowed;
    policy.sev.require_vmpl0 = info.vmpl == 0;
    policy
}

/// The bytes of `testvectors/attest/{path}`.
pub(crate) fn vector(path: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../testvectors/attest/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
