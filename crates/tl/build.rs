//! Generates the Rust types of the Cocoon TL scheme (`schema/*.tl`) into `$OUT_DIR`:
//! `generated.rs` (types, enums, functions, message sets, constructor table) and
//! `arbitrary.rs` (proptest strategies and round-trip tests for every constructor and set).

#[path = "src/schema.rs"]
#[allow(dead_code, unreachable_pub)] // shared with the library, which uses the rest
mod schema;

use schema::{Declaration, FieldKind, MessageSet, Type};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

const RUST_KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

fn main() {
    println!("cargo:rerun-if-changed=schema/cocoon_api.tl");
    println!("cargo:rerun-if-changed=schema/cocoon_ext.tl");
    println!("cargo:rerun-if-changed=schema/messages.tl");
    println!("cargo:rerun-if-changed=src/schema.rs");
    let decls = schema::cocoon_schema().unwrap_or_else(|e| panic!("bad TL scheme: {e}"));
    let sets = schema::message_sets().unwrap_or_else(|e| panic!("bad message sets: {e}"));
    let generator = Generator::new(&decls, &sets);
    generator.validate();
    let out_dir = std::env::var("OUT_DIR").expect("OUT_DIR");
    std::fs::write(format!("{out_dir}/generated.rs"), generator.generated())
        .expect("write generated");
    std::fs::write(format!("{out_dir}/arbitrary.rs"), generator.arbitrary())
        .expect("write arbitrary");
}

fn upper_camel(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) => c.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if !out.is_empty() {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn ident(name: &str) -> String {
    if RUST_KEYWORDS.contains(&name) {
        format!("r#{name}")
    } else {
        name.to_string()
    }
}

fn split(full: &str) -> (&str, &str) {
    full.rsplit_once('.').unwrap_or(("", full))
}

/// `a.b.c` namespace to a module path such as `root_config::`.
fn module_path(ns: &str) -> String {
    if ns.is_empty() {
        String::new()
    } else {
        ns.split('.').map(snake).collect::<Vec<_>>().join("::") + "::"
    }
}

fn is_binary_string(field: &str) -> bool {
    schema::string_kind(field) == schema::StringKind::Binary
}

struct Generator<'a> {
    decls: &'a [Declaration],
    sets: &'a [MessageSet],
    by_name: HashMap<&'a str, &'a Declaration>,
    /// Result type -> constructors (types only).
    by_result: BTreeMap<&'a str, Vec<&'a Declaration>>,
}

impl<'a> Generator<'a> {
    fn new(decls: &'a [Declaration], sets: &'a [MessageSet]) -> Self {
        let mut by_name = HashMap::new();
        let mut by_result: BTreeMap<&str, Vec<&Declaration>> = BTreeMap::new();
        for d in decls {
            by_name.insert(d.name.as_str(), d);
            if !d.is_function {
                by_result.entry(d.result.as_str()).or_default().push(d);
            }
        }
        Generator {
            decls,
            sets,
            by_name,
            by_result,
        }
    }

    fn validate(&self) {
        for set in self.sets {
            let mut variants = HashMap::new();
            for m in self.members(set) {
                if let Some(other) = variants.insert(upper_camel(m.short_name()), &m.name) {
                    panic!(
                        "{}: {} and {other} give the same variant name",
                        set.name, m.name
                    );
                }
            }
        }
        let mut ids = HashMap::new();
        for d in self.decls {
            if let Some(other) = ids.insert(d.id, &d.name) {
                panic!(
                    "constructor id {:08x} of {} collides with {other}",
                    d.id, d.name
                );
            }
            for f in &d.fields {
                if let Some(ty) = f.value_type() {
                    self.check_type(&d.name, ty);
                }
            }
            // Fields sharing a flag bit must be primitive (they get default values when a
            // sibling is present and they are not).
            let mut bits: HashMap<(String, u32), usize> = HashMap::new();
            for f in &d.fields {
                if let FieldKind::Conditional { flags, bit, .. } = &f.kind {
                    *bits.entry((flags.clone(), *bit)).or_default() += 1;
                }
            }
            for f in &d.fields {
                if let FieldKind::Conditional { flags, bit, ty } = &f.kind
                    && bits[&(flags.clone(), *bit)] > 1
                    && self.default_write(ty).is_none()
                {
                    panic!(
                        "{}.{}: shared flag bit on a non-primitive field",
                        d.name, f.name
                    );
                }
            }
        }
    }

