//! Optional API keys with spending limits.
//!
//! The keys file holds one key per line: `<sha256-hex of the key> <limit> [name]`, where the
//! limit is in TON (`5`, `0.25`) or `-` for none; `#` starts a comment. Only hashes are kept,
//! so the file can be read by anyone who may see the configuration. `cocoon client key`
//! generates a key and prints it once.
//!
//! A limit holds under concurrency: before a request is sent, its worst-case cost (every
//! token of the body and of `max_tokens` billed at the highest multiplier and the request's
//! `max_coefficient`) is reserved against `limit - spent - reserved`; a request that does not
//! fit is refused with 402 before anything is spent. When the request ends the reservation
//! is replaced by the actual cost, which is durable in the state database.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use sha2::Digest;

/// One key's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// Spending limit in nanoTON; `None`: unlimited.
    pub limit: Option<u64>,
    /// A label for stats.
    pub name: String,
}

/// Hex SHA-256 of a key as presented.
pub fn key_hash(key: &str) -> String {
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// Parses a keys file.
pub fn parse(text: &str) -> Result<Vec<KeySpec>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let hash = parts.next().unwrap_or_default().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "line {}: the first field must be the 64-hex-digit SHA-256 of a key",
                n + 1
            ));
        }
        let limit = match parts.next() {
            None | Some("-") => None,
            Some(t) => Some(
                cocoon_ton::parse_ton(t)
                    .map_err(|e| format!("line {}: limit {t:?}: {e}", n + 1))?,
            ),
        };
        let name = parts.collect::<Vec<_>>().join(" ");
        if out.iter().any(|k: &KeySpec| k.hash == hash) {
            return Err(format!("line {}: the same key appears twice", n + 1));
        }
        out.push(KeySpec { hash, limit, name });
    }
    Ok(out)
}

/// Reads a keys file.
pub fn load(path: &Path) -> Result<Vec<KeySpec>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    parse(&text)
}

/// A key's label: non-empty and without `#` (which starts a comment in the keys file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyName(String);

impl KeyName {
    /// Checks a label.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.contains('#') {
            return Err("the key name must be non-empty and without '#'".into());
        }
        Ok(Self(name.to_owned()))
    }
}

/// Creates an API key: appends `<hash> <limit in TON or -> <name>` to the keys file `file`
/// (created if missing; an existing one must parse first) and returns the key, which is
/// kept nowhere else. `limit` is in nanoTON.
pub fn create(file: &Path, name: &KeyName, limit: Option<u64>) -> Result<String, String> {
    use std::io::Write;
    let limit_field = limit.map_or_else(|| "-".into(), |n| cocoon_ton::format_ton(u128::from(n)));
    let mut bytes = [0u8; 24];
    rand::fill(&mut bytes);
    let key = format!("sk-cocoon-{}", hex::encode(bytes));
    let in_file = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
    if file.exists() {
        parse(&std::fs::read_to_string(file).map_err(|e| in_file(&e))?).map_err(|e| in_file(&e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|e| in_file(&e))?;
    writeln!(f, "{} {limit_field} {}", key_hash(&key), name.0).map_err(|e| in_file(&e))?;
    Ok(key)
}

#[derive(Debug, Clone)]
struct Account {
    spec: KeySpec,
    spent: u64,
    reserved: u64,
    requests: u64,
    refused: u64,
}

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeyError {
    /// No API key in the request.
    #[error("missing API key (send Authorization: Bearer <key>)")]
    Missing,
    /// A key not in the keys file.
    #[error("unknown API key")]
    Unknown,
    /// The request could exceed the key's spending limit.
    #[error(
        "API key {name:?} spending limit reached: {spent} of {limit} nanoTON spent, {reserved} reserved by running requests, this request may cost up to {needed}"
    )]
    Limit {
        /// The key's name.
        name: String,
        /// Its limit, nanoTON.
        limit: u64,
        /// Spent so far, nanoTON.
        spent: u64,
        /// Reserved by running requests, nanoTON.
        reserved: u64,
        /// What this request may cost at most, nanoTON.
        needed: u64,
    },
}

/// The keys and their spending.
pub struct Keys {
    accounts: Mutex<HashMap<String, Account>>,
}

/// A reservation against one key; give it back with [`Keys::settle`].
#[derive(Debug)]
pub struct Reservation {
    hash: String,
    amount: u64,
}

impl Reservation {
    /// The key's hash.
    pub fn key_hash(&self) -> &str {
        &self.hash
    }
}

/// A key's figures for stats.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyStat {
    /// The key's name.
    pub name: String,
    /// First characters of the key's hash.
    pub hash_prefix: String,
    /// Spending limit, nanoTON (none: unlimited).
    pub limit_nanoton: Option<u64>,
    /// Spent, nanoTON.
    pub spent_nanoton: u64,
    /// Reserved by running requests, nanoTON.
    pub reserved_nanoton: u64,
    /// Requests served.
    pub requests: u64,
    /// Requests refused.
    pub refused: u64,
}

