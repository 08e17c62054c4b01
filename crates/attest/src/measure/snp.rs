//! SEV-SNP: the launch digest of firmware, kernel hashes table, and VMSAs.
