//! Predicting what a TEE will report for an image, from the image's own files (ARCHITECTURE
//! D14): TDX MRTD and RTMRs in [`tdx`], the SEV-SNP launch digest in [`snp`]. Everything
//! here is pure: the caller reads the firmware, kernel, initrd and command line and passes
//! their bytes; `cocoon image measure` is the command-line front.

pub mod snp;
pub mod tdx;

use sha2::{Digest, Sha384};

pub use tdx::rtmr_extend;

/// The digest a boot extends RTMR3 with for a role configuration: SHA-384 of the
/// configuration file's bytes, exactly as the role reads them.
pub fn config_digest(config: &[u8]) -> [u8; 48] {
    Sha384::digest(config).into()
}

/// RTMR3 of a guest whose boot measured `config` and nothing else into it (TDX, and the
/// emulated register of the sim backend).
pub fn rtmr3_for_config(config: &[u8]) -> [u8; 48] {
    rtmr_extend(&[0; 48], &config_digest(config))
}

/// SEV-SNP host data for a role configuration: SHA-256 of its bytes. SNP has no register
/// the guest extends, so the launcher passes it (`host-data=`) and the report carries it.
pub fn host_data_for_config(config: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(config).into()
}

/// The Cocoon image hash (what the root's allowlists hold) of a TD with these registers, as
/// [`crate::tdx::image_hash`] computes it from a quote; MROWNER and MROWNERCONFIG are zero
/// (our launcher sets neither), MRCONFIGID is the configuration's digest when the launcher
/// put it there, else zero.
pub fn tdx_image_hash(mrtd: &[u8; 48], mr_config_id: &[u8; 48], rtmr: &[[u8; 48]; 4]) -> [u8; 32] {
    crate::tdx::image_hash_of(mrtd, mr_config_id, &[0; 48], &[0; 48], rtmr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtmr3_is_one_extension_of_zero_by_the_config_digest() {
        let c = b"[worker]\nmodel = \"m\"\n";
        let mut h = Sha384::new();
        h.update([0u8; 48]);
        h.update(Sha384::digest(c));
        assert_eq!(rtmr3_for_config(c), <[u8; 48]>::from(h.finalize()));
        // Any change of the configuration changes the register and the host data.
        assert_ne!(
            rtmr3_for_config(c),
            rtmr3_for_config(b"[worker]\nmodel = \"n\"\n")
        );
        assert_ne!(host_data_for_config(c), host_data_for_config(b""));
    }
}
