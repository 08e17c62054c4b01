//! Predicting what a TEE will report for an image, from the image's own files (ARCHITECTURE
//! D14): TDX MRTD and RTMRs in [`tdx`], the SEV-SNP launch digest in [`snp`]. Everything
//! here is pure: the caller reads the firmware, kernel, initrd and command line and passes
//! their bytes; `cocoon image measure` is the command-line front.

pub mod snp;
pub mod tdx;
