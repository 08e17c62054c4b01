//! NVIDIA confidential-computing GPU evidence through NVML, the driver's management library.
//!
//! `libnvidia-ml.so.1` is loaded at run time ([`Nvml::load`]): nothing links against it at
//! build time, and a machine without NVIDIA's driver gets [`NvmlError::Load`].
//!
//! * [`layout`]: the two structures NVML fills, `#[repr(C)]` as `nvml.h` declares them
//!   (`nvmlConfComputeGpuAttestationReport_t`, `nvmlConfComputeGpuCertificate_t`), and what
//!   is read out of them: safe code, unit-tested on recorded bytes;
//! * [`Nvml`]: the calls (`nvmlInit_v2`, `nvmlDeviceGetHandleByIndex_v2`,
//!   `nvmlDeviceGetConfComputeGpuAttestationReport` with the caller's 32-byte nonce,
//!   `nvmlDeviceGetConfComputeGpuCertificate`, `nvmlShutdown`). The only `unsafe` code is in
//!   its private FFI module.
//!
//! The evidence returned is not checked here beyond its framing: verifiers check it with
//! `cocoon_attest::gpu::verify` (signature, NVIDIA chain, nonce, measurements).

mod ffi;
pub mod layout;

pub use ffi::Nvml;

/// The library loaded.
pub const LIBRARY: &str = "libnvidia-ml.so.1";

/// Why GPU evidence could not be collected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NvmlError {
    /// The library is not there (no NVIDIA driver) or does not load.
    #[error("cannot load {LIBRARY}: {0}")]
    Load(String),
    /// The library lacks a function (a driver older than the confidential-computing API).
    #[error("{LIBRARY} has no {0} (driver too old for confidential computing?)")]
    Symbol(&'static str),
    /// An NVML call returned an error.
    #[error("{call} failed: NVML error {code}")]
    Call {
        /// The function.
        call: &'static str,
        /// Its `nvmlReturn_t`.
        code: i32,
    },
    /// NVML filled a structure with something that is not what it should be.
    #[error("NVML returned a malformed {what}: {reason}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Evidence of one GPU: what an RA-TLS certificate carries (`cocoon_ratls::cert::GpuClaim`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuEvidence {
    /// The SPDM request ‖ signed response, binary.
    pub report: Vec<u8>,
    /// The GPU's attestation certificate chain, PEM, as the driver gives it.
    pub cert_chain_pem: Vec<u8>,
}

/// Loads NVML, collects the evidence of GPU `index` for `nonce`, and shuts NVML down.
pub fn collect(index: u32, nonce: &[u8; 32]) -> Result<GpuEvidence, NvmlError> {
    Nvml::load()?.gpu_evidence(index, nonce)
}
