use super::*;

/// Loads `args` with plaintext links, as a development node would.
fn load(args: NodeArgs) -> Result<Config, ConfigError> {
    Config::load(
        NodeArgs {
            insecure: true,
            ..args
        },
        |_| None,
    )
}

fn with_file(text: &str) -> (tempfile::TempDir, NodeArgs) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, text).unwrap();
    let args = NodeArgs {
        config: Some(path),
        ..NodeArgs::default()
    };
    (dir, args)
}

#[test]
fn no_settings_at_all_give_a_working_development_node() {
    let config = load(NodeArgs {
        name: Some("dev".into()),
        ..NodeArgs::default()
    })
    .unwrap();
    assert_eq!(config.cluster, DEFAULT_CLUSTER);
    assert_eq!(config.zone, DEFAULT_ZONE);
    assert_eq!(config.nats, vec![DEFAULT_NATS.to_owned()]);
    assert_eq!(config.advertise, config.listen);
    assert!(config.secret.is_development());
}

#[test]
fn flags_override_the_file() {
    let (_dir, mut args) = with_file(
        "cluster = \"prod\"\nzone = \"fr-par-1\"\nkind = \"elastic-metal\"\n\
         capabilities = [\"gpu\", \"gpu\"]\nname = \"par1-a\"\n",
    );
    args.zone = Some("nl-ams-2".into());
    let config = load(args).unwrap();
    assert_eq!(config.cluster, "prod");
    assert_eq!(config.zone, "nl-ams-2");
    assert_eq!(config.kind, NodeKind::ElasticMetal);
    assert_eq!(config.capabilities, vec!["gpu".to_owned()]);
}

