//! NVIDIA reference integrity manifests (RIMs): SWID tags (ISO/IEC 19770-2) whose `Payload`
//! lists, for each measurement index, one or more acceptable SHA-384 digests and whether
//! the index is checked (`active`).
//!
//! This is a narrow reader for the shape NVIDIA's RIMs have, not a general XML parser: it
//! reads start and end tags and their quoted attributes, requires elements to nest and close
//! under one root with exactly one `Payload`, skips comments, processing instructions and
//! text, refuses DOCTYPE and CDATA, and resolves a `HashN` attribute's prefix through the
//! `xmlns:` declarations of the document (flattened, not scoped). The RIM's XML signature is
//! checked by [`super::xmldsig`].

use std::collections::{BTreeMap, HashMap};

/// Largest RIM accepted (NVIDIA's are about 20 KiB).
pub const MAX_RIM_LEN: usize = 1024 * 1024;
/// Most alternatives accepted for one index.
pub const MAX_ALTERNATIVES: usize = 16;
const SHA384_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";

/// Why a RIM could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RimError {
    /// Larger than [`MAX_RIM_LEN`] or not UTF-8.
    #[error("not a RIM: {0}")]
    Format(&'static str),
    /// Malformed markup.
    #[error("malformed XML at byte {0}")]
    Xml(usize),
    /// Elements do not nest and close under one root, or the `Payload` is missing or
    /// repeated.
    #[error("malformed RIM: {0}")]
    Structure(&'static str),
    /// `Meta` or its `colloquialVersion` is missing.
    #[error("no colloquialVersion in Meta")]
    NoVersion,
    /// A `Resource` in the payload is malformed.
    #[error("measurement {index:?}: {reason}")]
    Measurement {
        /// Its index, when it could be read.
        index: Option<u32>,
        /// What is wrong.
        reason: &'static str,
    },
    /// No measurement in the payload.
    #[error("no measurements")]
    Empty,
}

/// One reference measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RimMeasurement {
    /// NVIDIA's name for it.
    pub name: String,
    /// Whether it is compared with the report.
    pub active: bool,
    /// The digest size in bytes.
    pub size: usize,
    /// The acceptable digests.
    pub alternatives: Vec<Vec<u8>>,
}

/// A parsed RIM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rim {
    /// `Meta/@colloquialVersion`: the driver version, or the VBIOS version.
    pub version: String,
    /// Measurements by NVIDIA's index (the report's SPDM block index minus one).
    pub measurements: BTreeMap<u32, RimMeasurement>,
}

pub(super) struct Tag<'a> {
    pub(super) name: &'a str,
    pub(super) closing: bool,
    pub(super) self_closing: bool,
    pub(super) attrs: Vec<(&'a str, &'a str)>,
}

pub(super) fn local(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

/// Reads tags one after another.
fn tags(doc: &str) -> Result<Vec<Tag<'_>>, RimError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Some(off) = doc.get(pos..).and_then(|s| s.find('<')) {
        let start = pos + off;
        let rest = doc.get(start..).unwrap_or_default();
        if rest.starts_with("<!--") {
            let end = rest.find("-->").ok_or(RimError::Xml(start))?;
            pos = start + end + 3;
            continue;
        }
        if rest.starts_with("<?") {
            let end = rest.find("?>").ok_or(RimError::Xml(start))?;
            pos = start + end + 2;
            continue;
        }
        if rest.starts_with("<!") {
            // DOCTYPE or CDATA: not in NVIDIA's RIMs, and not read here.
            return Err(RimError::Xml(start));
        }
        let (tag, len) = parse_tag(rest).ok_or(RimError::Xml(start))?;
        out.push(tag);
        pos = start + len;
    }
    Ok(out)
}

/// Parses one tag at the start of `s` (which begins with `<`); returns it and its length.
pub(super) fn parse_tag(s: &str) -> Option<(Tag<'_>, usize)> {
    let b = s.as_bytes();
    let mut i = 1;
    let closing = b.get(i) == Some(&b'/');
    if closing {
        i += 1;
    }
    let name_start = i;
    while b
        .get(i)
        .is_some_and(|c| !c.is_ascii_whitespace() && *c != b'>' && *c != b'/')
    {
        i += 1;
    }
    let name = s.get(name_start..i)?;
    if name.is_empty() {
        return None;
    }
    let mut attrs = Vec::new();
    loop {
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        match b.get(i)? {
            b'>' => {
                return Some((
                    Tag {
                        name,
                        closing,
                        self_closing: false,
                        attrs,
                    },
                    i + 1,
                ));
            }
            b'/' if b.get(i + 1) == Some(&b'>') && !closing => {
                return Some((
                    Tag {
                        name,
                        closing,
                        self_closing: true,
                        attrs,
                    },
                    i + 2,
                ));
            }
            _ if closing => return None,
            _ => {}
        }
        let key_start = i;
        while b
            .get(i)
            .is_some_and(|c| *c != b'=' && !c.is_ascii_whitespace() && *c != b'>')
        {
            i += 1;
        }
        let key = s.get(key_start..i)?;
        if b.get(i) != Some(&b'=') || key.is_empty() {
            return None;
        }
        i += 1;
        let quote = *b.get(i)?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        i += 1;
        let value_start = i;
        while b.get(i)? != &quote {
            if b.get(i)? == &b'<' {
                return None;
            }
            i += 1;
        }
        attrs.push((key, s.get(value_start..i)?));
        i += 1;
    }
}

