//! The RS256 keys: a JWKS fetched over HTTP(S), cached, and refreshed under
//! a rate limit.
//!
//! The set is fetched with the hyper client the AWS SDK already links,
//! cached for a TTL, and refreshed early when a token names a `kid` the
//! cache lacks (a key rotation). Refreshes of any cause are rate-limited, so
//! a flood of tokens with random `kid`s costs the identity provider at most
//! one request per interval. While the provider is unreachable the last good
//! key set keeps serving for a bounded time, so an IdP blip does not lock
//! every user out. This file answers "the key for this `kid`, or why there
//! is none" and never looks at claims.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;

use super::config::JwksConfig;
use super::verify::{Rejection, VerifierError};

/// Largest JWKS body read. Real key sets are a few KB.
const MAX_JWKS_BYTES: usize = 256 * 1024;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The RS256 keys: a JWKS cached with a TTL, refreshed on an unknown `kid`,
/// every fetch rate-limited.
pub(super) struct Jwks {
    config: JwksConfig,
    uri: http::Uri,
    client: HttpsClient,
    /// One lock for lookups and fetches: a refresh is single-flight, and
    /// concurrent verifications wait for it rather than each fetching.
    cache: Mutex<KeyCache>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Arc<DecodingKey>>,
    /// Last successful fetch.
    fetched_at: Option<Instant>,
    /// Last fetch attempt, successful or not: the rate limit's clock.
    attempted_at: Option<Instant>,
}

impl KeyCache {
    fn fresh(&self, ttl: Duration) -> bool {
        self.fetched_at.is_some_and(|t| t.elapsed() < ttl)
    }

    fn usable(&self, ttl: Duration, max_stale: Duration) -> bool {
        self.fetched_at
            .is_some_and(|t| t.elapsed() < ttl + max_stale)
    }

    fn may_fetch(&self, min_interval: Duration) -> bool {
        self.attempted_at
            .is_none_or(|t| t.elapsed() >= min_interval)
    }
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("body unreadable or over {MAX_JWKS_BYTES} bytes")]
    Body,
    #[error("not a JWK set: {0}")]
    Json(String),
}

impl Jwks {
    pub(super) fn new(config: JwksConfig) -> Result<Self, VerifierError> {
        // `JwksConfig::new` validated the URL; parse again for the type.
        let uri: http::Uri = config
            .url
            .parse()
            .map_err(|_| VerifierError::TlsRoots(std::io::Error::other("JWKS_URL is not a URL")))?;
        // The provider is named rather than taken from crate features, which
        // would panic at run time if another crate ever enabled `ring` too.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(VerifierError::TlsRoots)?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self {
            config,
            uri,
            client,
            cache: Mutex::new(KeyCache::default()),
        })
    }

    /// The `JWKS_URL` it fetches, for `Debug`.
    pub(super) fn url(&self) -> &str {
        &self.config.url
    }

    /// The key for `kid`, fetching the set first if it is stale or lacks the
    /// key and the rate limit allows.
    pub(super) async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, Rejection> {
        let mut cache = self.cache.lock().await;
        if cache.fresh(self.config.ttl)
            && let Some(key) = cache.keys.get(kid)
        {
            return Ok(key.clone());
        }
        if cache.may_fetch(self.config.min_refresh_interval) {
            self.fetch_into(&mut cache).await;
        }
        if !cache.usable(self.config.ttl, self.config.max_stale) {
            return Err(Rejection::KeysUnavailable);
        }
        cache.keys.get(kid).cloned().ok_or(Rejection::UnknownKey)
    }

    pub(super) async fn refresh_if_allowed(&self) {
        let mut cache = self.cache.lock().await;
        if cache.may_fetch(self.config.min_refresh_interval) {
            self.fetch_into(&mut cache).await;
        }
    }

    async fn fetch_into(&self, cache: &mut KeyCache) {
        cache.attempted_at = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "JWKS fetched");
                cache.keys = keys;
                cache.fetched_at = Some(Instant::now());
            }
            // Keep the previous keys: they serve until `max_stale` runs out.
            Err(e) => tracing::warn!(error = %e, url = %self.config.url, "JWKS fetch failed"),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, FetchError> {
        let request = http::Request::get(self.uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| FetchError::Request(e.to_string()))?;
        let body = tokio::time::timeout(self.config.fetch_timeout, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| FetchError::Request(e.to_string()))?;
            if !response.status().is_success() {
                return Err(FetchError::Status(response.status().as_u16()));
            }
            Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|_| FetchError::Body)
        })
        .await
        .map_err(|_| FetchError::Timeout(self.config.fetch_timeout))??;
        parse_jwks(&body)
    }
}

