//! Parser for the TL scheme files under `crates/tl/schema/`.
//!
//! This module is used twice: by `build.rs`, which generates the Rust types, and at run time
//! by the schema-driven JSON codec (`cocoon tl decode`). It therefore depends on `std` only.

use std::fmt;

/// A field or vector element type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    /// `int`.
    Int,
    /// `long`.
    Long,
    /// `double`.
    Double,
    /// `string`.
    String,
    /// `bytes`.
    Bytes,
    /// `int128`.
    Int128,
    /// `int256`.
    Int256,
    /// `Bool`.
    Bool,
    /// `(vector T)`: a bare vector (element count, then the elements).
    Vector(Box<Type>),
    /// A bare constructor such as `tokensUsed` or `proxy.params`: fields only, no id.
    Bare(String),
    /// A boxed type such as `proxy.SignedPayment`: constructor id, then fields.
    Boxed(String),
}

impl Type {
    fn parse(text: &str) -> Result<Type, String> {
        let text = text.trim();
        if let Some(inner) = text
            .strip_prefix("(vector ")
            .and_then(|t| t.strip_suffix(')'))
        {
            return Ok(Type::Vector(Box::new(Type::parse(inner)?)));
        }
        if let Some(inner) = text.strip_prefix("vector ") {
            return Ok(Type::Vector(Box::new(Type::parse(inner)?)));
        }
        Ok(match text {
            "int" | "int32" => Type::Int,
            "long" | "int64" => Type::Long,
            "double" => Type::Double,
            "string" => Type::String,
            "bytes" => Type::Bytes,
            "int128" => Type::Int128,
            "int256" => Type::Int256,
            "Bool" => Type::Bool,
            "" => return Err("empty type".into()),
            other => {
                if !other
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
                {
                    return Err(format!("bad type name `{other}`"));
                }
                let last = other.rsplit('.').next().unwrap_or(other);
                if last.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                    Type::Boxed(other.to_string())
                } else {
                    Type::Bare(other.to_string())
                }
            }
        })
    }
}

impl fmt::Display for Type {
    /// The canonical spelling used for constructor ids.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Int => f.write_str("int"),
            Type::Long => f.write_str("long"),
            Type::Double => f.write_str("double"),
            Type::String => f.write_str("string"),
            Type::Bytes => f.write_str("bytes"),
            Type::Int128 => f.write_str("int128"),
            Type::Int256 => f.write_str("int256"),
            Type::Bool => f.write_str("Bool"),
            Type::Vector(inner) => write!(f, "vector {inner}"),
            Type::Bare(name) | Type::Boxed(name) => f.write_str(name),
        }
    }
}

/// The kind of one declared field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldKind {
    /// `flags:#`: a 32-bit word whose bits say which conditional fields follow.
    Flags,
    /// `name:T`.
    Plain(Type),
    /// `name:flags.N?T`: present iff bit `bit` of the flags field `flags` is set.
    Conditional {
        /// Name of the flags field.
        flags: String,
        /// The bit number.
        bit: u32,
        /// The value type.
        ty: Type,
    },
}

/// One declared field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field name as declared.
    pub name: String,
    /// Plain, conditional or a flags word.
    pub kind: FieldKind,
}

impl Field {
    /// The value type of the field (`None` for a flags word).
    pub fn value_type(&self) -> Option<&Type> {
        match &self.kind {
            FieldKind::Flags => None,
            FieldKind::Plain(ty) | FieldKind::Conditional { ty, .. } => Some(ty),
        }
    }
}

/// One constructor or function declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declaration {
    /// Full name with namespace, e.g. `client.runQueryEx`.
    pub name: String,
    /// The id written on the wire.
    pub id: u32,
    /// True when the id was given explicitly with `#xxxxxxxx`.
    pub explicit_id: bool,
    /// Fields in wire order.
    pub fields: Vec<Field>,
    /// Result type, e.g. `client.QueryAnswerEx`.
    pub result: String,
    /// True for a function (query) declaration.
    pub is_function: bool,
    /// Protocol version that introduced the declaration (2 for `cocoon_api.tl`).
    pub since_proto: u32,
}

