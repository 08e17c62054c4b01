//! `cocoon-service`: what Cocoon's long-running services share. For now the browser guard
//! that every local HTTP server (the client's OpenAI API, the proxy's and the worker's admin
//! pages) puts in front of its routes ([`browser`]).
#![forbid(unsafe_code)]

pub mod browser;