impl Keys {
    /// Keys with what they already spent (`(hash, spent, requests)` from the state database).
    pub fn new(specs: Vec<KeySpec>, spent: &[(String, u64, u64)]) -> Keys {
        let mut accounts = HashMap::new();
        for spec in specs {
            let (s, r) = spent
                .iter()
                .find(|(h, _, _)| *h == spec.hash)
                .map(|(_, s, r)| (*s, *r))
                .unwrap_or((0, 0));
            accounts.insert(
                spec.hash.clone(),
                Account {
                    spec,
                    spent: s,
                    reserved: 0,
                    requests: r,
                    refused: 0,
                },
            );
        }
        Keys {
            accounts: Mutex::new(accounts),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Account>> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `key` and reserves `worst_case` nanoTON against its limit.
    pub fn reserve(&self, key: Option<&str>, worst_case: u64) -> Result<Reservation, ApiKeyError> {
        let key = key.ok_or(ApiKeyError::Missing)?;
        let hash = key_hash(key);
        let mut accounts = self.lock();
        let a = accounts.get_mut(&hash).ok_or(ApiKeyError::Unknown)?;
        if let Some(limit) = a.spec.limit
            && a.spent
                .saturating_add(a.reserved)
                .saturating_add(worst_case)
                > limit
        {
            a.refused += 1;
            return Err(ApiKeyError::Limit {
                name: a.spec.name.clone(),
                limit,
                spent: a.spent,
                reserved: a.reserved,
                needed: worst_case,
            });
        }
        a.reserved = a.reserved.saturating_add(worst_case);
        Ok(Reservation {
            hash,
            amount: worst_case,
        })
    }

    /// Replaces a reservation by what the request cost.
    pub fn settle(&self, r: Reservation, cost: u64) {
        let mut accounts = self.lock();
        if let Some(a) = accounts.get_mut(&r.hash) {
            a.reserved = a.reserved.saturating_sub(r.amount);
            a.spent = a.spent.saturating_add(cost);
            a.requests += 1;
        }
    }

    /// Figures of every key.
    pub fn stats(&self) -> Vec<KeyStat> {
        let mut v: Vec<KeyStat> = self
            .lock()
            .values()
            .map(|a| KeyStat {
                name: a.spec.name.clone(),
                hash_prefix: a.spec.hash[..8].to_owned(),
                limit_nanoton: a.spec.limit,
                spent_nanoton: a.spent,
                reserved_nanoton: a.reserved,
                requests: a.requests,
                refused: a.refused,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_bad_lines() {
        let h = key_hash("sk-one");
        let text = format!("# keys\n{h} 0.5 app one\n\n{} - ops\n", key_hash("sk-two"));
        let keys = parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].limit, Some(500_000_000));
        assert_eq!(keys[0].name, "app one");
        assert_eq!(keys[1].limit, None);
        assert!(parse("abc 1").unwrap_err().contains("line 1"));
        assert!(parse(&format!("{h} lots")).unwrap_err().contains("limit"));
        assert!(parse(&format!("{h}\n{h}")).unwrap_err().contains("twice"));
    }

    #[test]
    fn created_keys_are_appended_as_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        assert!(KeyName::parse("").is_err());
        assert!(KeyName::parse("a#b").is_err());
        let one = create(
            &file,
            &KeyName::parse("app one").unwrap(),
            Some(2_500_000_000),
        )
        .unwrap();
        let two = create(&file, &KeyName::parse("ops").unwrap(), None).unwrap();
        assert!(one.starts_with("sk-cocoon-") && one != two);
        let keys = load(&file).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            (keys[0].hash.as_str(), keys[0].limit),
            (key_hash(&one).as_str(), Some(2_500_000_000))
        );
        assert_eq!((keys[1].name.as_str(), keys[1].limit), ("ops", None));
        // A file that does not parse is not appended to.
        std::fs::write(&file, "not a key\n").unwrap();
        assert!(create(&file, &KeyName::parse("x").unwrap(), None).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a key\n");
    }

    #[test]
    fn limits_count_running_requests() {
        let keys = Keys::new(
            parse(&format!("{} 0.000001 app", key_hash("k"))).unwrap(),
            &[(key_hash("k"), 100, 1)],
        );
        assert_eq!(keys.reserve(None, 1).unwrap_err(), ApiKeyError::Missing);
        assert_eq!(
            keys.reserve(Some("x"), 1).unwrap_err(),
            ApiKeyError::Unknown
        );
        // limit 1000, spent 100: two reservations of 400 fit, a third does not.
        let a = keys.reserve(Some("k"), 400).unwrap();
        let b = keys.reserve(Some("k"), 400).unwrap();
        assert!(matches!(
            keys.reserve(Some("k"), 400),
            Err(ApiKeyError::Limit { reserved: 800, .. })
        ));
        keys.settle(a, 50);
        keys.settle(b, 60);
        let s = &keys.stats()[0];
        assert_eq!(
            (s.spent_nanoton, s.reserved_nanoton, s.requests),
            (210, 0, 3)
        );
        assert_eq!(s.refused, 1);
    }
}
