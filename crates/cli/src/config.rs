//! Role configuration: an embedded defaults file, then the operator's TOML file, then
//! `COCOON_<ROLE>_<KEY>` environment variables, then `--set key=value` and named flags
//! (later wins). Every key a role knows is in its defaults file (`crates/<role>/src/defaults.toml`,
//! printed by `cocoon <role> --print-defaults`), so an unknown key anywhere is an error that
//! names it, and a value is parsed as the type its default has. Secrets are never values:
//! keys ending in `_file` point at files.
//!
//! A bad configuration is one clear line and exit code 64 (`EX_USAGE`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

/// Exit code for a configuration the operator must fix.
pub(crate) const EXIT_CONFIG: u8 = 64;

/// A configuration error: one line naming the key and where its value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError(pub(crate) String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Layers of one role's configuration.
pub(crate) struct Layers {
    role: &'static str,
    values: Table,
    /// Where each key's current value came from.
    origin: BTreeMap<String, String>,
}

impl Layers {
    /// Starts from the embedded defaults of `role` (a TOML document with one `[role]` table).
    pub(crate) fn new(role: &'static str, defaults: &str) -> Self {
        let doc: Table = defaults
            .parse()
            .unwrap_or_else(|e| panic!("embedded defaults for {role} do not parse: {e}"));
        let values = match doc.get(role) {
            Some(Value::Table(t)) => t.clone(),
            _ => panic!("embedded defaults for {role} lack a [{role}] table"),
        };
        let origin = values
            .keys()
            .map(|k| (k.clone(), "default".to_owned()))
            .collect();
        Layers {
            role,
            values,
            origin,
        }
    }

