//! The wiring's tests: every `Needs` against the variables it requires,
//! the registry's backends, and the ports built offline.

#![allow(clippy::unwrap_used)]

use super::*;
use courier_core::domain::{ConnectionId, UserId};
use courier_core::ports::CatchUpRequest;

fn env(pairs: &'static [(&'static str, &'static str)]) -> Env<impl Fn(&str) -> Option<String>> {
    Env(move |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    })
}

const TABLES: &[(&str, &str)] = &[
    ("MESSAGES_TABLE", "m"),
    ("PENDING_TABLE", "p"),
    ("CONVERSATIONS_TABLE", "c"),
    ("IDEMPOTENCY_TABLE", "i"),
    ("DEVICES_TABLE", "d"),
];

#[test]
fn authorizer_needs_nothing() {
    let c = PortsConfig::from_env(&env(&[]), Needs::NONE).unwrap();
    assert_eq!(c, PortsConfig::default());
}

#[test]
fn connect_needs_the_tables_redis_and_the_catch_up_function_but_no_gateway() {
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut pairs = TABLES.to_vec();
        pairs.extend_from_slice(extra);
        let pairs: &'static [(&str, &str)] = Box::leak(pairs.into_boxed_slice());
        PortsConfig::from_env(&env(pairs), Needs::CONNECT)
    };
    // The device's link is written in the pending table before the
    // registry entry, so without the tables connect cannot start.
    let e = PortsConfig::from_env(
        &env(&[
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("CATCH_UP_FUNCTION", "catch-up"),
        ]),
        Needs::CONNECT,
    )
    .unwrap_err();
    assert_eq!(e, ConfigError::Missing("MESSAGES_TABLE"));
    let e = with(&[("REDIS_URL", "redis://127.0.0.1:6379")]).unwrap_err();
    assert_eq!(e, ConfigError::Missing("CATCH_UP_FUNCTION"));
    let e = with(&[("CATCH_UP_FUNCTION", "catch-up")]).unwrap_err();
    assert_eq!(e, ConfigError::Missing("REDIS_URL"));
    let c = with(&[
        ("REDIS_URL", "rediss://cache.example:6379"),
        ("CATCH_UP_FUNCTION", "catch-up"),
        ("LAMBDA_ENDPOINT", "http://127.0.0.1:9000/"),
    ])
    .unwrap();
    assert_eq!(
        c.tables.unwrap().pending,
        "p",
        "links live in the pending table"
    );
    assert!(c.registry.is_some());
    assert!(c.management.is_none() && c.push.is_none());
    assert_eq!(c.trigger.unwrap().function, "catch-up");
    assert_eq!(c.endpoints.lambda.as_deref(), Some("http://127.0.0.1:9000"));
}

#[test]
fn redis_cluster_mode_is_off_unless_asked_and_must_be_a_bool() {
    let base = [
        ("REDIS_URL", "rediss://cache.example:6379"),
        ("CATCH_UP_FUNCTION", "catch-up"),
    ];
    let with = |cluster: Option<&'static str>| {
        let mut pairs = base.to_vec();
        pairs.extend(cluster.map(|v| ("REDIS_CLUSTER", v)));
        let pairs: &'static [(&str, &str)] = Box::leak(pairs.into_boxed_slice());
        PortsConfig::from_env(
            &env(pairs),
            Needs {
                registry: true,
                ..Needs::NONE
            },
        )
    };
    let cluster = |c: PortsConfig| match c.registry {
        Some(RegistryBackend::Redis(r)) => r.cluster,
        other => panic!("not redis: {other:?}"),
    };
    assert!(!cluster(with(None).unwrap()));
    assert!(!cluster(with(Some("false")).unwrap()));
    assert!(cluster(with(Some("true")).unwrap()));
    assert!(matches!(
        with(Some("yes")).unwrap_err(),
        ConfigError::Invalid {
            name: "REDIS_CLUSTER",
            ..
        }
    ));
}

const REGISTRY: Needs = Needs {
    registry: true,
    ..Needs::NONE
};