fn attr<'a>(tag: &Tag<'a>, name: &str) -> Option<&'a str> {
    tag.attrs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

/// Parses a RIM.
pub fn parse(bytes: &[u8]) -> Result<Rim, RimError> {
    if bytes.len() > MAX_RIM_LEN {
        return Err(RimError::Format("larger than the limit"));
    }
    let doc = std::str::from_utf8(bytes).map_err(|_| RimError::Format("not UTF-8"))?;
    let tags = tags(doc)?;
    let mut ns: HashMap<&str, &str> = HashMap::new();
    for tag in &tags {
        for (k, v) in &tag.attrs {
            if let Some(prefix) = k.strip_prefix("xmlns:") {
                ns.entry(prefix).or_insert(v);
            }
        }
    }
    let mut version = None;
    let mut in_payload = false;
    let mut payload_closed = false;
    let mut measurements = BTreeMap::new();
    // Elements must nest and close, under one root: a truncated or spliced RIM must not
    // read as a shorter list of measurements.
    let mut open: Vec<&str> = Vec::new();
    let mut roots = 0usize;
    for tag in &tags {
        if tag.closing {
            if open.pop() != Some(tag.name) {
                return Err(RimError::Structure("a closing tag does not match"));
            }
        } else {
            if open.is_empty() {
                roots += 1;
            }
            if !tag.self_closing {
                open.push(tag.name);
            }
        }
        // Nothing inside the XML signature is signed: it never counts as the RIM's content.
        if local(tag.name) == "Signature" || open.iter().any(|n| local(n) == "Signature") {
            continue;
        }
        match (local(tag.name), tag.closing) {
            ("Meta", false) if version.is_none() => {
                version = attr(tag, "colloquialVersion").map(str::to_owned);
            }
            ("Payload", false) if !tag.self_closing => {
                if payload_closed || in_payload {
                    return Err(RimError::Structure("more than one Payload"));
                }
                in_payload = true;
            }
            ("Payload", true) => {
                in_payload = false;
                payload_closed = true;
            }
            ("Resource", false) if in_payload => {
                let (index, m) = measurement(tag, &ns)?;
                if measurements.insert(index, m).is_some() {
                    return Err(RimError::Measurement {
                        index: Some(index),
                        reason: "index repeated",
                    });
                }
            }
            _ => {}
        }
    }
    if !open.is_empty() || roots != 1 {
        return Err(RimError::Structure("elements not closed, or not one root"));
    }
    if !payload_closed {
        return Err(RimError::Structure("no Payload"));
    }
    let version = version
        .filter(|v| !v.is_empty())
        .ok_or(RimError::NoVersion)?;
    if measurements.is_empty() {
        return Err(RimError::Empty);
    }
    Ok(Rim {
        version,
        measurements,
    })
}

fn measurement(tag: &Tag<'_>, ns: &HashMap<&str, &str>) -> Result<(u32, RimMeasurement), RimError> {
    let bad = |index, reason| RimError::Measurement { index, reason };
    let index: u32 = attr(tag, "index")
        .and_then(|v| v.parse().ok())
        .ok_or(bad(None, "no index"))?;
    let idx = Some(index);
    let active = match attr(tag, "active") {
        Some("True") => true,
        Some("False") => false,
        _ => return Err(bad(idx, "active is neither True nor False")),
    };
    let size: usize = attr(tag, "size")
        .and_then(|v| v.parse().ok())
        .filter(|s| (1..=64).contains(s))
        .ok_or(bad(idx, "bad size"))?;
    let count: usize = attr(tag, "alternatives")
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=MAX_ALTERNATIVES).contains(n))
        .ok_or(bad(idx, "bad alternatives"))?;
    let mut alternatives = Vec::with_capacity(count);
    for n in 0..count {
        let want = format!("Hash{n}");
        let value = tag
            .attrs
            .iter()
            .find(|(k, _)| {
                k.split_once(':').is_some_and(|(prefix, name)| {
                    name == want && ns.get(prefix) == Some(&SHA384_NS)
                })
            })
            .map(|(_, v)| *v)
            .ok_or(bad(idx, "an alternative's SHA-384 hash is missing"))?;
        let digest = hex::decode(value).map_err(|_| bad(idx, "hash is not hex"))?;
        if digest.len() != size {
            return Err(bad(idx, "hash length differs from size"));
        }
        alternatives.push(digest);
    }
    let name = attr(tag, "name").unwrap_or_default().to_owned();
    Ok((
        index,
        RimMeasurement {
            name,
            active,
            size,
            alternatives,
        },
    ))
}
