//! The client's settings as the binary builds them (the [client] table of the defaults file,
//! deserialized whole): the defaults parse, and a key the settings do not declare is refused
//! by name even though the common keys are flattened in from cocoon-service.

use cocoon_client::{DEFAULTS, Settings};
use cocoon_testkit::settings;

#[test]
fn the_defaults_deserialize() {
    settings::defaults_deserialize::<Settings>(DEFAULTS, "client");
}

#[test]
fn an_undeclared_key_is_refused_by_name() {
    settings::undeclared_key_refused::<Settings>(DEFAULTS, "client");
}

#[test]
fn a_common_key_of_the_wrong_type_is_refused() {
    settings::common_key_of_wrong_type_refused::<Settings>(DEFAULTS, "client");
}
