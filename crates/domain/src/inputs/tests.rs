//! The edge checks on fires, reasons and registrations, and the parameter rules runs and fires share.

use std::collections::BTreeMap;

use super::*;
use crate::triggers::SettingSpec;

fn field_of(result: Result<(), Error>) -> String {
    match result {
        Err(Error::InvalidArgument { field, .. }) => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

fn fire(parameters: &[(&str, &str)]) -> Fire {
    Fire {
        namespace: "default".into(),
        pipeline: "p".into(),
        subscription: "s".into(),
        extension: "e".into(),
        idempotency_key: "e:1".into(),
        scheduled_at: 0,
        delivery: "d-1".into(),
        parameters: parameters.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

#[test]
fn a_fires_parameters_are_bounded_as_a_runs_but_may_be_json_paths() {
    assert!(check_fire(&fire(&[("repository.full_name", "o/r"), ("ref", "main")])).is_ok());
    assert_eq!(field_of(check_fire(&fire(&[("a\nb", "x")]))), "parameters.a\nb");
    assert_eq!(field_of(check_fire(&fire(&[("", "x")]))), "parameters.");
    assert_eq!(field_of(check_fire(&fire(&[("v", "a\0b")]))), "parameters.v");
    let long_name = "n".repeat(MAX_PARAMETER_NAME_BYTES + 1);
    assert_eq!(
        field_of(check_fire(&fire(&[(long_name.as_str(), "x")]))),
        format!("parameters.{long_name}")
    );
    let many: Vec<(String, String)> = (0..=MAX_PARAMETERS).map(|i| (format!("p{i}"), String::new())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(field_of(check_fire(&fire(&many))), "parameters");
    let big = "x".repeat(MAX_PARAMETER_BYTES);
    assert_eq!(field_of(check_fire(&fire(&[("big", big.as_str())]))), "parameters");
    // The same names are not env names, so a run refuses them.
    let run: BTreeMap<String, String> = BTreeMap::from([("repository.full_name".into(), "o/r".into())]);
    assert_eq!(
        field_of(check_parameters(&run, ParameterNames::Env)),
        "parameters.repository.full_name"
    );
}

#[test]
fn a_fires_delivery_id_and_key_are_bounded() {
    let with = |key: &str, delivery: &str| Fire {
        idempotency_key: key.into(),
        delivery: delivery.into(),
        ..fire(&[])
    };
    assert!(check_fire(&with("k", &"d".repeat(MAX_DELIVERY_BYTES))).is_ok());
    assert!(check_fire(&with("k", "")).is_ok(), "a timer's fire has no delivery id");
    assert_eq!(
        field_of(check_fire(&with("k", &"d".repeat(MAX_DELIVERY_BYTES + 1)))),
        "delivery_id"
    );
    assert_eq!(field_of(check_fire(&with("k", "d\r\n1"))), "delivery_id");
    assert_eq!(field_of(check_fire(&with("", "d"))), "idempotency_key");
    assert_eq!(
        field_of(check_fire(&with(&"k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1), "d"))),
        "idempotency_key"
    );
}

#[test]
fn a_reason_is_cut_to_whole_characters() {
    let mut long = "é".repeat(MAX_REASON_CHARS + 10);
    truncate_reason(&mut long);
    assert_eq!(long.chars().count(), MAX_REASON_CHARS);
    assert_eq!(long, "é".repeat(MAX_REASON_CHARS));
    let mut short = "exited".to_string();
    truncate_reason(&mut short);
    assert_eq!(short, "exited");
}

#[test]
fn a_registration_is_bounded() {
    let spec = |description: &str| SettingSpec {
        name: "token".into(),
        required: false,
        description: description.into(),
        secret: true,
    };
    let registration = |version: &str, documentation: &str, settings: Vec<SettingSpec>| Registration {
        version: version.into(),
        documentation: documentation.into(),
        settings,
        registered_at: 1,
    };
    assert!(check_registration(&registration("1.0", "fires", vec![spec("a token")])).is_ok());
    let long = |n: usize| "x".repeat(n + 1);
    assert_eq!(
        field_of(check_registration(&registration(&long(MAX_VERSION_BYTES), "", vec![]))),
        "version"
    );
    assert_eq!(
        field_of(check_registration(&registration(
            "1",
            &long(MAX_DOCUMENTATION_BYTES),
            vec![]
        ))),
        "documentation"
    );
    assert_eq!(
        field_of(check_registration(&registration(
            "1",
            "",
            vec![spec(&long(MAX_SETTING_DESCRIPTION_BYTES))]
        ))),
        "settings[0].description"
    );
    let many = (0..=MAX_REGISTERED_SETTINGS).map(|_| spec("")).collect();
    assert_eq!(field_of(check_registration(&registration("1", "", many))), "settings");
}
