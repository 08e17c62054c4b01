//! The KMS's settings as the binary builds them (the [kms] table of the defaults file,
//! deserialized whole): the defaults parse and pass their checks once a root is given, and a
//! key the settings do not declare is refused by name.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_kms::{DEFAULTS, Settings};
use cocoon_testkit::settings;

#[test]
fn the_defaults_deserialize() {
    settings::defaults_deserialize::<Settings>(DEFAULTS, "kms");
}

#[test]
fn an_undeclared_key_is_refused_by_name() {
    settings::undeclared_key_refused::<Settings>(DEFAULTS, "kms");
}

#[test]
fn a_common_key_of_the_wrong_type_is_refused() {
    settings::common_key_of_wrong_type_refused::<Settings>(DEFAULTS, "kms");
}

#[test]
fn the_checks_name_the_key() {
    let file: toml::Table = toml::from_str(DEFAULTS).unwrap();
    let base: Settings = toml::Value::Table(file["kms"].as_table().unwrap().clone())
        .try_into()
        .unwrap();
    let given = |_: &str| false;
    let mut s = base.clone();
    s.tee = "sim".into();
    s.is_test = true;
    assert_eq!(s.check(given).unwrap_err().key, "root_address");
    s.root_address = format!("0:{}", "55".repeat(32));
    s.check(given).unwrap();
    for (edit, key) in [
        (
            (|s: &mut Settings| s.listen = "nowhere".into()) as fn(&mut Settings),
            "listen",
        ),
        (|s| s.peer = "h:1".into(), "kms_image_hashes"),
        (
            |s| s.kms_image_hashes = vec!["ab".into()],
            "kms_image_hashes",
        ),
        (|s| s.root_cache_seconds = 0, "root_cache_seconds"),
        (
            |s| {
                s.peer = "h:1".into();
                s.new_master = true;
            },
            "new_master",
        ),
        (|s| s.tee = "none".into(), "tee"),
        (|s| s.is_test = false, "tee"),
    ] {
        let mut bad = s.clone();
        edit(&mut bad);
        assert_eq!(bad.check(given).map_err(|e| e.key), Err(key.into()));
    }
}