/// The RS256 signing keys of a JWK set, by `kid`. Keys of other types or
/// algorithms, encryption keys and keys without a `kid` are skipped rather
/// than failing the set: IdPs publish mixed sets.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<DecodingKey>>, FetchError> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<Value>,
    }
    let set: RawSet = serde_json::from_slice(body).map_err(|e| FetchError::Json(e.to_string()))?;
    let mut keys = HashMap::new();
    for raw in set.keys {
        if let Ok(jwk) = serde_json::from_value::<Jwk>(raw)
            && let Some((kid, key)) = rs256_key(&jwk)
        {
            keys.entry(kid).or_insert_with(|| Arc::new(key));
        }
    }
    Ok(keys)
}

fn rs256_key(jwk: &Jwk) -> Option<(String, DecodingKey)> {
    let kid = jwk.common.key_id.clone()?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if jwk
        .common
        .key_algorithm
        .is_some_and(|a| a != KeyAlgorithm::RS256)
    {
        return None;
    }
    let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
        return None;
    };
    DecodingKey::from_rsa_components(&rsa.n, &rsa.e)
        .ok()
        .map(|key| (kid, key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::super::Verifier;
    use super::super::fixtures::jwks_config;
    use super::super::testing::*;
    use super::*;

    #[tokio::test]
    async fn rs256_token_verifies_against_a_jwks_served_over_http() {
        let key = RsaKey::generate("k1");
        let server = JwksServer::start(jwks_json(&[&key])).await;
        let v = Verifier::new(&jwks_config(&server.url)).unwrap();
        assert_eq!(
            v.verify(&key.sign(&claims("bob"))).await.unwrap().as_str(),
            "bob"
        );
        assert_eq!(
            v.verify(&key.sign(&claims("carol")))
                .await
                .unwrap()
                .as_str(),
            "carol"
        );
        assert_eq!(
            server.requests(),
            1,
            "a fresh cache answers without fetching"
        );
    }

    #[tokio::test]
    async fn unknown_kid_triggers_one_refresh_and_the_rate_limit_holds() {
        let k1 = RsaKey::generate("k1");
        let k2 = RsaKey::generate("k2");
        let server = JwksServer::start(jwks_json(&[&k1])).await;
        let mut config = jwks_config(&server.url);
        if let Some(j) = config.jwks.as_mut() {
            j.min_refresh_interval = Duration::from_millis(400);
        }
        let v = Verifier::new(&config).unwrap();

        assert!(v.verify(&k1.sign(&claims("bob"))).await.is_ok());
        assert_eq!(server.requests(), 1);
        // Signed up front: RSA signing in a debug build is slow enough that
        // signing inside the flood could outlast the interval under test.
        let rotated = k2.sign(&claims("bob"));
        let flood: Vec<String> = (0..50)
            .map(|i| k1.sign_with_kid(Some(&format!("random-{i}")), &claims("bob")))
            .collect();

        // The IdP rotates in k2; the first k2 token makes the cache refresh
        // at once (the last fetch is old enough), and it verifies.
        server.set_body(jwks_json(&[&k1, &k2]));
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(v.verify(&rotated).await.unwrap().as_str(), "bob");
        assert_eq!(
            server.requests(),
            2,
            "exactly one refresh for the unknown kid"
        );

        // A flood of random kids right after: refused, and no more fetches.
        for token in &flood {
            assert_eq!(v.verify(token).await, Err(Rejection::UnknownKey));
        }
        assert_eq!(server.requests(), 2, "the rate limit holds under a flood");

        // Once the interval has passed, one more unknown kid may fetch again.
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(
            v.verify(&k1.sign_with_kid(Some("random-x"), &claims("bob")))
                .await,
            Err(Rejection::UnknownKey)
        );
        assert_eq!(server.requests(), 3);
    }

    #[tokio::test]
    async fn jwks_server_down_refuses_as_keys_unavailable() {
        let key = RsaKey::generate("k1");
        let v = Verifier::new(&jwks_config(&dead_url().await)).unwrap();
        let r = v.verify(&key.sign(&claims("bob"))).await;
        assert_eq!(r, Err(Rejection::KeysUnavailable));
        assert!(r.unwrap_err().is_server_fault());
    }

    #[tokio::test]
    async fn black_holed_jwks_server_refuses_within_the_fetch_timeout() {
        let key = RsaKey::generate("k1");
        let server = JwksServer::start_silent().await;
        let mut config = jwks_config(&server.url);
        if let Some(j) = config.jwks.as_mut() {
            j.fetch_timeout = Duration::from_millis(300);
        }
        let v = Verifier::new(&config).unwrap();
        let started = Instant::now();
        assert_eq!(
            v.verify(&key.sign(&claims("bob"))).await,
            Err(Rejection::KeysUnavailable)
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn jwks_errors_and_garbage_are_keys_unavailable_not_panics() {
        let key = RsaKey::generate("k1");
        let server = JwksServer::start("this is not json".into()).await;
        let mut config = jwks_config(&server.url);
        if let Some(j) = config.jwks.as_mut() {
            j.min_refresh_interval = Duration::ZERO;
        }
        let v = Verifier::new(&config).unwrap();
        assert_eq!(
            v.verify(&key.sign(&claims("bob"))).await,
            Err(Rejection::KeysUnavailable)
        );
        server.set_body(jwks_json(&[&key]));
        server.set_status(500);
        assert_eq!(
            v.verify(&key.sign(&claims("bob"))).await,
            Err(Rejection::KeysUnavailable)
        );
        server.set_status(200);
        assert!(v.verify(&key.sign(&claims("bob"))).await.is_ok());
    }

    #[tokio::test]
    async fn stale_keys_keep_serving_while_the_idp_is_down_then_expire() {
        let key = RsaKey::generate("k1");
        let server = JwksServer::start(jwks_json(&[&key])).await;
        let mut config = jwks_config(&server.url);
        if let Some(j) = config.jwks.as_mut() {
            j.ttl = Duration::from_millis(100);
            j.max_stale = Duration::from_millis(600);
            j.min_refresh_interval = Duration::ZERO;
        }
        let v = Verifier::new(&config).unwrap();
        assert!(v.verify(&key.sign(&claims("bob"))).await.is_ok());

        server.set_status(503);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            v.verify(&key.sign(&claims("bob"))).await.is_ok(),
            "stale set still serves"
        );
        assert!(server.requests() >= 2, "a refresh was attempted");

        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            v.verify(&key.sign(&claims("bob"))).await,
            Err(Rejection::KeysUnavailable)
        );
    }

    #[test]
    fn jwks_parsing_keeps_only_rs256_signing_keys_with_a_kid() {
        let key = RsaKey::generate("good");
        let mut enc = key.jwk();
        enc["kid"] = "enc".into();
        enc["use"] = "enc".into();
        let mut ps = key.jwk();
        ps["kid"] = "ps".into();
        ps["alg"] = "PS256".into();
        let mut no_kid = key.jwk();
        no_kid.as_object_mut().unwrap().remove("kid");
        let body = json!({"keys": [
            key.jwk(), enc, ps, no_kid,
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"something": "unknown"}
        ]});
        let keys = parse_jwks(body.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["good"]);
    }
}
