//! The XML signature of an NVIDIA RIM, for the one shape NVIDIA uses: an enveloped
//! `ds:Signature` as the root's child, one `Reference` with `URI=""`, the transforms
//! enveloped-signature then Canonical XML (1.1 or 1.0: the same for these documents),
//! SHA-384 digest, ECDSA P-384/SHA-384 signature (raw r‖s), and the signer's certificate
//! chain in `KeyInfo` (leaf first) up to NVIDIA's RIM root, pinned.
//!
//! Canonicalization (inclusive, without comments) is done over the tokens the RIM reader
//! reads: start tags with namespace declarations first (default, then by prefix; a
//! declaration an output ancestor already made with the same value is dropped; the apex of a
//! subset gets every namespace in scope) and attributes sorted by namespace URI and local
//! name, values and text re-escaped, empty elements written as start and end tag, comments
//! and processing instructions dropped. Entity references other than the five predefined
//! ones and character references are refused, as are DOCTYPE and CDATA.

use std::collections::BTreeMap;

use sha2::{Digest, Sha384};

use super::rim::{Tag, local, parse_tag};

const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
const C14N_11: &str = "http://www.w3.org/2006/12/xml-c14n11";
const C14N_10: &str = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
const SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";

/// Why a RIM's signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RimSignatureError {
    /// The document or its `Signature` does not have the expected shape.
    #[error("RIM signature: {0}")]
    Shape(&'static str),
    /// The digest of the canonical document is not the signed one.
    #[error("RIM digest does not match: the RIM was changed after signing")]
    Digest,
    /// The signer's certificate chain does not hold.
    #[error("RIM signer chain: {0}")]
    Chain(String),
    /// The signature over `SignedInfo` does not verify with the signer's key.
    #[error("RIM signature does not verify")]
    Signature,
}

/// Namespace prefix ("" for the default) → URI.
type Namespaces<'a> = BTreeMap<&'a str, &'a str>;

enum Tok<'a> {
    Tag(Tag<'a>),
    Text(&'a str),
}

fn tokens(doc: &str) -> Result<Vec<Tok<'_>>, RimSignatureError> {
    let bad = RimSignatureError::Shape("malformed XML");
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < doc.len() {
        let rest = doc.get(pos..).ok_or(bad.clone())?;
        let Some(off) = rest.find('<') else {
            out.push(Tok::Text(rest));
            break;
        };
        if off > 0 {
            out.push(Tok::Text(rest.get(..off).ok_or(bad.clone())?));
        }
        let rest = rest.get(off..).ok_or(bad.clone())?;
        let skip = if rest.starts_with("<!--") {
            rest.find("-->").map(|e| e + 3)
        } else if rest.starts_with("<?") {
            rest.find("?>").map(|e| e + 2)
        } else if rest.starts_with("<!") {
            None
        } else {
            let (tag, len) = parse_tag(rest).ok_or(bad.clone())?;
            out.push(Tok::Tag(tag));
            Some(len)
        };
        pos += off + skip.ok_or(bad.clone())?;
    }
    Ok(out)
}