    fn err(&self, key: &str, from: &str, what: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!("config: {}.{key} (from {from}): {what}", self.role))
    }

    fn unknown(&self, key: &str, from: &str) -> ConfigError {
        let known: Vec<&str> = self.values.keys().map(String::as_str).collect();
        self.err(
            key,
            from,
            format!("unknown key (known: {})", known.join(", ")),
        )
    }

    fn set_value(&mut self, key: &str, v: Value, from: &str) -> Result<(), ConfigError> {
        let Some(default) = self.values.get(key) else {
            return Err(self.unknown(key, from));
        };
        if std::mem::discriminant(default) != std::mem::discriminant(&v) {
            return Err(self.err(
                key,
                from,
                format!("expected {}, got {}", default.type_str(), v.type_str()),
            ));
        }
        self.values.insert(key.to_owned(), v);
        self.origin.insert(key.to_owned(), from.to_owned());
        Ok(())
    }

    /// Parses `raw` as the type of `key`'s default (env and flag values are text).
    fn typed(&self, key: &str, raw: &str, from: &str) -> Result<Value, ConfigError> {
        let Some(default) = self.values.get(key) else {
            return Err(self.unknown(key, from));
        };
        Ok(match default {
            Value::String(_) => Value::String(raw.to_owned()),
            Value::Integer(_) => {
                Value::Integer(raw.trim().parse().map_err(|_| {
                    self.err(key, from, format!("expected an integer, got {raw:?}"))
                })?)
            }
            Value::Boolean(_) => Value::Boolean(match raw.trim() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    return Err(self.err(
                        key,
                        from,
                        format!("expected true or false, got {raw:?}"),
                    ));
                }
            }),
            Value::Array(_) => Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            ),
            other => {
                return Err(self.err(
                    key,
                    from,
                    format!("cannot set a {} from text", other.type_str()),
                ));
            }
        })
    }

    /// Applies the `[role]` table of a TOML file; other roles' tables are left for them.
    pub(crate) fn file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("config: cannot read {}: {e}", path.display())))?;
        let doc: Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError(format!(
                "config: {}: {}",
                path.display(),
                e.message().trim()
            ))
        })?;
        let from = path.display().to_string();
        match doc.get(self.role) {
            None => Ok(()),
            Some(Value::Table(t)) => {
                for (k, v) in t.clone() {
                    self.set_value(&k, v, &from)?;
                }
                Ok(())
            }
            Some(_) => Err(ConfigError(format!(
                "config: {from}: `{}` must be a table ([{}])",
                self.role, self.role
            ))),
        }
    }

    /// Applies `COCOON_<ROLE>_<KEY>` variables from `vars`.
    pub(crate) fn env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let prefix = format!("COCOON_{}_", self.role.to_ascii_uppercase());
        for (name, raw) in vars {
            let Some(key) = name.strip_prefix(&prefix) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            let v = self.typed(&key, &raw, &name)?;
            self.set_value(&key, v, &name)?;
        }
        Ok(())
    }

    /// Applies `key=value` pairs (from `--set` and named flags; `from` names the flag).
    pub(crate) fn set(&mut self, key: &str, raw: &str, from: &str) -> Result<(), ConfigError> {
        let v = self.typed(key, raw, from)?;
        self.set_value(key, v, from)
    }

    /// Applies `--set key=value` arguments.
    pub(crate) fn sets(&mut self, pairs: &[String]) -> Result<(), ConfigError> {
        for p in pairs {
            let Some((k, v)) = p.split_once('=') else {
                return Err(ConfigError(format!(
                    "config: --set {p:?}: expected key=value"
                )));
            };
            self.set(k.trim(), v, "--set")?;
        }
        Ok(())
    }

    /// The effective configuration as TOML, each key with where its value came from.
    pub(crate) fn render(&self) -> String {
        let mut out = format!("[{}]\n", self.role);
        for (k, v) in &self.values {
            let from = self.origin.get(k).map_or("default", String::as_str);
            out.push_str(&format!("{k} = {v}  # {from}\n"));
        }
        out
    }

    /// The typed configuration.
    pub(crate) fn build<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        Value::Table(self.values.clone())
            .try_into()
            .map_err(|e: toml::de::Error| {
                ConfigError(format!("config: {}: {}", self.role, e.message().trim()))
            })
    }

    /// Where `key`'s value came from (for error messages that name it).
    pub(crate) fn origin(&self, key: &str) -> String {
        self.origin
            .get(key)
            .cloned()
            .unwrap_or_else(|| "default".into())
    }

    /// An error about `key`'s value, naming where it came from.
    pub(crate) fn invalid(&self, key: &str, what: impl std::fmt::Display) -> ConfigError {
        self.err(key, &self.origin(key), what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "[r]\nname = \"a\"\ncount = 3\nflag = false\nlist = []\n";

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct R {
        name: String,
        count: u32,
        flag: bool,
        list: Vec<String>,
    }

    #[test]
    fn layers_apply_in_order_with_types_and_origins() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[r]\ncount = 5\nname = \"file\"\n[other]\nx = 1\n").unwrap();
        let mut l = Layers::new("r", D);
        l.file(&f).unwrap();
        l.env([
            ("COCOON_R_NAME".to_owned(), "env".to_owned()),
            ("COCOON_X_NAME".to_owned(), "not ours".to_owned()),
            ("COCOON_R_LIST".to_owned(), "a:1, b:2".to_owned()),
        ])
        .unwrap();
        l.sets(&["flag=true".into()]).unwrap();
        let r: R = l.build().unwrap();
        assert_eq!(
            r,
            R {
                name: "env".into(),
                count: 5,
                flag: true,
                list: vec!["a:1".into(), "b:2".into()]
            }
        );
        let shown = l.render();
        assert!(shown.contains("count = 5  # "), "{shown}");
        assert!(shown.contains("name = \"env\"  # COCOON_R_NAME"), "{shown}");
        assert_eq!(l.origin("flag"), "--set");
    }

    #[test]
    fn errors_name_the_key_and_the_source() {
        let mut l = Layers::new("r", D);
        let e = l.sets(&["colour=red".into()]).unwrap_err().0;
        assert!(
            e.starts_with("config: r.colour (from --set): unknown key (known: "),
            "{e}"
        );
        let e = l
            .env([("COCOON_R_COUNT".to_owned(), "many".to_owned())])
            .unwrap_err()
            .0;
        assert_eq!(
            e,
            "config: r.count (from COCOON_R_COUNT): expected an integer, got \"many\""
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[r]\ncount = \"x\"\n").unwrap();
        let e = l.file(&f).unwrap_err().0;
        assert!(e.ends_with("expected integer, got string"), "{e}");
        std::fs::write(&f, "[r\n").unwrap();
        assert!(l.file(&f).unwrap_err().0.starts_with("config: "));
        assert!(l.sets(&["novalue".into()]).is_err());
        // A value of the right TOML type but out of the target's range fails at build.
        l.set("count", "-1", "--count").unwrap();
        assert!(l.build::<R>().unwrap_err().0.starts_with("config: r: "));
    }
}
