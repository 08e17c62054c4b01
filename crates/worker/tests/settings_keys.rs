//! The worker's settings as the binary builds them (the [worker] table of the defaults file,
//! deserialized whole): the defaults parse, and a key the settings do not declare is refused
//! by name even though the common keys are flattened in from cocoon-service.

use cocoon_worker::settings::{DEFAULTS, Settings};

fn table() -> toml::Table {
    let file: toml::Table = toml::from_str(DEFAULTS).expect("the defaults file is TOML");
    file["worker"].as_table().expect("a [worker] table").clone()
}

#[test]
fn the_defaults_deserialize() {
    let settings: Result<Settings, _> = toml::Value::Table(table()).try_into();
    assert!(settings.is_ok(), "{:?}", settings.err());
}

#[test]
fn an_undeclared_key_is_refused_by_name() {
    let mut t = table();
    t.insert("no_such_key".into(), toml::Value::Boolean(true));
    let err = toml::Value::Table(t)
        .try_into::<Settings>()
        .expect_err("an unknown key was accepted");
    assert!(err.to_string().contains("no_such_key"), "{err}");
}

#[test]
fn a_common_key_of_the_wrong_type_is_refused() {
    let mut t = table();
    t.insert("ton_quorum".into(), toml::Value::String("three".into()));
    assert!(toml::Value::Table(t).try_into::<Settings>().is_err());
}