/// For each start tag, the index of its end (itself when self-closing).
fn ends(toks: &[Tok<'_>]) -> Result<BTreeMap<usize, usize>, RimSignatureError> {
    let mut stack = Vec::new();
    let mut out = BTreeMap::new();
    for (i, t) in toks.iter().enumerate() {
        if let Tok::Tag(tag) = t {
            if tag.closing {
                let start = stack.pop().ok_or(RimSignatureError::Shape("unbalanced"))?;
                let opened = match toks.get(start) {
                    Some(Tok::Tag(t)) => t.name,
                    _ => "",
                };
                if opened != tag.name {
                    return Err(RimSignatureError::Shape("a closing tag does not match"));
                }
                out.insert(start, i);
            } else if tag.self_closing {
                out.insert(i, i);
            } else {
                stack.push(i);
            }
        }
    }
    if !stack.is_empty() {
        return Err(RimSignatureError::Shape("unbalanced"));
    }
    Ok(out)
}

fn decode_entities(s: &str, attr: bool) -> Result<String, RimSignatureError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(rest.get(..i).unwrap_or_default());
        let after = rest.get(i..).unwrap_or_default();
        let end = after
            .find(';')
            .ok_or(RimSignatureError::Shape("bad entity"))?;
        out.push(match after.get(..=end).unwrap_or_default() {
            "&lt;" => '<',
            "&gt;" => '>',
            "&amp;" => '&',
            "&quot;" => '"',
            "&apos;" => '\'',
            _ => return Err(RimSignatureError::Shape("unsupported entity")),
        });
        rest = after.get(end + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    let out = out.replace("\r\n", "\n").replace('\r', "\n");
    Ok(if attr {
        out.replace(['\t', '\n'], " ")
    } else {
        out
    })
}

fn escape_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

fn escape_attr(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

/// Namespace declarations of a tag: prefix ("" for the default) → URI.
fn declarations<'a>(tag: &Tag<'a>) -> Vec<(&'a str, &'a str)> {
    tag.attrs
        .iter()
        .filter_map(|(k, v)| {
            if *k == "xmlns" {
                Some(("", *v))
            } else {
                k.strip_prefix("xmlns:").map(|p| (p, *v))
            }
        })
        .collect()
}

/// The in-scope namespaces at token `at` (declarations of its open ancestors, not its own).
fn scope_at<'a>(toks: &[Tok<'a>], at: usize) -> BTreeMap<&'a str, &'a str> {
    let mut stack: Vec<Vec<(&'a str, &'a str)>> = Vec::new();
    for t in toks.iter().take(at) {
        if let Tok::Tag(tag) = t {
            if tag.closing {
                stack.pop();
            } else if !tag.self_closing {
                stack.push(declarations(tag));
            }
        }
    }
    let mut scope = BTreeMap::new();
    for level in stack {
        for (p, u) in level {
            scope.insert(p, u);
        }
    }
    scope
}

/// Canonical XML of the element starting at `start` (ending at `end`), leaving out the
/// tokens in `skip` (an element and its content).
fn canonical(
    toks: &[Tok<'_>],
    start: usize,
    end: usize,
    skip: Option<(usize, usize)>,
) -> Result<String, RimSignatureError> {
    let mut out = String::new();
    // Per open element: its in-scope namespaces and the ones rendered so far (output scope).
    let inherited = scope_at(toks, start);
    let mut stack: Vec<(Namespaces<'_>, Namespaces<'_>)> = Vec::new();
    let mut i = start;
    while i <= end {
        if let Some((a, b)) = skip
            && i == a
        {
            i = b + 1;
            continue;
        }
        match toks.get(i) {
            Some(Tok::Text(t)) => escape_text(&decode_entities(t, false)?, &mut out),
            Some(Tok::Tag(tag)) if tag.closing => {
                stack.pop();
                out.push_str("</");
                out.push_str(tag.name);
                out.push('>');
            }
            Some(Tok::Tag(tag)) => {
                let (mut scope, mut rendered) = match stack.last() {
                    Some((s, r)) => (s.clone(), r.clone()),
                    None => (inherited.clone(), BTreeMap::new()),
                };
                for (p, u) in declarations(tag) {
                    scope.insert(p, u);
                }
                out.push('<');
                out.push_str(tag.name);
                // Namespaces: the default first, then by prefix (BTreeMap order, "" first).
                for (p, u) in &scope {
                    if rendered.get(p) == Some(u)
                        || (p.is_empty() && u.is_empty() && !rendered.contains_key(p))
                    {
                        continue;
                    }
                    out.push_str(if p.is_empty() { " xmlns" } else { " xmlns:" });
                    out.push_str(p);
                    out.push_str("=\"");
                    escape_attr(u, &mut out);
                    out.push('"');
                    rendered.insert(p, u);
                }
                let mut attrs = Vec::new();
                for (k, v) in &tag.attrs {
                    if *k == "xmlns" || k.starts_with("xmlns:") {
                        continue;
                    }
                    let (uri, name) = match k.split_once(':') {
                        Some((p, n)) => (
                            *scope
                                .get(p)
                                .ok_or(RimSignatureError::Shape("undeclared prefix"))?,
                            n,
                        ),
                        None => ("", *k),
                    };
                    attrs.push(((uri, name), *k, decode_entities(v, true)?));
                }
                attrs.sort_by(|a, b| a.0.cmp(&b.0));
                for (_, k, v) in attrs {
                    out.push(' ');
                    out.push_str(k);
                    out.push_str("=\"");
                    escape_attr(&v, &mut out);
                    out.push('"');
                }
                out.push('>');
                if tag.self_closing {
                    out.push_str("</");
                    out.push_str(tag.name);
                    out.push('>');
                } else {
                    stack.push((scope, rendered));
                }
            }
            None => return Err(RimSignatureError::Shape("truncated")),
        }
        i += 1;
    }
    Ok(out)
}

fn base64(text: &str) -> Result<Vec<u8>, RimSignatureError> {
    let bad = RimSignatureError::Shape("bad base64");
    let mut bits = 0u32;
    let mut n = 0u32;
    let mut out = Vec::new();
    let mut padding = false;
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding = true;
                continue;
            }
            _ => return Err(bad),
        };
        if padding {
            return Err(bad);
        }
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push(((bits >> n) & 0xff) as u8);
        }
    }
    Ok(out)
}

