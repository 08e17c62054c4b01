//! Cocoon's embedded inference engine: llama.cpp through `llama-cpp-2`.
//!
//! It lives in its own crate because llama.cpp takes minutes to compile; nothing else in the
//! workspace depends on it except the binary. See [`engine`] for the scheduler, [`template`] for
//! chat templates, [`output`] for the OpenAI answer format and [`grammar`] for
//! `response_format`, [`tools`] for function tools, [`openmp`] for how llama.cpp's threads
//! wait.
#![forbid(unsafe_code)]

pub mod embed;
pub mod engine;
pub mod grammar;
pub mod openmp;
pub mod output;
pub mod template;
pub mod tools;

pub use engine::{LlamaConfig, LlamaEngine, LoadError, Serve};