#[test]
fn the_registry_is_redis_unless_registry_backend_says_dynamodb() {
    // Unset: Redis, as every stage before the variable existed.
    let c =
        PortsConfig::from_env(&env(&[("REDIS_URL", "redis://127.0.0.1:6379")]), REGISTRY).unwrap();
    assert!(matches!(c.registry, Some(RegistryBackend::Redis(_))));
    assert!(!c.needs_sdk(), "the Redis registry needs no SDK client");
    let c = PortsConfig::from_env(
        &env(&[
            ("REGISTRY_BACKEND", "redis"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
        ]),
        REGISTRY,
    )
    .unwrap();
    assert!(matches!(c.registry, Some(RegistryBackend::Redis(_))));
    let e = PortsConfig::from_env(&env(&[("REGISTRY_BACKEND", "redis")]), REGISTRY).unwrap_err();
    assert_eq!(e, ConfigError::Missing("REDIS_URL"));

    // DynamoDB: the table instead of REDIS_URL, the TTL as for Redis.
    let c = PortsConfig::from_env(
        &env(&[
            ("REGISTRY_BACKEND", "dynamodb"),
            ("REGISTRY_TABLE", "courier-registry"),
            ("REGISTRY_TTL_SECS", "60"),
        ]),
        REGISTRY,
    )
    .unwrap();
    let Some(RegistryBackend::DynamoDb(d)) = &c.registry else {
        panic!("not dynamodb: {:?}", c.registry);
    };
    assert_eq!(d.table, "courier-registry");
    assert_eq!(d.ttl, Duration::from_secs(60));
    assert!(c.needs_sdk(), "the DynamoDB registry is an SDK client");
}

#[test]
fn the_dynamodb_registry_needs_its_table_and_no_redis_url() {
    let e = PortsConfig::from_env(
        &env(&[
            ("REGISTRY_BACKEND", "dynamodb"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
        ]),
        REGISTRY,
    )
    .unwrap_err();
    assert_eq!(e, ConfigError::Missing("REGISTRY_TABLE"));
    for bad in ["0", "-1", "2h"] {
        let pairs: &'static [(&str, &str)] = Box::leak(
            vec![
                ("REGISTRY_BACKEND", "dynamodb"),
                ("REGISTRY_TABLE", "r"),
                ("REGISTRY_TTL_SECS", bad),
            ]
            .into_boxed_slice(),
        );
        assert!(
            matches!(
                PortsConfig::from_env(&env(pairs), REGISTRY),
                Err(ConfigError::Invalid {
                    name: "REGISTRY_TTL_SECS",
                    ..
                })
            ),
            "{bad}"
        );
    }
    // Every function that asks for the registry takes these settings.
    let mut pairs = TABLES.to_vec();
    pairs.extend([
        ("REGISTRY_BACKEND", "dynamodb"),
        ("REGISTRY_TABLE", "r"),
        ("CATCH_UP_FUNCTION", "catch-up"),
        ("MANAGEMENT_ENDPOINT", "https://api.example/dev"),
    ]);
    let pairs: &'static [(&str, &str)] = Box::leak(pairs.into_boxed_slice());
    for needs in [
        Needs::CONNECT,
        Needs::DISCONNECT,
        Needs::CATCH_UP,
        Needs::SEND,
        Needs::ACK,
        Needs::DEVICES,
        Needs::DEFAULT,
    ] {
        check_env(&env(pairs), needs).unwrap_or_else(|e| panic!("{needs:?}: {e}"));
    }
}

#[test]
fn an_unknown_registry_backend_is_refused_by_name() {
    for bad in ["valkey", "DynamoDB", "memory"] {
        let pairs: &'static [(&str, &str)] = Box::leak(
            vec![
                ("REGISTRY_BACKEND", bad),
                ("REGISTRY_TABLE", "r"),
                ("REDIS_URL", "redis://127.0.0.1:6379"),
            ]
            .into_boxed_slice(),
        );
        let e = PortsConfig::from_env(&env(pairs), REGISTRY).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    name: "REGISTRY_BACKEND",
                    ..
                }
            ),
            "{bad}: {e}"
        );
        assert!(e.to_string().contains("REGISTRY_BACKEND"), "{e}");
    }
    // A function that asks for no registry never reads it.
    assert!(PortsConfig::from_env(&env(&[("REGISTRY_BACKEND", "valkey")]), Needs::NONE).is_ok());
}

#[test]
fn the_rate_limiter_is_off_with_the_dynamodb_registry() {
    // No REDIS_URL needed, nothing to connect to: the limiter allows.
    let limiter = rate_limiter_from_env(&env(&[
        ("REGISTRY_BACKEND", "dynamodb"),
        ("REGISTRY_TABLE", "r"),
    ]))
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let user = UserId::parse("bob").unwrap();
    for _ in 0..100 {
        assert_eq!(
            rt.block_on(limiter.acquire(&user)).unwrap(),
            courier_core::ports::RateDecision::Allowed
        );
    }
    // The Redis registry still needs its URL for the limiter.
    assert_eq!(
        rate_limiter_from_env(&env(&[])).err(),
        Some(ConfigError::Missing("REDIS_URL"))
    );
}

#[test]
fn catch_up_names_the_missing_management_endpoint() {
    let mut pairs = TABLES.to_vec();
    pairs.push(("REDIS_URL", "redis://127.0.0.1:6379"));
    let pairs: &'static [(&str, &str)] = Box::leak(pairs.into_boxed_slice());
    let e = PortsConfig::from_env(&env(pairs), Needs::CATCH_UP).unwrap_err();
    assert_eq!(e, ConfigError::Missing("MANAGEMENT_ENDPOINT"));
    assert!(e.to_string().contains("MANAGEMENT_ENDPOINT"));
}

