#![forbid(unsafe_code)]
//! RA-TLS for COCOON. For now this crate only holds the pre-TLS proof-of-work
//! exchange ([`pow`]).

pub mod pow;
