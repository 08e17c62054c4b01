//! The worker's settings as the binary builds them (the [worker] table of the defaults file,
//! deserialized whole): the defaults parse, and a key the settings do not declare is refused
//! by name even though the common keys are flattened in from cocoon-service.

use cocoon_testkit::settings;
use cocoon_worker::{DEFAULTS, Settings};

#[test]
fn the_defaults_deserialize() {
    settings::defaults_deserialize::<Settings>(DEFAULTS, "worker");
}

#[test]
fn an_undeclared_key_is_refused_by_name() {
    settings::undeclared_key_refused::<Settings>(DEFAULTS, "worker");
}

#[test]
fn a_common_key_of_the_wrong_type_is_refused() {
    settings::common_key_of_wrong_type_refused::<Settings>(DEFAULTS, "worker");
}
