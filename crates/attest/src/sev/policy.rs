//! What a verified SEV-SNP report must satisfy beyond its signatures: guest policy bits,
//! VMPL, and a minimum TCB per product (AMD's bulletins by default).

use super::{SevError, SevGeneration, SevReportInfo, SevTcb};

/// The minimum TCB per AMD product. TCB numbers are not comparable across products (Turin
/// counts its SVNs from scratch and adds the FMC), so each product has its own floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevMinTcb {
    /// Milan's minimum.
    pub milan: SevTcb,
    /// Genoa's minimum.
    pub genoa: SevTcb,
    /// Turin's minimum.
    pub turin: SevTcb,
}

impl SevMinTcb {
    /// Cocoon's default floors, from AMD's product security bulletins as of 2026-12 (the
    /// bulletins name the SNP firmware SPL and the microcode SPL, which is the low byte of
    /// the patch level; bootloader, TEE and FMC floors are not named there and stay 0):
    ///
    /// * Milan (EPYC 7003, family 19h model 01h stepping 1): AMD-SB-3019 (2025-02-03,
    ///   CVE-2024-56161, microcode signature bypass "EntrySign"): SNP SPL 0x16 = 22,
    ///   microcode 0x0A0011DB = 219. The Milan values of AMD-SB-3020 and AMD-SB-3027 are not
    ///   in this table; a deployment raises them in its policy file.
    /// * Genoa (EPYC 9004, family 19h model 11h stepping 1): AMD-SB-3020 (2025-10,
    ///   CVE-2025-0033, RMP initialisation race): SNP SPL 0x1B = 27 with microcode
    ///   0x0A101156; AMD-SB-3027 (CVE-2025-29943, "StackWarp"): microcode SPL >= 0x56 = 86.
    ///   Both are above AMD-SB-3019's 0x17 / 0x54.
    /// * Turin (EPYC 9005, family 1Ah model 02h stepping 1): AMD-SB-3020: SNP SPL 0x04;
    ///   AMD-SB-3027: microcode SPL >= 0x51 = 81.
    ///
    /// Milan-X, Genoa-X and Bergamo/Siena run their own microcode patch lines whose numbers
    /// are lower (e.g. Genoa-X 0x51 under AMD-SB-3027): these floors refuse them (fail
    /// closed) unless a policy file lowers that product's microcode floor. AMD has no
    /// "UpToDate" verdict like Intel's: these floors must follow AMD's bulletins.
    pub const AMD_BULLETINS: SevMinTcb = SevMinTcb {
        milan: SevTcb {
            bootloader: 0,
            tee: 0,
            snp: 22,
            microcode: 219,
            fmc: 0,
        },
        genoa: SevTcb {
            bootloader: 0,
            tee: 0,
            snp: 27,
            microcode: 86,
            fmc: 0,
        },
        turin: SevTcb {
            bootloader: 0,
            tee: 0,
            snp: 4,
            microcode: 81,
            fmc: 0,
        },
    };

    /// No floor at all (tests on old sample reports only).
    pub const NONE: SevMinTcb = SevMinTcb::uniform(SevTcb {
        bootloader: 0,
        tee: 0,
        snp: 0,
        microcode: 0,
        fmc: 0,
    });

    /// The same floor for every product.
    pub const fn uniform(tcb: SevTcb) -> Self {
        SevMinTcb {
            milan: tcb,
            genoa: tcb,
            turin: tcb,
        }
    }

    /// The floor for `generation`.
    pub fn for_generation(&self, generation: SevGeneration) -> SevTcb {
        match generation {
            SevGeneration::Milan => self.milan,
            SevGeneration::Genoa => self.genoa,
            SevGeneration::Turin => self.turin,
        }
    }
}

impl Default for SevMinTcb {
    fn default() -> Self {
        Self::AMD_BULLETINS
    }
}

/// Default grace after a CRL's `nextUpdate` during which it still counts as fresh: AMD or
/// its KDS may publish late, and a week-long outage should not stop every SEV-SNP peer.
pub const DEFAULT_CRL_GRACE_SECS: u64 = 7 * 86_400;

/// What a verified report must satisfy beyond its signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevPolicy {
    /// Each reported TCB component must be at least the floor of the report's product.
    pub min_tcb: SevMinTcb,
    /// Accept guests whose policy allows debugging (host can read guest memory).
    pub allow_debug: bool,
    /// Accept guests whose policy allows a migration agent.
    pub allow_migration_agent: bool,
    /// Require the report to have been requested at VMPL 0.
    pub require_vmpl0: bool,
    /// Require a fresh, ARK-signed CRL of the product ([`crate::kds`]) and refuse when none
    /// is cached or it is stale (fail closed). When false, a cached CRL is still applied
    /// (revocations are permanent, even in a stale CRL) but its absence is accepted.
    pub require_crl: bool,
    /// Seconds after a CRL's `nextUpdate` during which it still counts as fresh.
    pub crl_grace_secs: u64,
}

impl Default for SevPolicy {
    fn default() -> Self {
        Self {
            min_tcb: SevMinTcb::default(),
            allow_debug: false,
            allow_migration_agent: false,
            require_vmpl0: true,
            require_crl: true,
            crl_grace_secs: DEFAULT_CRL_GRACE_SECS,
        }
    }
}

/// Checks a parsed report from a `generation` platform against a policy (no signature
/// checks). The FMC floor applies to Turin only.
pub fn check_policy(
    info: &SevReportInfo,
    policy: &SevPolicy,
    generation: SevGeneration,
) -> Result<(), SevError> {
    if info.debug_allowed && !policy.allow_debug {
        return Err(SevError::DebugAllowed);
    }
    if info.migrate_ma_allowed && !policy.allow_migration_agent {
        return Err(SevError::MigrationAgentAllowed);
    }
    if policy.require_vmpl0 && info.vmpl != 0 {
        return Err(SevError::VmplNotZero(info.vmpl));
    }
    let r = info.reported_tcb;
    let m = policy.min_tcb.for_generation(generation);
    let fmc_min = if generation == SevGeneration::Turin {
        m.fmc
    } else {
        0
    };
    for (component, reported, min) in [
        ("fmc", r.fmc, fmc_min),
        ("bootloader", r.bootloader, m.bootloader),
        ("tee", r.tee, m.tee),
        ("snp", r.snp, m.snp),
        ("microcode", r.microcode, m.microcode),
    ] {
        if reported < min {
            return Err(SevError::TcbTooLow {
                product: generation,
                component,
                reported,
                min,
            });
        }
    }
    Ok(())
}
