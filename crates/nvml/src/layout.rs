//! The structures NVML fills, as `nvml.h` (driver 535 and later) declares them, and what is
//! read out of them. Safe code: the FFI module hands NVML pointers to these and reads them
//! back through [`AttestationReport::report`] and [`Certificate::chain_pem`].

use crate::NvmlError;

/// `NVML_CC_GPU_CEC_NONCE_SIZE`.
pub const NONCE_LEN: usize = 0x20;
/// `NVML_CC_GPU_ATTESTATION_REPORT_SIZE`.
pub const REPORT_LEN: usize = 0x2000;
/// `NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE`.
pub const CEC_REPORT_LEN: usize = 0x1000;
/// `NVML_GPU_CERT_CHAIN_SIZE`.
pub const CERT_CHAIN_LEN: usize = 0x1000;
/// `NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE`.
pub const ATTESTATION_CERT_CHAIN_LEN: usize = 0x1400;

/// `nvmlConfComputeGpuAttestationReport_t`. The caller sets `nonce`; NVML fills the rest.
#[repr(C)]
#[derive(Debug)]
pub struct AttestationReport {
    /// `isCecAttestationReportPresent`.
    pub is_cec_present: u32,
    /// `attestationReportSize`.
    pub report_size: u32,
    /// `cecAttestationReportSize`.
    pub cec_report_size: u32,
    /// `nonce`: the 32 bytes the GPU puts into the SPDM request it signs the answer to.
    pub nonce: [u8; NONCE_LEN],
    /// `attestationReport`: SPDM `GET_MEASUREMENTS` request ‖ signed response.
    pub report: [u8; REPORT_LEN],
    /// `cecAttestationReport` (the ConnectX/CEC's, not used here).
    pub cec_report: [u8; CEC_REPORT_LEN],
}

/// `nvmlConfComputeGpuCertificate_t`.
#[repr(C)]
#[derive(Debug)]
pub struct Certificate {
    /// `certChainSize`.
    pub cert_chain_size: u32,
    /// `attestationCertChainSize`.
    pub attestation_cert_chain_size: u32,
    /// `certChain` (the GPU's identity chain, not used here).
    pub cert_chain: [u8; CERT_CHAIN_LEN],
    /// `attestationCertChain`: the chain of the key that signs attestation reports, PEM.
    pub attestation_cert_chain: [u8; ATTESTATION_CERT_CHAIN_LEN],
}

/// Size of [`AttestationReport`] as `nvml.h` lays it out.
pub const ATTESTATION_REPORT_STRUCT_LEN: usize = 12 + NONCE_LEN + REPORT_LEN + CEC_REPORT_LEN;
/// Size of [`Certificate`] as `nvml.h` lays it out.
pub const CERTIFICATE_STRUCT_LEN: usize = 8 + CERT_CHAIN_LEN + ATTESTATION_CERT_CHAIN_LEN;