impl Declaration {
    /// The canonical text whose CRC-32 is the constructor id.
    pub fn canonical(&self) -> String {
        let mut out = self.name.clone();
        for field in &self.fields {
            out.push(' ');
            out.push_str(&field.name);
            out.push(':');
            match &field.kind {
                FieldKind::Flags => out.push('#'),
                FieldKind::Plain(ty) => out.push_str(&ty.to_string()),
                FieldKind::Conditional { flags, bit, ty } => {
                    out.push_str(&format!("{flags}.{bit}?{ty}"));
                }
            }
        }
        out.push_str(" = ");
        out.push_str(&self.result);
        out
    }

    /// Namespace (`client` for `client.runQueryEx`, empty for `tokensUsed`).
    pub fn namespace(&self) -> &str {
        namespace_of(&self.name)
    }

    /// Name without namespace.
    pub fn short_name(&self) -> &str {
        short_name_of(&self.name)
    }
}

impl Declaration {
    /// Bits of `flags_field` that some conditional field of this declaration uses.
    pub fn flag_mask(&self, flags_field: &str) -> u32 {
        self.fields
            .iter()
            .filter_map(|f| match &f.kind {
                FieldKind::Conditional { flags, bit, .. } if flags == flags_field => {
                    Some(1u32 << bit)
                }
                _ => None,
            })
            .fold(0, |a, b| a | b)
    }

    /// Other conditional fields that share `field`'s flag bit.
    pub fn bit_siblings<'a>(&'a self, field: &'a Field) -> impl Iterator<Item = &'a Field> + 'a {
        let key = match &field.kind {
            FieldKind::Conditional { flags, bit, .. } => Some((flags.as_str(), *bit)),
            _ => None,
        };
        self.fields.iter().filter(move |g| {
            g.name != field.name
                && matches!((&g.kind, key), (FieldKind::Conditional { flags, bit, .. }, Some((kf, kb))) if flags == kf && *bit == kb)
        })
    }

    /// Smallest encoded size of the fields, given a lookup of bare constructors by name.
    pub fn min_size<'d>(&self, lookup: &impl Fn(&str) -> Option<&'d Declaration>) -> usize {
        self.fields
            .iter()
            .map(|f| match &f.kind {
                FieldKind::Flags => 4,
                FieldKind::Plain(ty) => ty.min_size(lookup),
                FieldKind::Conditional { .. } => 0,
            })
            .sum()
    }
}

impl Type {
    /// Smallest encoded size of a value of this type.
    pub fn min_size<'d>(&self, lookup: &impl Fn(&str) -> Option<&'d Declaration>) -> usize {
        match self {
            Type::Int | Type::String | Type::Bytes | Type::Bool | Type::Vector(_) => 4,
            Type::Long | Type::Double => 8,
            Type::Int128 => 16,
            Type::Int256 => 32,
            Type::Bare(name) => lookup(name).map(|d| d.min_size(lookup)).unwrap_or(0),
            Type::Boxed(_) => 4,
        }
    }

    /// Types whose zero value is sent for a conditional field that is absent while a field
    /// sharing its flag bit is present.
    pub fn has_zero_value(&self) -> bool {
        matches!(
            self,
            Type::Int
                | Type::Long
                | Type::Double
                | Type::String
                | Type::Bytes
                | Type::Bool
                | Type::Vector(_)
        )
    }
}

/// How a TL `string` field is represented in Rust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringKind {
    /// UTF-8 text; anything else is a decoding error.
    Text,
    /// Free text from a peer (error messages, debug output): invalid UTF-8 is replaced, as
    /// peers may send any bytes there and failing the whole message would lose it.
    LossyText,
    /// Not text at all (contract code cells): `Vec<u8>`.
    Binary,
}

/// How a `string` field named `field` is represented in Rust.
pub fn string_kind(field: &str) -> StringKind {
    if field.ends_with("_sc_code") {
        StringKind::Binary
    } else if matches!(field, "message" | "error" | "worker_debug" | "proxy_debug") {
        StringKind::LossyText
    } else {
        StringKind::Text
    }
}