#[test]
fn the_dynamodb_attempt_timeout_is_optional_and_bounded() {
    let with = |extra: &'static str| {
        let mut pairs = TABLES.to_vec();
        if !extra.is_empty() {
            pairs.push(("DYNAMODB_ATTEMPT_TIMEOUT_MS", extra));
        }
        let pairs: &'static [(&str, &str)] = Box::leak(pairs.into_boxed_slice());
        PortsConfig::new(&env(pairs))
            .unwrap()
            .with_stores(&env(pairs))
    };
    assert_eq!(with("").unwrap().dynamodb_attempt_timeout, None);
    assert_eq!(
        with("30000").unwrap().dynamodb_attempt_timeout,
        Some(Duration::from_secs(30))
    );
    for bad in ["0", "99", "60001", "3s", "-1"] {
        assert!(
            matches!(
                with(bad),
                Err(ConfigError::Invalid {
                    name: "DYNAMODB_ATTEMPT_TIMEOUT_MS",
                    ..
                })
            ),
            "{bad}"
        );
    }
}

#[test]
fn bad_urls_are_refused_by_name() {
    let e = PortsConfig::new(&env(&[("SNS_ENDPOINT", "localhost:5000")])).unwrap_err();
    assert!(matches!(
        e,
        ConfigError::Invalid {
            name: "SNS_ENDPOINT",
            ..
        }
    ));
    let e =
        PortsConfig::from_env(&env(&[("REDIS_URL", "http://x")]), Needs::DISCONNECT).unwrap_err();
    assert!(matches!(
        e,
        ConfigError::Invalid {
            name: "REDIS_URL",
            ..
        }
    ));
    let e = PortsConfig::from_env(
        &env(&[("MANAGEMENT_ENDPOINT", "ftp://x")]),
        Needs {
            gateway: true,
            ..Needs::NONE
        },
    )
    .unwrap_err();
    assert!(matches!(
        e,
        ConfigError::Invalid {
            name: "MANAGEMENT_ENDPOINT",
            ..
        }
    ));
}

fn offline_clients() -> AwsClients {
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .build();
    AwsClients::from_sdk_config(sdk, AwsEndpoints::default())
}

#[tokio::test]
async fn unasked_ports_fail_loudly_and_asked_ones_are_built_offline() {
    let config = PortsConfig::from_env(
        &env(&[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("MANAGEMENT_ENDPOINT", "http://127.0.0.1:1/dev"),
        ]),
        Needs::DISCONNECT,
    )
    .unwrap()
    .with_gateway(&env(&[("MANAGEMENT_ENDPOINT", "http://127.0.0.1:1/dev")]))
    .unwrap();
    let ports = offline_clients().ports(&config).unwrap();
    let user = UserId::parse("bob").unwrap();
    let e = ports.pending.list(&user).await.unwrap_err();
    assert!(e.to_string().contains("not wired"), "{e}");
    let e = ports
        .trigger
        .trigger(&CatchUpRequest {
            user_id: user.clone(),
            connection_id: ConnectionId::parse("c1").unwrap(),
            connected_at: None,
            device_id: Default::default(),
            open_conversation: None,
            device_limit: None,
            origin: Default::default(),
            correlation_id: None,
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not wired"), "{e}");
    // The registry was built without a server; using it fails as a
    // RegistryError, not a panic or a hang.
    assert!(ports.registry.lookup(&user).await.is_err());
}

#[tokio::test]
async fn the_dynamodb_registry_is_built_offline_on_the_dynamodb_client() {
    let config = PortsConfig::from_env(
        &env(&[
            ("REGISTRY_BACKEND", "dynamodb"),
            ("REGISTRY_TABLE", "r"),
            ("DYNAMODB_ENDPOINT", "http://127.0.0.1:1"),
        ]),
        Needs::DISCONNECT,
    )
    .unwrap();
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            aws_sdk_dynamodb::config::Credentials::new("k", "s", None, None, "test"),
        ))
        .build();
    let ports = AwsClients::from_sdk_config(sdk.clone(), config.endpoints.clone())
        .ports(&config)
        .unwrap();
    let user = UserId::parse("bob").unwrap();
    // Nothing listens on port 1: a RegistryError, well within the bound.
    let started = std::time::Instant::now();
    let e = ports.registry.lookup(&user).await.unwrap_err();
    assert!(e.0.contains("dynamodb registry"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The stores were not asked for: still unwired.
    let e = ports.pending.list(&user).await.unwrap_err();
    assert!(e.to_string().contains("not wired"), "{e}");

    // With the stores: the registry rides on the store's client.
    let mut pairs = TABLES.to_vec();
    pairs.extend([
        ("REGISTRY_BACKEND", "dynamodb"),
        ("REGISTRY_TABLE", "r"),
        ("DYNAMODB_ENDPOINT", "http://127.0.0.1:1"),
    ]);
    let pairs: &'static [(&str, &str)] = Box::leak(pairs.into_boxed_slice());
    let config = PortsConfig::from_env(
        &env(pairs),
        Needs {
            stores: true,
            registry: true,
            ..Needs::NONE
        },
    )
    .unwrap();
    let ports = AwsClients::from_sdk_config(sdk, config.endpoints.clone())
        .ports(&config)
        .unwrap();
    let e = ports.registry.lookup(&user).await.unwrap_err();
    assert!(e.0.contains("dynamodb registry"), "{e}");
    let e = ports.pending.list(&user).await.unwrap_err();
    assert!(!e.to_string().contains("not wired"), "{e}");
}