    /// The declarations a message set names (panics on a name the scheme lacks).
    fn members(&self, set: &MessageSet) -> Vec<&'a Declaration> {
        set.members
            .iter()
            .map(|m| match self.by_name.get(m.as_str()) {
                Some(d) => *d,
                None => panic!("{}: unknown member {m}", set.name),
            })
            .collect()
    }

    fn check_type(&self, ctx: &str, ty: &Type) {
        match ty {
            Type::Vector(inner) => {
                self.check_type(ctx, inner);
                if self.min_size(inner) == 0 {
                    panic!("{ctx}: vector of zero-size elements");
                }
            }
            Type::Bare(name) => match self.by_name.get(name.as_str()) {
                Some(d) if !d.is_function => {}
                _ => panic!("{ctx}: unknown bare constructor {name}"),
            },
            Type::Boxed(name) if !self.by_result.contains_key(name.as_str()) => {
                panic!("{ctx}: unknown boxed type {name}");
            }
            _ => {}
        }
    }

    fn min_size(&self, ty: &Type) -> usize {
        ty.min_size(&|name: &str| self.by_name.get(name).copied())
    }

    fn struct_path(&self, d: &Declaration) -> String {
        let root = if d.is_function { "functions" } else { "types" };
        format!(
            "crate::{root}::{}{}",
            module_path(d.namespace()),
            upper_camel(d.short_name())
        )
    }

    fn enum_path(&self, ty: &str) -> String {
        let (ns, name) = split(ty);
        format!("crate::enums::{}{}", module_path(ns), upper_camel(name))
    }

    fn rust_type(&self, field: &str, ty: &Type) -> String {
        match ty {
            Type::Int => "i32".into(),
            Type::Long => "i64".into(),
            Type::Double => "f64".into(),
            Type::String if is_binary_string(field) => "Vec<u8>".into(),
            Type::String => "String".into(),
            Type::Bytes => "Vec<u8>".into(),
            Type::Int128 => "[u8; 16]".into(),
            Type::Int256 => "[u8; 32]".into(),
            Type::Bool => "bool".into(),
            Type::Vector(inner) => format!("Vec<{}>", self.rust_type(field, inner)),
            Type::Bare(name) => self.struct_path(self.by_name[name.as_str()]),
            Type::Boxed(name) => self.enum_path(name),
        }
    }

    fn read_expr(&self, field: &str, ty: &Type) -> String {
        match ty {
            Type::Int => "r.read_i32()?".into(),
            Type::Long => "r.read_i64()?".into(),
            Type::Double => "r.read_f64()?".into(),
            Type::String if is_binary_string(field) => "r.read_bytes()?".into(),
            Type::String if schema::string_kind(field) == schema::StringKind::LossyText => {
                "r.read_string_lossy()?".into()
            }
            Type::String => "r.read_string()?".into(),
            Type::Bytes => "r.read_bytes()?".into(),
            Type::Int128 => "r.read_int128()?".into(),
            Type::Int256 => "r.read_int256()?".into(),
            Type::Bool => "r.read_bool()?".into(),
            Type::Vector(inner) => format!(
                "r.read_vector({}, |r| Ok({}))?",
                self.min_size(inner),
                self.read_expr(field, inner)
            ),
            Type::Bare(name) => format!(
                "<{} as crate::BareRead>::read_bare(r)?",
                self.struct_path(self.by_name[name.as_str()])
            ),
            Type::Boxed(name) => {
                format!("<{} as crate::TlRead>::read_from(r)?", self.enum_path(name))
            }
        }
    }

    /// Statement writing the value referenced by `v` (an expression of reference type).
    fn write_stmt(&self, field: &str, ty: &Type, v: &str) -> String {
        match ty {
            Type::Int => format!("crate::write::i32(out, *{v});"),
            Type::Long => format!("crate::write::i64(out, *{v});"),
            Type::Double => format!("crate::write::f64(out, *{v});"),
            Type::String if is_binary_string(field) => format!("crate::write::bytes(out, {v});"),
            Type::String => format!("crate::write::bytes(out, {v}.as_bytes());"),
            Type::Bytes => format!("crate::write::bytes(out, {v});"),
            Type::Int128 | Type::Int256 => format!("crate::write::raw(out, {v});"),
            Type::Bool => format!("crate::write::bool(out, *{v});"),
            Type::Vector(inner) => format!(
                "crate::write::vector_len(out, {v}.len()); for e in {v}.iter() {{ {} }}",
                self.write_stmt(field, inner, "e")
            ),
            Type::Bare(_) => format!("crate::BareWrite::write_bare({v}, out);"),
            Type::Boxed(_) => format!("crate::TlWrite::write_to({v}, out);"),
        }
    }

    /// Encoding of the zero value, for a conditional field absent while its bit is set.
    fn default_write(&self, ty: &Type) -> Option<&'static str> {
        if !ty.has_zero_value() {
            return None;
        }
        Some(match ty {
            Type::Int => "crate::write::i32(out, 0);",
            Type::Long => "crate::write::i64(out, 0);",
            Type::Double => "crate::write::f64(out, 0.0);",
            Type::String | Type::Bytes => "crate::write::bytes(out, &[]);",
            Type::Bool => "crate::write::bool(out, false);",
            Type::Vector(_) => "crate::write::vector_len(out, 0);",
            _ => return None,
        })
    }

    fn gen_struct(&self, d: &Declaration, out: &mut String) {
        let name = upper_camel(d.short_name());
        let full = &d.name;
        let _ = writeln!(out, "/// `{}` (id `{:08x}`)", d.canonical(), d.id);
        if d.since_proto > 2 {
            let _ = writeln!(
                out,
                "///\n/// Introduced in protocol version {}.",
                d.since_proto
            );
        }
        let _ = writeln!(out, "#[derive(Clone, PartialEq, Default)]");
        let _ = writeln!(out, "pub struct {name} {{");
        for f in &d.fields {
            match &f.kind {
                FieldKind::Flags => {}
                FieldKind::Plain(ty) => {
                    let _ = writeln!(out, "    /// TL field `{}`.", f.name);
                    let _ = writeln!(
                        out,
                        "    pub {}: {},",
                        ident(&f.name),
                        self.rust_type(&f.name, ty)
                    );
                }
                FieldKind::Conditional { flags, bit, ty } => {
                    let _ = writeln!(out, "    /// TL field `{}`.", f.name);
                    let _ = writeln!(out, "    ///");
                    let _ = writeln!(out, "    /// Present iff bit {bit} of `{flags}` is set.");
                    let siblings: Vec<String> =
                        d.bit_siblings(f).map(|g| format!("`{}`", g.name)).collect();
                    if !siblings.is_empty() {
                        let _ = writeln!(
                            out,
                            "    /// Shares the bit with {}: set them together (a missing one is sent as zero).",
                            siblings.join(", ")
                        );
                    }
                    let _ = writeln!(
                        out,
                        "    pub {}: Option<{}>,",
                        ident(&f.name),
                        self.rust_type(&f.name, ty)
                    );
                }
            }
        }
        let _ = writeln!(out, "}}\n");
        let _ = writeln!(
            out,
            "impl crate::Identifiable for {name} {{ const CONSTRUCTOR_ID: u32 = 0x{:08x}; const NAME: &'static str = \"{full}\"; }}\n",
            d.id
        );

        self.gen_debug(d, &name, out);

        // BareWrite.
        let _ = writeln!(out, "impl crate::BareWrite for {name} {{");
        let _ = writeln!(
            out,
            "    #[allow(unused_variables)]\n    fn write_bare(&self, out: &mut Vec<u8>) {{"
        );
        for f in &d.fields {
            match &f.kind {
                FieldKind::Flags => {
                    let _ = writeln!(out, "        let mut {}: u32 = 0;", ident(&f.name));
                    for g in &d.fields {
                        if let FieldKind::Conditional { flags, bit, .. } = &g.kind
                            && flags == &f.name
                        {
                            let _ = writeln!(
                                out,
                                "        if self.{}.is_some() {{ {} |= 1 << {bit}; }}",
                                ident(&g.name),
                                ident(flags)
                            );
                        }
                    }
                    let _ = writeln!(out, "        crate::write::u32(out, {});", ident(&f.name));
                }
                FieldKind::Plain(ty) => {
                    let _ = writeln!(
                        out,
                        "        {{ let v = &self.{}; {} }}",
                        ident(&f.name),
                        self.write_stmt(&f.name, ty, "v")
                    );
                }
                FieldKind::Conditional { flags, bit, ty } => {
                    let default = self.default_write(ty).unwrap_or("");
                    let _ = writeln!(
                        out,
                        "        match &self.{} {{ Some(v) => {{ {} }} None => if {} & (1 << {bit}) != 0 {{ {default} }} }}",
                        ident(&f.name),
                        self.write_stmt(&f.name, ty, "v"),
                        ident(flags)
                    );
                }
            }
        }
        let _ = writeln!(out, "    }}\n}}\n");

        // BareRead.
        let _ = writeln!(out, "impl crate::BareRead for {name} {{");
        let _ = writeln!(
            out,
            "    #[allow(unused_variables)]\n    fn read_bare(r: &mut crate::Reader<'_>) -> crate::Result<Self> {{"
        );
        for f in &d.fields {
            let fname = ident(&f.name);
            let raw = &f.name;
            match &f.kind {
                FieldKind::Flags => {
                    let mask = d.flag_mask(&f.name);
                    let _ = writeln!(
                        out,
                        "        let flags_offset = r.offset();\n        let {fname} = r.read_u32().map_err(|e| e.in_field(\"{full}\", \"{raw}\"))?;"
                    );
                    let _ = writeln!(
                        out,
                        "        if {fname} & !0x{mask:x}u32 != 0 {{ return Err(crate::Error::new(crate::ErrorKind::Invalid {{ what: format!(\"unknown bits {{:#x}} in flags\", {fname} & !0x{mask:x}u32) }}, flags_offset).in_field(\"{full}\", \"{raw}\")); }}"
                    );
                }
                FieldKind::Plain(ty) => {
                    let _ = writeln!(
                        out,
                        "        let {fname} = r.field(\"{full}\", \"{raw}\", |r| Ok({}))?;",
                        self.read_expr(&f.name, ty)
                    );
                }
                FieldKind::Conditional { flags, bit, ty } => {
                    let _ = writeln!(
                        out,
                        "        let {fname} = if {} & (1 << {bit}) != 0 {{ Some(r.field(\"{full}\", \"{raw}\", |r| Ok({}))?) }} else {{ None }};",
                        ident(flags),
                        self.read_expr(&f.name, ty)
                    );
                }
            }
        }
        let names: Vec<String> = d
            .fields
            .iter()
            .filter(|f| !matches!(f.kind, FieldKind::Flags))
            .map(|f| ident(&f.name))
            .collect();
        let _ = writeln!(out, "        Ok({name} {{ {} }})", names.join(", "));
        let _ = writeln!(out, "    }}\n}}\n");

        // Boxed encoding.
        let _ = writeln!(
            out,
            "impl crate::TlWrite for {name} {{ fn write_to(&self, out: &mut Vec<u8>) {{ crate::write::u32(out, 0x{:08x}); crate::BareWrite::write_bare(self, out); }} }}\n",
            d.id
        );
        let _ = writeln!(
            out,
            "impl crate::TlRead for {name} {{ const TYPE_NAME: &'static str = \"{full}\"; fn read_from(r: &mut crate::Reader<'_>) -> crate::Result<Self> {{ let start = r.offset(); let id = r.read_u32().map_err(|e| e.in_type(\"{full}\"))?; if id != 0x{:08x} {{ return Err(crate::Error::new(crate::ErrorKind::UnknownConstructor {{ id, expected: \"{full}\" }}, start)); }} crate::BareRead::read_bare(r) }} }}\n",
            d.id
        );
        if d.is_function {
            let _ = writeln!(
                out,
                "impl crate::TlFunction for {name} {{ type Return = {}; }}\n",
                self.enum_path(&d.result)
            );
        }
    }

    /// `Debug` that never prints payload bytes or secrets: `bytes` fields and binary strings
    /// show their length, keys and secrets `<redacted>`.
    fn gen_debug(&self, d: &Declaration, name: &str, out: &mut String) {
        let _ = writeln!(
            out,
            "impl std::fmt::Debug for {name} {{ fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {{ f.debug_struct(\"{name}\")"
        );
        for fd in &d.fields {
            let Some(ty) = fd.value_type() else { continue };
            let id = ident(&fd.name);
            let raw = &fd.name;
            let opt = matches!(fd.kind, FieldKind::Conditional { .. });
            let value = if schema::is_secret(&d.name, &fd.name) {
                "&\"<redacted>\"".to_string()
            } else if *ty == Type::Bytes || (*ty == Type::String && is_binary_string(&fd.name)) {
                if opt {
                    format!("&self.{id}.as_ref().map(|v| crate::ByteLen(v.len()))")
                } else {
                    format!("&crate::ByteLen(self.{id}.len())")
                }
            } else {
                format!("&self.{id}")
            };
            let _ = writeln!(out, "    .field(\"{raw}\", {value})");
        }
        let _ = writeln!(out, "    .finish() }} }}\n");
    }

    /// An enum with one variant per declaration in `ctors`, with boxed encoding and decoding
    /// that dispatches on the constructor id. `ty` names it in errors.
    fn gen_dispatch(
        &self,
        name: &str,
        ty: &str,
        doc: &str,
        ctors: &[&Declaration],
        with_default: bool,
        out: &mut String,
    ) {
        let _ = writeln!(out, "/// {doc}");
        let _ = writeln!(out, "#[derive(Debug, Clone, PartialEq)]");
        let _ = writeln!(out, "pub enum {name} {{");
        for c in ctors {
            let _ = writeln!(out, "    /// `{}`.", c.name);
            let _ = writeln!(
                out,
                "    {}({}),",
                upper_camel(c.short_name()),
                self.struct_path(c)
            );
        }
        let _ = writeln!(out, "}}\n");
        let _ = writeln!(out, "impl {name} {{");
        let _ = writeln!(
            out,
            "    /// Constructor id of the variant.\n    pub fn constructor_id(&self) -> u32 {{ match self {{"
        );
        for c in ctors {
            let _ = writeln!(
                out,
                "        Self::{}(_) => 0x{:08x},",
                upper_camel(c.short_name()),
                c.id
            );
        }
        let _ = writeln!(out, "    }} }}");
        let _ = writeln!(
            out,
            "    /// TL name of the variant.\n    pub fn constructor_name(&self) -> &'static str {{ match self {{"
        );
        for c in ctors {
            let _ = writeln!(
                out,
                "        Self::{}(_) => \"{}\",",
                upper_camel(c.short_name()),
                c.name
            );
        }
        let _ = writeln!(out, "    }} }}");
        self.gen_decode(ty, ctors, out);
        let _ = writeln!(out, "}}\n");
        let _ = writeln!(
            out,
            "impl crate::TlWrite for {name} {{ fn write_to(&self, out: &mut Vec<u8>) {{ match self {{"
        );
        for c in ctors {
            let _ = writeln!(
                out,
                "    Self::{}(v) => crate::TlWrite::write_to(v, out),",
                upper_camel(c.short_name())
            );
        }
        let _ = writeln!(out, "}} }} }}\n");
        let _ = writeln!(
            out,
            "impl crate::TlRead for {name} {{ const TYPE_NAME: &'static str = \"{ty}\"; fn read_from(r: &mut crate::Reader<'_>) -> crate::Result<Self> {{ let start = r.offset(); match r.read_u32().map_err(|e| e.in_type(\"{ty}\"))? {{"
        );
        for c in ctors {
            let _ = writeln!(
                out,
                "    0x{:08x} => Ok(Self::{}(crate::BareRead::read_bare(r)?)),",
                c.id,
                upper_camel(c.short_name())
            );
        }
        let _ = writeln!(
            out,
            "    id => Err(crate::Error::new(crate::ErrorKind::UnknownConstructor {{ id, expected: \"{ty}\" }}, start)),\n}} }} }}\n"
        );
        // Default: the constructor with the fewest fields (`proxy.signedPaymentEmpty`).
        if let Some(c) = ctors
            .iter()
            .min_by_key(|c| c.fields.len())
            .filter(|_| with_default)
        {
            let _ = writeln!(
                out,
                "impl Default for {name} {{ fn default() -> Self {{ Self::{}(Default::default()) }} }}",
                upper_camel(c.short_name())
            );
        }
        for c in ctors {
            let _ = writeln!(
                out,
                "impl From<{}> for {name} {{ fn from(v: {}) -> Self {{ Self::{}(v) }} }}",
                self.struct_path(c),
                self.struct_path(c),
                upper_camel(c.short_name())
            );
        }
        out.push('\n');
    }

    /// `decode`: the whole input as one of `ctors`, chosen by its constructor id and decoded
    /// with that constructor's own `from_bytes` (so its errors read as the constructor's).
    fn gen_decode(&self, set: &str, ctors: &[&Declaration], out: &mut String) {
        let _ = writeln!(
            out,
            "    /// Decodes `data` (exactly, no trailing bytes) as the member its constructor id names.\n    pub fn decode(data: &[u8]) -> std::result::Result<Self, crate::DispatchError> {{\n        let id = crate::peek_constructor(data).ok_or(crate::DispatchError::TooShort {{ len: data.len() }})?;\n        match id {{"
        );
        for c in ctors {
            let _ = writeln!(
                out,
                "            0x{:08x} => <{} as crate::TlRead>::from_bytes(data).map(Self::{}).map_err(|error| crate::DispatchError::Malformed {{ id, name: \"{}\", error }}),",
                c.id,
                self.struct_path(c),
                upper_camel(c.short_name()),
                c.name
            );
        }
        let _ = writeln!(
            out,
            "            id => Err(crate::DispatchError::Unknown {{ id, expected: \"{set}\" }}),\n        }}\n    }}"
        );
    }

    fn gen_enum(&self, ty: &str, ctors: &[&Declaration], out: &mut String) {
        let name = upper_camel(split(ty).1);
        self.gen_dispatch(&name, ty, &format!("Boxed type `{ty}`."), ctors, true, out);
    }

    fn gen_function_enum(&self, ns: &str, funcs: &[&Declaration], out: &mut String) {
        let doc = format!("Any `{ns}.*` function, for dispatching incoming queries.");
        self.gen_dispatch("Any", &format!("{ns} function"), &doc, funcs, true, out);
    }

    fn gen_message_set(&self, set: &MessageSet, out: &mut String) {
        let members: Vec<String> = set.members.iter().map(|m| format!("`{m}`")).collect();
        let doc = format!(
            "Message set `{}` (`schema/messages.tl`): {}.",
            set.name,
            members.join(", ")
        );
        let ctors = self.members(set);
        self.gen_dispatch(set.short_name(), &set.name, &doc, &ctors, false, out);
    }

    /// Emit `items` (namespace -> code) as nested modules.
    fn emit_modules(items: BTreeMap<String, String>, out: &mut String) {
        for (ns, code) in items {
            if ns.is_empty() {
                out.push_str(&code);
                continue;
            }
            let parts: Vec<(&str, String)> = ns.split('.').map(|p| (p, snake(p))).collect();
            for (tl, p) in &parts {
                let _ = writeln!(out, "/// TL namespace `{tl}`.");
                let _ = writeln!(out, "pub mod {p} {{");
            }
            out.push_str(&code);
            for _ in &parts {
                out.push_str("}\n");
            }
        }
    }

    fn generated(&self) -> String {
        let mut out = String::new();
        out.push_str("// @generated by crates/tl/build.rs from schema/*.tl. Do not edit.\n\n");

        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut funcs: BTreeMap<String, String> = BTreeMap::new();
        let mut func_lists: BTreeMap<String, Vec<&Declaration>> = BTreeMap::new();
        for d in self.decls {
            let target = if d.is_function {
                &mut funcs
            } else {
                &mut types
            };
            self.gen_struct(d, target.entry(d.namespace().to_string()).or_default());
            if d.is_function {
                func_lists
                    .entry(d.namespace().to_string())
                    .or_default()
                    .push(d);
            }
        }
        for (ns, list) in &func_lists {
            self.gen_function_enum(ns, list, funcs.entry(ns.clone()).or_default());
        }
        let mut enums: BTreeMap<String, String> = BTreeMap::new();
        for (ty, ctors) in &self.by_result {
            let (ns, _) = split(ty);
            self.gen_enum(ty, ctors, enums.entry(ns.to_string()).or_default());
        }
        let mut sets: BTreeMap<String, String> = BTreeMap::new();
        for set in self.sets {
            self.gen_message_set(set, sets.entry(set.namespace().to_string()).or_default());
        }

        out.push_str(
            "/// Constructors (bare and boxed structs) of every TL type.\npub mod types {\n",
        );
        Self::emit_modules(types, &mut out);
        out.push_str("}\n\n/// Boxed types: one enum per TL type, one variant per constructor.\npub mod enums {\n");
        Self::emit_modules(enums, &mut out);
        out.push_str("}\n\n/// TL functions (queries); `TlFunction::Return` is the answer type.\npub mod functions {\n");
        Self::emit_modules(funcs, &mut out);
        out.push_str("}\n\n/// Message sets (`schema/messages.tl`): what one peer may send another, for dispatch.\npub mod messages {\n");
        Self::emit_modules(sets, &mut out);
        out.push_str("}\n\n");

        out.push_str("/// Every declaration of the scheme.\npub static CONSTRUCTORS: &[crate::ConstructorInfo] = &[\n");
        for d in self.decls {
            let _ = writeln!(
                out,
                "    crate::ConstructorInfo {{ name: \"{}\", id: 0x{:08x}, canonical: {:?}, explicit_id: {}, is_function: {}, result: \"{}\", since_proto: {} }},",
                d.name,
                d.id,
                d.canonical(),
                d.explicit_id,
                d.is_function,
                d.result,
                d.since_proto
            );
        }
        out.push_str("];\n\n");

        out.push_str(
            "/// Decode a boxed object of any constructor with its typed decoder and encode it again.\n\
             /// `None` when the constructor id is unknown.\n\
             pub fn roundtrip_boxed(bytes: &[u8]) -> Option<crate::Result<Vec<u8>>> {\n\
             \x20   let id = crate::peek_constructor(bytes)?;\n\
             \x20   Some(match id {\n",
        );
        for d in self.decls {
            let _ = writeln!(
                out,
                "        0x{:08x} => <{} as crate::TlRead>::from_bytes(bytes).map(|v| crate::TlWrite::to_bytes(&v)),",
                d.id,
                self.struct_path(d)
            );
        }
        out.push_str("        _ => return None,\n    })\n}\n\n");

        out.push_str(
            "/// For every boxed type: its name and a function that decodes bytes as that type\n\
             /// (exactly) and encodes the value again. Used by fuzzing and tests.\n\
             pub static BOXED_TYPES: &[(&str, fn(&[u8]) -> crate::Result<Vec<u8>>)] = &[\n",
        );
        for ty in self.by_result.keys() {
            let _ = writeln!(
                out,
                "    (\"{ty}\", |b| <{} as crate::TlRead>::from_bytes(b).map(|v| crate::TlWrite::to_bytes(&v))),",
                self.enum_path(ty)
            );
        }
        for (ns, _) in self
            .decls
            .iter()
            .filter(|d| d.is_function)
            .map(|d| (d.namespace(), ()))
            .collect::<BTreeMap<_, _>>()
        {
            let _ = writeln!(
                out,
                "    (\"{ns} functions\", |b| <crate::functions::{}Any as crate::TlRead>::from_bytes(b).map(|v| crate::TlWrite::to_bytes(&v))),",
                module_path(ns)
            );
        }
        out.push_str("];\n");
        out
    }

    fn strategy(&self, field: &str, ty: &Type) -> String {
        match ty {
            Type::Int => "any::<i32>().boxed()".into(),
            Type::Long => "any::<i64>().boxed()".into(),
            Type::Double => "(-1.0e15f64..1.0e15f64).boxed()".into(),
            Type::String if is_binary_string(field) => {
                "proptest::collection::vec(any::<u8>(), 0..300).boxed()".into()
            }
            Type::String => "\".{0,40}\".boxed()".into(),
            Type::Bytes => "proptest::collection::vec(any::<u8>(), 0..300).boxed()".into(),
            Type::Int128 => "any::<[u8; 16]>().boxed()".into(),
            Type::Int256 => "any::<[u8; 32]>().boxed()".into(),
            Type::Bool => "any::<bool>().boxed()".into(),
            Type::Vector(inner) => format!(
                "proptest::collection::vec({}, 0..4).boxed()",
                self.strategy(field, inner)
            ),
            Type::Bare(name) => format!("{}()", strategy_fn(name)),
            Type::Boxed(name) => {
                let ctors = &self.by_result[name.as_str()];
                let arms: Vec<String> = ctors
                    .iter()
                    .map(|c| {
                        format!(
                            "{}().prop_map({}::{}).boxed()",
                            strategy_fn(&c.name),
                            self.enum_path(name),
                            upper_camel(c.short_name())
                        )
                    })
                    .collect();
                format!(
                    "proptest::strategy::Union::new(vec![{}]).boxed()",
                    arms.join(", ")
                )
            }
        }
    }

    fn arbitrary(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "// @generated by crates/tl/build.rs. Proptest strategies for every constructor.\n",
        );
        out.push_str("use proptest::prelude::*;\n\n");
        for d in self.decls {
            // Slots: one per plain field, one per (flags, bit) group of conditional fields.
            let mut slots: Vec<(String, Vec<String>)> = Vec::new(); // (strategy, field names)
            let mut groups: BTreeMap<(String, u32), usize> = BTreeMap::new();
            for f in &d.fields {
                match &f.kind {
                    FieldKind::Flags => {}
                    FieldKind::Plain(ty) => {
                        slots.push((self.strategy(&f.name, ty), vec![f.name.clone()]))
                    }
                    FieldKind::Conditional { flags, bit, ty } => {
                        let key = (flags.clone(), *bit);
                        match groups.get(&key) {
                            Some(&i) => {
                                let (s, names) = &mut slots[i];
                                s.push_str(&format!(", {}", self.strategy(&f.name, ty)));
                                names.push(f.name.clone());
                            }
                            None => {
                                groups.insert(key, slots.len());
                                slots.push((
                                    format!("@opt{}", self.strategy(&f.name, ty)),
                                    vec![f.name.clone()],
                                ));
                            }
                        }
                    }
                }
            }
            let path = self.struct_path(d);
            let _ = writeln!(out, "/// Any value of `{}`.", d.name);
            let _ = writeln!(
                out,
                "pub fn {}() -> BoxedStrategy<{path}> {{",
                strategy_fn(&d.name)
            );
            if slots.is_empty() {
                let _ = writeln!(out, "    Just({path}::default()).boxed()\n}}\n");
                continue;
            }
            // Each slot becomes one strategy; nest in tuples of at most 8.
            let mut exprs = Vec::new();
            let mut binds = Vec::new();
            let mut assigns = Vec::new();
            for (i, (s, names)) in slots.iter().enumerate() {
                if let Some(inner) = s.strip_prefix("@opt") {
                    exprs.push(format!("proptest::option::of(({inner},)).boxed()"));
                    binds.push(format!("s{i}"));
                    for (k, n) in names.iter().enumerate() {
                        assigns.push(format!("{}: s{i}.clone().map(|t| t.{k})", ident(n)));
                    }
                } else {
                    exprs.push(s.clone());
                    binds.push(format!("s{i}"));
                    assigns.push(format!("{}: s{i}", ident(&names[0])));
                }
            }
            let chunks_e: Vec<String> = exprs
                .chunks(8)
                .map(|c| format!("({},)", c.join(", ")))
                .collect();
            let chunks_b: Vec<String> = binds
                .chunks(8)
                .map(|c| format!("({},)", c.join(", ")))
                .collect();
            let _ = writeln!(
                out,
                "    ({},).prop_map(|({},)| {{ #[allow(clippy::redundant_clone)] let v = {path} {{ {} }}; v }}).boxed()\n}}\n",
                chunks_e.join(", "),
                chunks_b.join(", "),
                assigns.join(", ")
            );
        }
        out.push_str("#[cfg(test)]\nmod roundtrip {\n    use super::*;\n    proptest! {\n        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]\n");
        for d in self.decls {
            let _ = writeln!(
                out,
                "        #[test] fn {}(v in {}()) {{ crate::arbitrary::check_roundtrip(&v)?; }}",
                strategy_fn(&d.name).trim_start_matches("any_"),
                strategy_fn(&d.name)
            );
        }
        out.push_str("    }\n}\n\n");
        // Every member of every set decodes through the set's `decode` to its own variant.
        out.push_str("#[cfg(test)]\nmod set_decode {\n    use super::*;\n    proptest! {\n        #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]\n");
        for set in self.sets {
            let set_path = format!(
                "crate::messages::{}{}",
                module_path(set.namespace()),
                set.short_name()
            );
            for m in self.members(set) {
                let _ = writeln!(
                    out,
                    "        #[test] fn {}_{}(v in {}()) {{ let bytes = crate::TlWrite::to_bytes(&v); let d = {set_path}::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?; prop_assert_eq!(d.constructor_id(), 0x{:08x}); prop_assert_eq!(crate::TlWrite::to_bytes(&d), bytes); prop_assert_eq!(d, {set_path}::{}(v)); }}",
                    set.name.split('.').map(snake).collect::<Vec<_>>().join("_"),
                    strategy_fn(&m.name).trim_start_matches("any_"),
                    strategy_fn(&m.name),
                    m.id,
                    upper_camel(m.short_name())
                );
            }
        }
        out.push_str("    }\n}\n");
        out
    }
}

fn strategy_fn(name: &str) -> String {
    format!(
        "any_{}",
        name.split('.').map(snake).collect::<Vec<_>>().join("_")
    )
}