/// Fields whose value must never be printed (keys, secrets, HTTP header values that may
/// carry credentials); their `Debug` shows `<redacted>`.
pub fn is_secret(constructor: &str, field: &str) -> bool {
    field.contains("private_key")
        || field == "node_wallet_key"
        || field.starts_with("secret")
        || field == "http_access_hash"
        || (constructor == "http.header" && field == "value")
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as TL uses for constructor ids.
pub const fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    let mut i = 0;
    while i < data.len() {
        crc ^= data[i] as u32;
        let mut k = 0;
        while k < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
            k += 1;
        }
        i += 1;
    }
    !crc
}

/// Parse one scheme file. `default_proto` is the protocol version of declarations that are
/// not preceded by a `//@proto N` line.
pub fn parse(text: &str, default_proto: u32) -> Result<Vec<Declaration>, String> {
    let mut decls = Vec::new();
    let mut is_function = false;
    let mut proto = default_proto;
    let mut pending = String::new();
    for (lineno, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix("//@proto") {
            proto = rest
                .trim()
                .parse()
                .map_err(|_| format!("line {}: bad //@proto directive", lineno + 1))?;
            continue;
        }
        let line = match line.find("//") {
            Some(pos) => line[..pos].trim(),
            None => line,
        };
        if line.is_empty() {
            continue;
        }
        if line == "---types---" || line == "---functions---" {
            if !pending.trim().is_empty() {
                return Err(format!(
                    "line {}: declaration not ended with `;`",
                    lineno + 1
                ));
            }
            is_function = line == "---functions---";
            continue;
        }
        pending.push(' ');
        pending.push_str(line);
        while let Some(pos) = pending.find(';') {
            let decl_text: String = pending[..pos].to_string();
            pending = pending[pos + 1..].to_string();
            let decl = parse_declaration(&decl_text, is_function, proto)
                .map_err(|e| format!("line {}: {e}", lineno + 1))?;
            decls.push(decl);
        }
    }
    if !pending.trim().is_empty() {
        return Err("unterminated declaration at end of file".into());
    }
    Ok(decls)
}

