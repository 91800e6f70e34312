//! The prices file (`bench/prices.toml`) and the arithmetic that turns
//! counted usage into dollars.
//!
//! Everything here is pure: the billing rules (DynamoDB's item size and
//! unit rounding, API Gateway's 32 KB message increments, Lambda's
//! GB-seconds rounded per millisecond, ElastiCache's ECPUs) are functions
//! of counts and sizes, unit-tested against hand-computed values, so a
//! figure in the table can be re-derived by hand from its counts.

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

/// `bench/prices.toml`, as read.
#[derive(Debug, Clone, Deserialize)]
pub struct Prices {
    pub region: String,
    pub date: String,
    pub dynamodb: DynamoPrices,
    pub lambda: LambdaPrices,
    pub apigateway_websocket: ApiGatewayPrices,
    pub elasticache_serverless_valkey: CachePrices,
    pub nat_gateway: NatPrices,
    pub sns: SnsPrices,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DynamoPrices {
    pub write_request_unit: f64,
    pub read_request_unit: f64,
    pub source: String,
    pub confirmed: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LambdaPrices {
    pub request: f64,
    pub gb_second_arm64: f64,
    pub billing_granularity_ms: u64,
    pub source: String,
    pub confirmed: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiGatewayPrices {
    pub message: f64,
    pub message_increment_bytes: u64,
    pub connection_minute: f64,
    pub source: String,
    pub confirmed: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CachePrices {
    pub ecpu: f64,
    pub ecpu_bytes: u64,
    pub data_gb_hour: f64,
    pub data_minimum_gb: f64,
    pub source: String,
    pub confirmed: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NatPrices {
    pub gb_processed: f64,
    pub hour: f64,
    pub source: String,
    pub confirmed: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SnsPrices {
    pub mobile_push_notification: f64,
    pub source: String,
    pub confirmed: bool,
}

impl Prices {
    /// The file beside the bench's `Cargo.toml`.
    pub fn load() -> anyhow::Result<Prices> {
        Self::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("prices.toml"))
    }

    pub fn read(path: &Path) -> anyhow::Result<Prices> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The sources of the prices not confirmed on the AWS page itself.
    pub fn unconfirmed(&self) -> Vec<&str> {
        [
            (self.dynamodb.confirmed, self.dynamodb.source.as_str()),
            (self.lambda.confirmed, &self.lambda.source),
            (
                self.apigateway_websocket.confirmed,
                &self.apigateway_websocket.source,
            ),
            (
                self.elasticache_serverless_valkey.confirmed,
                &self.elasticache_serverless_valkey.source,
            ),
            (self.nat_gateway.confirmed, &self.nat_gateway.source),
            (self.sns.confirmed, &self.sns.source),
        ]
        .into_iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, s)| s)
        .collect()
    }

    /// Dollars for `usage`, per service.
    pub fn bill(&self, usage: &Usage) -> Bill {
        let c = &self.elasticache_serverless_valkey;
        Bill {
            dynamodb: usage.dynamo_write_units * self.dynamodb.write_request_unit
                + usage.dynamo_read_units * self.dynamodb.read_request_unit,
            lambda: usage.lambda_requests as f64 * self.lambda.request
                + usage.lambda_gb_seconds * self.lambda.gb_second_arm64,
            apigateway: usage.apigw_messages as f64 * self.apigateway_websocket.message,
            cache: ecpus(usage.redis_commands, usage.redis_bytes, c.ecpu_bytes) as f64 * c.ecpu,
            nat: usage.nat_bytes as f64 / 1e9 * self.nat_gateway.gb_processed,
            sns: usage.pushes as f64 * self.sns.mobile_push_notification,
        }
    }
}

/// What one workload would bill, counted. Fractions (read units of
/// eventually consistent reads) are kept as counted; dollars come from
/// [`Prices::bill`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub dynamo_requests: u64,
    pub dynamo_read_units: f64,
    pub dynamo_write_units: f64,
    pub lambda_requests: u64,
    pub lambda_gb_seconds: f64,
    /// Messages as billed: each frame in either direction counted per
    /// started 32 KB.
    pub apigw_messages: u64,
    pub redis_commands: u64,
    /// Bytes both ways between the functions and Redis.
    pub redis_bytes: u64,
    /// Bytes both ways through the NAT gateway (the Management API's posts).
    pub nat_bytes: u64,
    pub pushes: u64,
}

/// Dollars per service.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bill {
    pub dynamodb: f64,
    pub lambda: f64,
    pub apigateway: f64,
    pub cache: f64,
    pub nat: f64,
    pub sns: f64,
}

impl Bill {
    pub fn total(&self) -> f64 {
        self.dynamodb + self.lambda + self.apigateway + self.cache + self.nat + self.sns
    }