#[test]
fn an_unknown_key_is_refused_with_its_line() {
    let (_dir, args) = with_file("cluster = \"prod\"\nnmae = \"x\"\n");
    let err = load(args).unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("unknown field `nmae`"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn bad_values_are_refused_naming_key_and_value() {
    let cases: Vec<(NodeArgs, &str)> = vec![
        (
            NodeArgs {
                kind: Some("vm".into()),
                ..NodeArgs::default()
            },
            "invalid value \"vm\" for kind",
        ),
        (
            NodeArgs {
                zone: Some("paris".into()),
                ..NodeArgs::default()
            },
            "invalid value \"paris\" for zone",
        ),
        (
            NodeArgs {
                cluster: Some("Prod!".into()),
                ..NodeArgs::default()
            },
            "invalid value \"Prod!\" for cluster",
        ),
        (
            NodeArgs {
                listen: Some("localhost".into()),
                ..NodeArgs::default()
            },
            "invalid value \"localhost\" for listen",
        ),
        (
            NodeArgs {
                listen: Some("0.0.0.0:7400".into()),
                ..NodeArgs::default()
            },
            "for advertise: required when listen is 0.0.0.0:7400",
        ),
        (
            NodeArgs {
                advertise: Some("0.0.0.0:7400".into()),
                ..NodeArgs::default()
            },
            "peers cannot dial an unspecified address",
        ),
        (
            NodeArgs {
                heartbeat: Some("soon".into()),
                ..NodeArgs::default()
            },
            "invalid value \"soon\" for heartbeat",
        ),
        (
            NodeArgs {
                nats: Some(vec!["http://example:4222".into()]),
                ..NodeArgs::default()
            },
            "invalid value \"http://example:4222\" for nats",
        ),
        (
            NodeArgs {
                max_message_bytes: Some(1 << 30),
                ..NodeArgs::default()
            },
            "invalid value \"1073741824\" for max_message_bytes",
        ),
        (
            NodeArgs {
                gateway_max_inflight: Some(0),
                ..NodeArgs::default()
            },
            "invalid value \"0\" for gateway_max_inflight: allow at least one request",
        ),
        (
            NodeArgs {
                gateway_max_inflight_bytes: Some(1000),
                ..NodeArgs::default()
            },
            "invalid value \"1000\" for gateway_max_inflight_bytes: must be at least \
             twice max_message_bytes (2097152)",
        ),
        (
            NodeArgs {
                secret_file: Some("/nonexistent/secret".into()),
                ..NodeArgs::default()
            },
            "cannot read secret_file /nonexistent/secret",
        ),
        (
            NodeArgs {
                wire_versions: Some("1-9".into()),
                ..NodeArgs::default()
            },
            "invalid value \"1-9\" for wire_versions: this build speaks frame versions 1-3",
        ),
        (
            NodeArgs {
                wire_versions: Some("two".into()),
                ..NodeArgs::default()
            },
            "invalid value \"two\" for wire_versions: expected a version or MIN-MAX",
        ),
    ];
    for (mut args, expected) in cases {
        args.name = Some("n".into());
        let err = load(args).unwrap_err().to_string();
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn the_secret_comes_from_its_file_and_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "s3cr3t-value\n").unwrap();
    let config = load(NodeArgs {
        name: Some("n".into()),
        secret_file: Some(path),
        ..NodeArgs::default()
    })
    .unwrap();
    assert_eq!(config.secret.expose(), "s3cr3t-value");
    assert!(!format!("{config:?}").contains("s3cr3t"));
}

#[test]
fn the_secret_may_come_from_the_environment() {
    let config = Config::load(
        NodeArgs {
            name: Some("n".into()),
            insecure: true,
            ..NodeArgs::default()
        },
        |key| (key == "MESH_SECRET").then(|| "from-env".to_owned()),
    )
    .unwrap();
    assert_eq!(config.secret.expose(), "from-env");
}

#[test]
fn the_gateway_allow_list_comes_from_the_file_and_is_checked() {
    let (_dir, args) = with_file("gateway_allow = [\"counter\", \"echo\"]\n");
    let config = load(args).unwrap();
    assert_eq!(
        config.gateway_allow,
        Some(vec!["counter".to_owned(), "echo".to_owned()])
    );
    let (_dir, args) = with_file("gateway_allow = [\"Counter!\"]\n");
    let err = load(args).unwrap_err().to_string();
    assert!(err.contains("gateway_allow"), "{err}");
}

#[test]
fn the_gateway_bounds_default_and_come_from_the_file() {
    let config = load(NodeArgs {
        name: Some("n".into()),
        ..NodeArgs::default()
    })
    .unwrap();
    assert_eq!(config.gateway_max_inflight, DEFAULT_GATEWAY_MAX_INFLIGHT);
    assert_eq!(config.gateway_max_inflight_bytes, 4 << 20);
    let (_dir, args) =
        with_file("name = \"n\"\ngateway_max_inflight = 2\ngateway_max_inflight_bytes = 4194304\n");
    let config = load(args).unwrap();
    assert_eq!(config.gateway_max_inflight, 2);
    assert_eq!(config.gateway_max_inflight_bytes, 4 << 20);
}

#[test]
fn oversized_deep_and_non_ascii_files_get_one_line_errors() {
    let (_dir, args) = with_file(&"# filler\n".repeat(200_000));
    let err = load(args).unwrap_err().to_string();
    assert!(err.contains("larger than the limit"), "{err}");
    let deep = format!("x = {}{}\n", "[".repeat(50_000), "]".repeat(50_000));
    let err = parse_file_text("deep.toml", &deep).unwrap_err().to_string();
    assert!(!err.contains('\n'), "{err}");
    // An error span inside a multi-byte character must not panic.
    let err = parse_file_text("utf8.toml", "cluster = \"é\"\né = ").unwrap_err();
    assert!(err.to_string().contains("utf8.toml"), "{err}");
}

#[test]
fn links_need_tls_files_or_an_explicit_insecure() {
    let named = |args: NodeArgs| NodeArgs {
        name: Some("n".into()),
        ..args
    };
    let err = Config::load(named(NodeArgs::default()), |_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("links need TLS"), "{err}");
    assert!(err.contains("--insecure"), "{err}");

    let tls = || NodeArgs {
        tls_ca: Some("/etc/mesh/tls/ca.crt".into()),
        tls_cert: Some("/etc/mesh/tls/node.crt".into()),
        tls_key: Some("/etc/mesh/tls/node.key".into()),
        ..NodeArgs::default()
    };
    let config = Config::load(named(tls()), |_| None).unwrap();
    assert!(matches!(config.links, LinkSecurity::Tls { .. }));

    let err = Config::load(
        named(NodeArgs {
            tls_key: None,
            ..tls()
        }),
        |_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tls_key is missing"), "{err}");
    let err = load(named(tls())).unwrap_err().to_string();
    assert!(err.contains("choose one"), "{err}");

    let (_dir, args) = with_file("insecure = true\n");
    let config = Config::load(named(args), |_| None).unwrap();
    assert_eq!(config.links, LinkSecurity::Insecure);
}

#[test]
fn the_file_takes_one_nats_url_or_a_list() {
    let (_dir, args) = with_file("nats = \"nats://10.0.0.1:4222\"\n");
    assert_eq!(load(args).unwrap().nats, ["nats://10.0.0.1:4222"]);
    let (_dir, args) = with_file("nats = [\"nats://a:4222\", \"nats://b:4222\"]\n");
    assert_eq!(load(args).unwrap().nats, ["nats://a:4222", "nats://b:4222"]);
    let (_dir, args) = with_file("nats = 4222\n");
    let err = load(args).unwrap_err().to_string();
    assert!(err.contains("line 1"), "{err}");
    assert!(err.contains("a NATS URL or a list of them"), "{err}");
    let (_dir, args) = with_file("nats = [4222]\n");
    assert!(load(args).is_err());
}
