//! The real services every figure runs on, and the SDK clients for them.
//!
//! Redis and moto come from `courier-tests`' harness: the servers named by
//! `REDIS_URL` / `DYNAMODB_ENDPOINT` when set (as `scripts/test` and
//! `scripts/bench` set them), else ones it starts on free loopback ports for
//! the life of this process. moto runs through `scripts/moto_server.py`,
//! which serializes requests (see that file): the emulator's service time
//! is therefore additive across concurrent requests, and every figure here
//! that depends on it says so.

use std::time::Duration;

use courier::adapters::aws::{AwsClients, AwsEndpoints};
use courier::config::TableNames;
use courier_tests::proxy::{FaultProxy, Mode};

/// Where Redis and moto are.
#[derive(Debug, Clone)]
pub struct Backends {
    pub redis_url: String,
    pub dynamodb_endpoint: String,
}

impl Backends {
    /// The running servers, starting them if needed.
    pub async fn get() -> Backends {
        Backends {
            redis_url: courier_tests::redis_url().await,
            dynamodb_endpoint: courier_tests::dynamodb_endpoint().await,
        }
    }

    /// A fresh set of Courier's tables on moto, under a unique prefix.
    pub async fn fresh_tables(&self) -> TableNames {
        courier_tests::fresh_tables().await
    }

    /// SDK clients with every AWS call going to `dynamodb` (and the rest
    /// unset): fixed fake credentials and region, nothing read from the
    /// machine.
    pub fn clients(dynamodb: &str) -> AwsClients {
        AwsClients::from_sdk_config(
            courier_local::wiring::local_sdk_config(),
            AwsEndpoints {
                dynamodb: Some(dynamodb.to_owned()),
                ..AwsEndpoints::default()
            },
        )
    }
}

/// A latency proxy in front of a URL's server: the URL to use instead, and
/// the proxy to switch between no delay and a one-way delay.
pub struct Latency {
    pub proxy: FaultProxy,
    pub url: String,
}

impl Latency {
    pub async fn in_front_of(url: &str) -> anyhow::Result<Latency> {
        let (proxy, url) = FaultProxy::in_front_of(url).await?;
        Ok(Latency { proxy, url })
    }

    /// `one_way` on every chunk in each direction; zero means pass-through.
    pub fn set(&self, one_way: Duration) {
        self.proxy.set_mode(if one_way.is_zero() {
            Mode::Pass
        } else {
            Mode::delay(one_way)
        });
    }
}

/// Sets the same one-way delay on several proxies.
pub fn set_all(proxies: &[&Latency], one_way: Duration) {
    for p in proxies {
        p.set(one_way);
    }
}