    /// This bill for `per` units of work, scaled to a million.
    pub fn per_million(&self, per: usize) -> Bill {
        let k = 1e6 / per.max(1) as f64;
        Bill {
            dynamodb: self.dynamodb * k,
            lambda: self.lambda * k,
            apigateway: self.apigateway * k,
            cache: self.cache * k,
            nat: self.nat * k,
            sns: self.sns * k,
        }
    }
}

/// DynamoDB write units of one item write: per started 1 KB of the larger
/// of the item before and after, at least one; a transactional write costs
/// two per KB.
pub fn write_units(item_bytes: u64, transactional: bool) -> f64 {
    let units = item_bytes.div_ceil(1024).max(1) as f64;
    if transactional { 2.0 * units } else { units }
}

/// DynamoDB read units of one read of `bytes` (one item for GetItem, the
/// sum of the items read for a Query or Scan page): per started 4 KB, at
/// least one; half for an eventually consistent read.
pub fn read_units(bytes: u64, strongly_consistent: bool) -> f64 {
    let units = bytes.div_ceil(4096).max(1) as f64;
    if strongly_consistent {
        units
    } else {
        units / 2.0
    }
}

/// API Gateway WebSocket messages billed for one frame of `bytes`: one
/// per started `increment` (32 KB), at least one.
pub fn apigw_messages(bytes: u64, increment: u64) -> u64 {
    bytes.div_ceil(increment).max(1)
}

/// GB-seconds of one invocation of `duration_ms` (rounded up to the
/// billing granularity) at `memory_mb`.
pub fn gb_seconds(memory_mb: u32, duration_ms: f64, granularity_ms: u64) -> f64 {
    let g = granularity_ms.max(1) as f64;
    let billed_ms = (duration_ms / g).ceil().max(1.0) * g;
    f64::from(memory_mb) / 1024.0 * billed_ms / 1000.0
}

/// ElastiCache Serverless ECPUs of `commands` simple commands that moved
/// `bytes` in all: one ECPU per command per started KB. From totals alone
/// a command's own size is unknown, so this is the larger of one per
/// command and one per KB moved — exact when every command moves under a
/// KB, as the registry's and the limiter's do; a lower bound otherwise,
/// and for commands that take more CPU (a Lua script), which bill more.
pub fn ecpus(commands: u64, bytes: u64, ecpu_bytes: u64) -> u64 {
    commands.max(bytes.div_ceil(ecpu_bytes.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prices_file_parses_and_names_its_region_and_date() {
        let p = Prices::load().expect("bench/prices.toml");
        assert_eq!(p.region, "us-east-1");
        assert_eq!(p.date, "2026-12");
        assert_eq!(p.apigateway_websocket.message_increment_bytes, 32 * 1024);
        // The same rates as docs/deploy.md's tables.
        assert_eq!(p.dynamodb.write_request_unit, 0.625e-6);
        assert_eq!(p.lambda.gb_second_arm64, 0.0000133334);
    }

    #[test]
    fn writes_round_up_per_kb_and_transactions_double() {
        assert_eq!(write_units(0, false), 1.0);
        assert_eq!(write_units(1024, false), 1.0);
        assert_eq!(write_units(1025, false), 2.0);
        assert_eq!(write_units(300, true), 2.0);
        assert_eq!(write_units(2500, true), 6.0);
    }

    #[test]
    fn reads_round_up_per_4_kb_and_eventual_reads_cost_half() {
        assert_eq!(read_units(0, true), 1.0);
        assert_eq!(read_units(4096, true), 1.0);
        assert_eq!(read_units(4097, true), 2.0);
        assert_eq!(read_units(4097, false), 1.0);
        assert_eq!(read_units(100, false), 0.5);
        // 50 messages of 180 bytes in one Query: 9,000 bytes, 3 units.
        assert_eq!(read_units(50 * 180, true), 3.0);
    }

    #[test]
    fn websocket_messages_are_billed_per_started_32_kb() {
        assert_eq!(apigw_messages(0, 32768), 1);
        assert_eq!(apigw_messages(200, 32768), 1);
        assert_eq!(apigw_messages(32768, 32768), 1);
        assert_eq!(apigw_messages(32769, 32768), 2);
        assert_eq!(apigw_messages(100_000, 32768), 4);
    }

    #[test]
    fn gb_seconds_round_each_invocation_up_to_the_millisecond() {
        // 512 MB for 12.3 ms: billed 13 ms, 0.5 × 0.013 = 0.0065 GB-s.
        assert!((gb_seconds(512, 12.3, 1) - 0.0065).abs() < 1e-12);
        // 1024 MB for 0.2 ms: billed 1 ms.
        assert!((gb_seconds(1024, 0.2, 1) - 0.001).abs() < 1e-12);
        // A 100 ms granularity (Lambda before December 2020) rounds 12.3 to 100.
        assert!((gb_seconds(256, 12.3, 100) - 0.025).abs() < 1e-12);
    }

    #[test]
    fn ecpus_are_one_per_command_or_one_per_kb_whichever_is_more() {
        assert_eq!(ecpus(3, 600, 1024), 3);
        assert_eq!(ecpus(3, 10 * 1024, 1024), 10);
        assert_eq!(ecpus(0, 0, 1024), 0);
    }

    #[test]
    fn a_bill_is_the_counts_times_the_prices() {
        let p = Prices::load().expect("bench/prices.toml");
        let usage = Usage {
            dynamo_requests: 5,
            dynamo_read_units: 3.0,
            dynamo_write_units: 9.0,
            lambda_requests: 2,
            lambda_gb_seconds: 0.0325,
            apigw_messages: 5,
            redis_commands: 3,
            redis_bytes: 500,
            nat_bytes: 2_000,
            pushes: 1,
        };
        let bill = p.bill(&usage).per_million(1);
        // docs/deploy.md's hand arithmetic for the same counts.
        assert!((bill.dynamodb - (9.0 * 0.625 + 3.0 * 0.125)).abs() < 1e-9);
        assert!((bill.lambda - (2.0 * 0.20 + 0.0325 * 1e6 * 0.0000133334)).abs() < 1e-9);
        assert!((bill.apigateway - 5.0).abs() < 1e-9);
        assert!((bill.cache - 3.0 * 0.0023).abs() < 1e-9);
        assert!((bill.nat - 2.0 * 0.045).abs() < 1e-9);
        assert!((bill.sns - 0.50).abs() < 1e-9);
    }
}