fn malformed(what: &'static str, reason: impl Into<String>) -> NvmlError {
    NvmlError::Malformed {
        what,
        reason: reason.into(),
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_ne_bytes(b)
}

impl AttestationReport {
    /// An empty structure asking for `nonce`.
    pub fn with_nonce(nonce: &[u8; NONCE_LEN]) -> Box<Self> {
        Box::new(AttestationReport {
            is_cec_present: 0,
            report_size: 0,
            cec_report_size: 0,
            nonce: *nonce,
            report: [0; REPORT_LEN],
            cec_report: [0; CEC_REPORT_LEN],
        })
    }

    /// The structure from its bytes as NVML wrote them in memory (native byte order), e.g. a
    /// recorded dump.
    pub fn from_bytes(bytes: &[u8]) -> Result<Box<Self>, NvmlError> {
        const WHAT: &str = "attestation report structure";
        if bytes.len() != ATTESTATION_REPORT_STRUCT_LEN {
            return Err(malformed(
                WHAT,
                format!(
                    "{} bytes, expected {ATTESTATION_REPORT_STRUCT_LEN}",
                    bytes.len()
                ),
            ));
        }
        let mut s = AttestationReport::with_nonce(&[0; NONCE_LEN]);
        s.is_cec_present = u32_at(bytes, 0);
        s.report_size = u32_at(bytes, 4);
        s.cec_report_size = u32_at(bytes, 8);
        let (nonce, rest) = bytes[12..].split_at(NONCE_LEN);
        let (report, cec) = rest.split_at(REPORT_LEN);
        s.nonce.copy_from_slice(nonce);
        s.report.copy_from_slice(report);
        s.cec_report.copy_from_slice(cec);
        Ok(s)
    }

    /// The report NVML returned for `nonce`: `report_size` bytes, at most [`REPORT_LEN`]
    /// and not empty, with the nonce field still the one asked for.
    pub fn report(&self, nonce: &[u8; NONCE_LEN]) -> Result<Vec<u8>, NvmlError> {
        const WHAT: &str = "attestation report";
        if &self.nonce != nonce {
            return Err(malformed(WHAT, "the nonce field is not the one asked for"));
        }
        let len = self.report_size as usize;
        if len == 0 || len > REPORT_LEN {
            return Err(malformed(
                WHAT,
                format!("size {len}, expected 1 to {REPORT_LEN}"),
            ));
        }
        Ok(self.report[..len].to_vec())
    }
}

impl Certificate {
    /// An empty structure.
    pub fn zeroed() -> Box<Self> {
        Box::new(Certificate {
            cert_chain_size: 0,
            attestation_cert_chain_size: 0,
            cert_chain: [0; CERT_CHAIN_LEN],
            attestation_cert_chain: [0; ATTESTATION_CERT_CHAIN_LEN],
        })
    }

    /// The structure from its bytes as NVML wrote them in memory (native byte order).
    pub fn from_bytes(bytes: &[u8]) -> Result<Box<Self>, NvmlError> {
        if bytes.len() != CERTIFICATE_STRUCT_LEN {
            return Err(malformed(
                "certificate structure",
                format!("{} bytes, expected {CERTIFICATE_STRUCT_LEN}", bytes.len()),
            ));
        }
        let mut s = Certificate::zeroed();
        s.cert_chain_size = u32_at(bytes, 0);
        s.attestation_cert_chain_size = u32_at(bytes, 4);
        let (chain, attestation) = bytes[8..].split_at(CERT_CHAIN_LEN);
        s.cert_chain.copy_from_slice(chain);
        s.attestation_cert_chain.copy_from_slice(attestation);
        Ok(s)
    }

    /// The attestation chain: `attestation_cert_chain_size` bytes (at most
    /// [`ATTESTATION_CERT_CHAIN_LEN`]) without trailing NULs, ASCII PEM with at least one
    /// certificate.
    pub fn chain_pem(&self) -> Result<Vec<u8>, NvmlError> {
        const WHAT: &str = "attestation certificate chain";
        let len = self.attestation_cert_chain_size as usize;
        if len == 0 || len > ATTESTATION_CERT_CHAIN_LEN {
            return Err(malformed(
                WHAT,
                format!("size {len}, expected 1 to {ATTESTATION_CERT_CHAIN_LEN}"),
            ));
        }
        let mut chain = self.attestation_cert_chain[..len].to_vec();
        while chain.last() == Some(&0) {
            chain.pop();
        }
        if !chain.is_ascii() {
            return Err(malformed(WHAT, "not ASCII (PEM expected)"));
        }
        let begin = b"-----BEGIN CERTIFICATE-----";
        if !chain.windows(begin.len()).any(|w| w == begin) {
            return Err(malformed(WHAT, "no PEM certificate"));
        }
        Ok(chain)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use std::mem::{offset_of, size_of};

    use super::*;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testvectors/gpu/");

    /// NVIDIA's recorded sample: the report NVML returned (hex) and its chain.
    fn sample() -> (Vec<u8>, Vec<u8>) {
        let hex_text =
            std::fs::read_to_string(format!("{DIR}hopperAttestationReport.txt")).unwrap();
        let report = hex::decode(hex_text.trim()).unwrap();
        let chain = std::fs::read(format!("{DIR}hopperCertChain.txt")).unwrap();
        (report, chain)
    }

    /// The sample's nonce (bytes 4..36 of the SPDM request).
    fn nonce_of(report: &[u8]) -> [u8; NONCE_LEN] {
        report[4..36].try_into().unwrap()
    }

    /// The bytes NVML leaves in memory after answering with `report` for `nonce`.
    fn report_image(report: &[u8], nonce: &[u8; NONCE_LEN], size: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&size.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(nonce);
        let mut r = report.to_vec();
        r.resize(REPORT_LEN, 0);
        b.extend_from_slice(&r);
        b.extend_from_slice(&[0; CEC_REPORT_LEN]);
        b
    }

    fn cert_image(chain: &[u8], size: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&size.to_ne_bytes());
        b.extend_from_slice(&[0; CERT_CHAIN_LEN]);
        let mut c = chain.to_vec();
        c.resize(ATTESTATION_CERT_CHAIN_LEN, 0);
        b.extend_from_slice(&c);
        b
    }

    #[test]
    fn layouts_are_nvml_h_ones() {
        assert_eq!(
            size_of::<AttestationReport>(),
            ATTESTATION_REPORT_STRUCT_LEN
        );
        assert_eq!(ATTESTATION_REPORT_STRUCT_LEN, 12_332);
        assert_eq!(offset_of!(AttestationReport, nonce), 12);
        assert_eq!(offset_of!(AttestationReport, report), 44);
        assert_eq!(offset_of!(AttestationReport, cec_report), 44 + 0x2000);
        assert_eq!(size_of::<Certificate>(), CERTIFICATE_STRUCT_LEN);
        assert_eq!(CERTIFICATE_STRUCT_LEN, 9_224);
        assert_eq!(offset_of!(Certificate, attestation_cert_chain), 8 + 0x1000);
    }

    #[test]
    fn the_recorded_sample_reads_back() {
        let (report, chain) = sample();
        let nonce = nonce_of(&report);
        let len = u32::try_from(report.len()).unwrap();
        let s = AttestationReport::from_bytes(&report_image(&report, &nonce, len)).unwrap();
        assert_eq!(s.report(&nonce).unwrap(), report);
        let clen = u32::try_from(chain.len()).unwrap();
        let c = Certificate::from_bytes(&cert_image(&chain, clen)).unwrap();
        assert_eq!(c.chain_pem().unwrap(), chain);
        // A size that counts trailing NULs (as some drivers report) reads the same.
        let c = Certificate::from_bytes(&cert_image(&chain, clen + 16)).unwrap();
        assert_eq!(c.chain_pem().unwrap(), chain);
    }

    #[test]
    fn malformed_structures_are_refused() {
        let (report, chain) = sample();
        let nonce = nonce_of(&report);
        let len = u32::try_from(report.len()).unwrap();
        let image = report_image(&report, &nonce, len);
        assert!(AttestationReport::from_bytes(&image[1..]).is_err());
        let s = AttestationReport::from_bytes(&image).unwrap();
        assert!(s.report(&[0; NONCE_LEN]).is_err(), "another nonce");
        for size in [0, REPORT_LEN as u32 + 1, u32::MAX] {
            let s = AttestationReport::from_bytes(&report_image(&report, &nonce, size)).unwrap();
            assert!(s.report(&nonce).is_err(), "size {size}");
        }
        let clen = u32::try_from(chain.len()).unwrap();
        assert!(Certificate::from_bytes(&cert_image(&chain, clen)[..100]).is_err());
        for size in [0, ATTESTATION_CERT_CHAIN_LEN as u32 + 1] {
            let c = Certificate::from_bytes(&cert_image(&chain, size)).unwrap();
            assert!(c.chain_pem().is_err(), "size {size}");
        }
        let c = Certificate::from_bytes(&cert_image(b"\x30\x82\x01\xff", 4)).unwrap();
        assert!(c.chain_pem().is_err(), "DER, not PEM");
        let c = Certificate::from_bytes(&cert_image(b"hello", 5)).unwrap();
        assert!(c.chain_pem().is_err(), "no certificate");
    }
}