fn parse_declaration(text: &str, is_function: bool, proto: u32) -> Result<Declaration, String> {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let (lhs, result) = text
        .rsplit_once(" = ")
        .ok_or_else(|| format!("`{text}`: missing ` = Result`"))?;
    let result = result.trim().to_string();
    // Split the left side into tokens, keeping `(vector X)` together.
    let mut tokens = Vec::new();
    let mut depth = 0usize;
    let mut cur = String::new();
    for c in lhs.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth = depth.checked_sub(1).ok_or("unbalanced `)`")?;
                cur.push(c);
            }
            ' ' if depth == 0 => {
                if !cur.is_empty() {
                    tokens.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if depth != 0 {
        return Err("unbalanced `(`".into());
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    let mut tokens = tokens.into_iter();
    let head = tokens.next().ok_or("empty declaration")?;
    let (name, explicit) = match head.split_once('#') {
        Some((name, hex)) => {
            let id =
                u32::from_str_radix(hex, 16).map_err(|_| format!("bad explicit id `{hex}`"))?;
            (name.to_string(), Some(id))
        }
        None => (head, None),
    };
    let mut fields: Vec<Field> = Vec::new();
    for token in tokens {
        let (fname, ftype) = token
            .split_once(':')
            .ok_or_else(|| format!("{name}: field `{token}` without type"))?;
        let kind = if ftype == "#" {
            FieldKind::Flags
        } else if let Some((cond, ty)) = ftype.split_once('?') {
            let (flags, bit) = cond
                .split_once('.')
                .ok_or_else(|| format!("{name}.{fname}: bad condition `{cond}`"))?;
            let bit: u32 = bit
                .parse()
                .map_err(|_| format!("{name}.{fname}: bad bit"))?;
            if bit > 31 {
                return Err(format!("{name}.{fname}: bit {bit} out of range"));
            }
            let declared = fields
                .iter()
                .any(|f| f.name == flags && matches!(f.kind, FieldKind::Flags));
            if !declared {
                return Err(format!(
                    "{name}.{fname}: flags field `{flags}` not declared before"
                ));
            }
            FieldKind::Conditional {
                flags: flags.to_string(),
                bit,
                ty: Type::parse(ty)?,
            }
        } else {
            FieldKind::Plain(Type::parse(ftype).map_err(|e| format!("{name}.{fname}: {e}"))?)
        };
        if fields.iter().any(|f| f.name == fname) {
            return Err(format!("{name}: duplicate field `{fname}`"));
        }
        fields.push(Field {
            name: fname.to_string(),
            kind,
        });
    }
    let mut decl = Declaration {
        name,
        id: 0,
        explicit_id: explicit.is_some(),
        fields,
        result,
        is_function,
        since_proto: proto,
    };
    decl.id = explicit.unwrap_or_else(|| crc32(decl.canonical().as_bytes()));
    Ok(decl)
}

/// A message set of `schema/messages.tl`: the constructors one peer may send another,
/// grouped for dispatch (no new constructor, no id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSet {
    /// Full name with namespace, e.g. `client.ToProxy`.
    pub name: String,
    /// Full names of the member declarations, in the order written.
    pub members: Vec<String>,
}

impl MessageSet {
    /// Namespace (`client` for `client.ToProxy`).
    pub fn namespace(&self) -> &str {
        namespace_of(&self.name)
    }

    /// Name without namespace.
    pub fn short_name(&self) -> &str {
        short_name_of(&self.name)
    }
}

/// The namespace of a full name (`client` for `client.ToProxy`, empty without one).
fn namespace_of(name: &str) -> &str {
    name.rsplit_once('.').map(|(ns, _)| ns).unwrap_or("")
}

/// A full name without its namespace.
fn short_name_of(name: &str) -> &str {
    name.rsplit_once('.').map(|(_, n)| n).unwrap_or(name)
}

/// Parse a message-set file: `ns.Name = member member ...;` statements, `//` comments.
pub fn parse_message_sets(text: &str) -> Result<Vec<MessageSet>, String> {
    let mut sets: Vec<MessageSet> = Vec::new();
    let mut pending = String::new();
    for (lineno, raw) in text.lines().enumerate() {
        let line = match raw.find("//") {
            Some(pos) => &raw[..pos],
            None => raw,
        };
        pending.push(' ');
        pending.push_str(line.trim());
        while let Some(pos) = pending.find(';') {
            let stmt = pending[..pos].to_string();
            pending = pending[pos + 1..].to_string();
            let set = parse_message_set(&stmt).map_err(|e| format!("line {}: {e}", lineno + 1))?;
            if sets.iter().any(|s| s.name == set.name) {
                return Err(format!(
                    "line {}: set {} declared twice",
                    lineno + 1,
                    set.name
                ));
            }
            sets.push(set);
        }
    }
    if !pending.trim().is_empty() {
        return Err("unterminated message set at end of file".into());
    }
    Ok(sets)
}

fn parse_message_set(stmt: &str) -> Result<MessageSet, String> {
    let (name, members) = stmt
        .split_once('=')
        .ok_or_else(|| format!("`{}`: missing ` = members`", stmt.trim()))?;
    let name = name.trim();
    let (_, short) = name
        .rsplit_once('.')
        .ok_or_else(|| format!("set `{name}` has no namespace"))?;
    if !short.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
    {
        return Err(format!("bad set name `{name}`"));
    }
    let members: Vec<String> = members.split_whitespace().map(str::to_string).collect();
    if members.is_empty() {
        return Err(format!("set {name} has no members"));
    }
    for (i, m) in members.iter().enumerate() {
        if members[..i].contains(m) {
            return Err(format!("set {name} lists {m} twice"));
        }
    }
    Ok(MessageSet {
        name: name.to_string(),
        members,
    })
}

/// The message sets of `schema/messages.tl`.
pub fn message_sets() -> Result<Vec<MessageSet>, String> {
    parse_message_sets(COCOON_MESSAGES_TL)
}

/// Both scheme files, parsed.
pub fn cocoon_schema() -> Result<Vec<Declaration>, String> {
    let mut decls = parse(COCOON_API_TL, 2)?;
    decls.extend(parse(COCOON_EXT_TL, 3)?);
    Ok(decls)
}

/// The protocol version 2 scheme (COCOON-compatible, see docs/cocoon-compat.md).
pub const COCOON_API_TL: &str = include_str!("../schema/cocoon_api.tl");
/// Our protocol version 3 additions.
pub const COCOON_EXT_TL: &str = include_str!("../schema/cocoon_ext.tl");
/// Message sets (who sends what), for dispatch.
pub const COCOON_MESSAGES_TL: &str = include_str!("../schema/messages.tl");