/// The text content of the single element named `local_name` (in the DSig namespace) inside
/// `[from, to]`, with its token range.
fn find<'a>(
    toks: &[Tok<'a>],
    ends: &BTreeMap<usize, usize>,
    from: usize,
    to: usize,
    local_name: &str,
) -> Vec<(usize, usize)> {
    (from..=to)
        .filter(|&i| {
            matches!(toks.get(i), Some(Tok::Tag(t)) if !t.closing && local(t.name) == local_name)
        })
        .filter_map(|i| ends.get(&i).map(|&e| (i, e)))
        .collect()
}

fn text_of<'a>(toks: &[Tok<'a>], (a, b): (usize, usize)) -> String {
    (a..=b)
        .filter_map(|i| match toks.get(i) {
            Some(Tok::Text(t)) => Some(*t),
            _ => None,
        })
        .collect()
}

fn attr_of<'a>(toks: &[Tok<'a>], at: usize, name: &str) -> Option<&'a str> {
    match toks.get(at) {
        Some(Tok::Tag(t)) => t.attrs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v),
        _ => None,
    }
}

fn one(
    found: Vec<(usize, usize)>,
    what: &'static str,
) -> Result<(usize, usize), RimSignatureError> {
    match found.as_slice() {
        [one] => Ok(*one),
        _ => Err(RimSignatureError::Shape(what)),
    }
}

