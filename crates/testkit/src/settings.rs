//! A role's `Settings` as the binary builds them: the role's table of its defaults file,
//! deserialized whole (the common keys are flattened in from cocoon-service).

use serde::de::DeserializeOwned;

/// The `[role]` table of a defaults file.
fn table(defaults: &str, role: &str) -> toml::Table {
    let file: toml::Table = toml::from_str(defaults).expect("the defaults file is TOML");
    file[role].as_table().expect("the role's table").clone()
}

/// The defaults deserialize into `S`.
pub fn defaults_deserialize<S: DeserializeOwned>(defaults: &str, role: &str) {
    let settings: Result<S, _> = toml::Value::Table(table(defaults, role)).try_into();
    assert!(
        settings.is_ok(),
        "{:?}",
        settings.err().map(|e| e.to_string())
    );
}

/// A key `S` does not declare is refused, by name.
pub fn undeclared_key_refused<S: DeserializeOwned>(defaults: &str, role: &str) {
    let mut t = table(defaults, role);
    t.insert("no_such_key".into(), toml::Value::Boolean(true));
    let Err(err) = toml::Value::Table(t).try_into::<S>() else {
        panic!("an unknown key was accepted");
    };
    assert!(err.to_string().contains("no_such_key"), "{err}");
}

/// A common key of the wrong type is refused.
pub fn common_key_of_wrong_type_refused<S: DeserializeOwned>(defaults: &str, role: &str) {
    let mut t = table(defaults, role);
    t.insert("ton_quorum".into(), toml::Value::String("three".into()));
    assert!(toml::Value::Table(t).try_into::<S>().is_err());
}
