//! `cocoon-webui`: the web pages of Cocoon's roles and tools, built on the server without a
//! Node toolchain.
//!
//! - [`html`]: escaping, the page shell (one stylesheet and one small script, both compiled
//!   into the binary and served by the page's own server, so a strict Content Security
//!   Policy holds: no inline script or style), cards with big figures, tables that scroll
//!   inside their box, badges, hashes that wrap with their full value in a tooltip, and
//!   operator controls that post with a bearer token the user types in;
//! - [`chart`]: line and bar charts as SVG strings, pure functions of their data;
//! - [`fmt`]: how values read (TON, token counts, durations, ages, hashes, yes/no), so no
//!   page ever shows a Rust `Debug` value;
//! - [`series`]: fixed-size time-series rings (seconds, minutes, hours) fed with the time as
//!   an argument.
//!
//! Everything here is pure: no I/O, no clock, no runtime.
#![forbid(unsafe_code)]

pub mod chart;
pub mod fmt;
pub mod html;
pub mod series;

/// The stylesheet every page links (served at [`CSS_PATH`]).
pub const CSS: &str = include_str!("../assets/ui.css");
/// The script every page loads (served at [`JS_PATH`]): refreshes the page's main part and
/// posts the operator controls with the token typed into the page.
pub const JS: &str = include_str!("../assets/ui.js");
/// Where a page's server serves [`CSS`].
pub const CSS_PATH: &str = "/ui/cocoon.css";
/// Where a page's server serves [`JS`].
pub const JS_PATH: &str = "/ui/cocoon.js";
/// The Content-Security-Policy the pages are written for: nothing but the page's own
/// stylesheet, script and same-origin requests.
pub const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";