/// Verifies a RIM's enveloped XML signature and its signer chain up to the root pinned by
/// `rim_root_sha256`, at `now`.
pub fn verify(doc: &[u8], rim_root_sha256: &[u8; 32], now: u64) -> Result<(), RimSignatureError> {
    let doc = std::str::from_utf8(doc).map_err(|_| RimSignatureError::Shape("not UTF-8"))?;
    let toks = tokens(doc)?;
    let ends = ends(&toks)?;
    let root = toks
        .iter()
        .position(|t| matches!(t, Tok::Tag(_)))
        .ok_or(RimSignatureError::Shape("no root"))?;
    let root_end = *ends.get(&root).ok_or(RimSignatureError::Shape("no root"))?;
    // Nothing but white space outside the root: what is signed is all there is.
    let outside = toks.iter().take(root).chain(toks.iter().skip(root_end + 1));
    if outside
        .into_iter()
        .any(|t| !matches!(t, Tok::Text(x) if x.trim_ascii().is_empty()))
    {
        return Err(RimSignatureError::Shape("content outside the root element"));
    }
    // The Signature: a child of the root, in the DSig namespace.
    let sig = one(
        find(&toks, &ends, root, root_end, "Signature"),
        "not one Signature",
    )?;
    let Some(Tok::Tag(sig_tag)) = toks.get(sig.0) else {
        return Err(RimSignatureError::Shape("not one Signature"));
    };
    let prefix = sig_tag.name.split_once(':').map_or("", |(p, _)| p);
    let mut sig_scope = scope_at(&toks, sig.0);
    for (p, u) in declarations(sig_tag) {
        sig_scope.insert(p, u);
    }
    if sig_scope.get(prefix) != Some(&DSIG_NS) {
        return Err(RimSignatureError::Shape(
            "Signature not in the DSig namespace",
        ));
    }
    let signed_info = one(
        find(&toks, &ends, sig.0, sig.1, "SignedInfo"),
        "not one SignedInfo",
    )?;
    let (si_a, si_b) = signed_info;
    let algo = |name, what| {
        one(find(&toks, &ends, si_a, si_b, name), what)
            .ok()
            .and_then(|(a, _)| attr_of(&toks, a, "Algorithm"))
    };
    if !matches!(
        algo("CanonicalizationMethod", "c14n"),
        Some(C14N_11 | C14N_10)
    ) {
        return Err(RimSignatureError::Shape("canonicalization is not C14N"));
    }
    if algo("SignatureMethod", "sig") != Some(ECDSA_SHA384) {
        return Err(RimSignatureError::Shape(
            "signature method is not ecdsa-sha384",
        ));
    }
    if algo("DigestMethod", "digest") != Some(SHA384) {
        return Err(RimSignatureError::Shape("digest method is not sha384"));
    }
    let reference = one(
        find(&toks, &ends, si_a, si_b, "Reference"),
        "not one Reference",
    )?;
    if attr_of(&toks, reference.0, "URI") != Some("") {
        return Err(RimSignatureError::Shape(
            "Reference is not to the whole document",
        ));
    }
    let transforms: Vec<Option<&str>> = find(&toks, &ends, si_a, si_b, "Transform")
        .into_iter()
        .map(|(a, _)| attr_of(&toks, a, "Algorithm"))
        .collect();
    if !matches!(
        transforms.as_slice(),
        [Some(ENVELOPED), Some(C14N_11 | C14N_10)] | [Some(ENVELOPED)]
    ) {
        return Err(RimSignatureError::Shape(
            "transforms are not enveloped-signature, C14N",
        ));
    }
    let digest_value = base64(&text_of(
        &toks,
        one(
            find(&toks, &ends, si_a, si_b, "DigestValue"),
            "not one DigestValue",
        )?,
    ))?;
    let document = canonical(&toks, root, root_end, Some(sig))?;
    if Sha384::digest(document.as_bytes())[..] != digest_value[..] {
        return Err(RimSignatureError::Digest);
    }

    let certs: Vec<Vec<u8>> = find(&toks, &ends, sig.0, sig.1, "X509Certificate")
        .into_iter()
        .map(|r| base64(&text_of(&toks, r)))
        .collect::<Result<_, _>>()?;
    let chain = super::chain::verify_ders(&certs, rim_root_sha256, &[], now)
        .map_err(|e| RimSignatureError::Chain(e.to_string()))?;
    let signature = base64(&text_of(
        &toks,
        one(
            find(&toks, &ends, sig.0, sig.1, "SignatureValue"),
            "not one SignatureValue",
        )?,
    ))?;
    let signed = canonical(&toks, si_a, si_b, None)?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P384_SHA384_FIXED,
        &chain.leaf_key,
    )
    .verify(signed.as_bytes(), &signature)
    .map_err(|_| RimSignatureError::Signature)
}
