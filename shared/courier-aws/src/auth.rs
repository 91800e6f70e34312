//! Token verification for the `$connect` authorizer (DESIGN §1 step 1).
//!
//! A client proves who it is with a JWT in `?token=`; its `sub` becomes the
//! [`UserId`] every later route trusts. Two kinds of key, each pinned to one
//! algorithm so a token can never choose how it is checked:
//!
//! - **HS256 with `JWT_SECRET`**, for local runs and non-production stages.
//! - **RS256 with a JWKS** (`JWKS_URL`, Cognito or any OIDC provider), the key
//!   chosen by the token's `kid`.
//!
//! The header's `alg` only selects which of the configured keys to try; a
//! token whose `alg` has no configured key (`none`, HS256 when only a JWKS is
//! set — the "sign with the public key" attack —, RS256 without a JWKS,
//! anything else) is refused before any signature code runs. `exp` is always
//! required, `nbf` checked when present, `iss`/`aud` required and checked when
//! configured, and `sub` must parse as a [`UserId`].
//!
//! The JWKS is fetched over HTTP(S) with the hyper client the AWS SDK already
//! links, cached for a TTL, and refreshed early when a token names a `kid` the
//! cache lacks (a key rotation). Refreshes of any cause are rate-limited, so a
//! flood of tokens with random `kid`s costs the identity provider at most one
//! request per interval. While the provider is unreachable the last good key
//! set keeps serving for a bounded time, so an IdP blip does not lock every
//! user out.
//!
//! Every refusal is a typed [`Rejection`] whose text never contains token
//! content (not even the `alg` or `kid` strings an attacker wrote), so it can
//! be logged as is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use courier_core::config::{ConfigError, Env};
use courier_core::domain::{InvalidValue, UserId};

/// Longest token accepted. API Gateway caps the whole request line far
/// above any real JWT; refusing early keeps base64 and JSON work bounded.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Largest JWKS body read. Real key sets are a few KB.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Default clock-skew allowance for `exp` and `nbf`. Small: the IdP and
/// Lambda both run on NTP-disciplined clocks.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(10);

/// Upper bound for `JWT_LEEWAY_SECS`: more than this would quietly extend
/// every token's life.
const MAX_LEEWAY_SECS: u64 = 300;

/// An HMAC secret. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Where and how the JWKS is fetched and cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksConfig {
    /// `https://…/.well-known/jwks.json`; plain `http` only on loopback.
    pub url: String,
    /// How long a fetched key set is trusted before it is fetched again.
    pub ttl: Duration,
    /// How long past `ttl` the last good set keeps serving while every
    /// refresh fails (the IdP is down): availability over instant revocation,
    /// but only for a bounded time.
    pub max_stale: Duration,
    /// Fewest seconds between two fetches of any cause: the cap on what a
    /// flood of unknown `kid`s can cost the IdP.
    pub min_refresh_interval: Duration,
    /// One fetch, connect to last byte.
    pub fetch_timeout: Duration,
}

impl JwksConfig {
    pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
    pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(3600);
    pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
    pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(3);

    /// Defaults for everything but the URL, which must be `https` (or `http`
    /// to a loopback host, for tests and local IdPs).
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::Invalid {
            name: "JWKS_URL",
            reason: reason.to_owned(),
        };
        let uri: http::Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        let host = uri.host().ok_or_else(|| invalid("has no host"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1") => {}
            Some("http") => return Err(invalid("must use https (http only for a loopback host)")),
            _ => return Err(invalid("must be an https URL")),
        }
        Ok(Self {
            url: url.to_owned(),
            ttl: Self::DEFAULT_TTL,
            max_stale: Self::DEFAULT_MAX_STALE,
            min_refresh_interval: Self::DEFAULT_MIN_REFRESH_INTERVAL,
            fetch_timeout: Self::DEFAULT_FETCH_TIMEOUT,
        })
    }
}

/// The `Origin` values allowed on `$connect`, normalised (lowercase, no
/// trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginAllowlist(Vec<String>);

impl OriginAllowlist {
    /// A comma-separated list of `scheme://host[:port]` origins.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let mut origins = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let origin = normalise_origin(item);
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains('/') => origins.push(origin),
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "ALLOWED_ORIGINS",
                        reason: format!("{item:?} is not an origin like https://app.example.com"),
                    });
                }
            }
        }
        if origins.is_empty() {
            return Err(ConfigError::Invalid {
                name: "ALLOWED_ORIGINS",
                reason: "lists no origin".into(),
            });
        }
        Ok(Self(origins))
    }

    /// Scheme and host compare case-insensitively, as browsers send them.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = normalise_origin(origin.trim());
        self.0.contains(&origin)
    }
}

fn normalise_origin(s: &str) -> String {
    s.trim_end_matches('/').to_ascii_lowercase()
}

/// Everything the authorizer reads from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// `JWT_SECRET`: enables HS256.
    pub hs256_secret: Option<Secret>,
    /// `JWKS_URL`: enables RS256.
    pub jwks: Option<JwksConfig>,
    /// `JWT_ISSUER`: when set, `iss` is required and must match.
    pub issuer: Option<String>,
    /// `JWT_AUDIENCE`: when set, `aud` is required and must contain it. When
    /// unset, `aud` is not checked at all (Cognito access tokens carry none).
    pub audience: Option<String>,
    /// `JWT_LEEWAY_SECS`.
    pub leeway: Duration,
    /// `ALLOWED_ORIGINS`: when set, a `$connect` whose `Origin` is not listed
    /// is refused.
    pub allowed_origins: Option<OriginAllowlist>,
}

impl AuthConfig {
    /// HS256 only, nothing else checked beyond `exp`/`nbf`/`sub`: local runs
    /// and tests.
    pub fn hs256(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            hs256_secret: Some(Secret::new(secret)),
            jwks: None,
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
            allowed_origins: None,
        }
    }

    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let hs256_secret = env.optional("JWT_SECRET").map(Secret::new);
        let jwks = env
            .optional("JWKS_URL")
            .map(|u| JwksConfig::new(&u))
            .transpose()?;
        if hs256_secret.is_none() && jwks.is_none() {
            return Err(ConfigError::Missing("JWT_SECRET or JWKS_URL"));
        }
        let leeway = env.parsed("JWT_LEEWAY_SECS", DEFAULT_LEEWAY.as_secs())?;
        if leeway > MAX_LEEWAY_SECS {
            return Err(ConfigError::Invalid {
                name: "JWT_LEEWAY_SECS",
                reason: format!("must be at most {MAX_LEEWAY_SECS}"),
            });
        }
        Ok(Self {
            hs256_secret,
            jwks,
            issuer: env.optional("JWT_ISSUER"),
            audience: env.optional("JWT_AUDIENCE"),
            leeway: Duration::from_secs(leeway),
            allowed_origins: env
                .optional("ALLOWED_ORIGINS")
                .map(|o| OriginAllowlist::parse(&o))
                .transpose()?,
        })
    }
}

/// The `alg` a token named, reduced to what is safe to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlgName {
    /// `none`, in any letter case.
    None,
    Known(Algorithm),
    /// Anything else (the string itself is attacker text, so not kept).
    Unrecognized,
}

impl std::fmt::Display for AlgName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AlgName::None => f.write_str("none"),
            AlgName::Known(a) => write!(f, "{a:?}"),
            AlgName::Unrecognized => f.write_str("unrecognized"),
        }
    }
}

/// Why a token was refused. Display text is safe to log: it holds no token
/// content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no token")]
    MissingToken,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm {0} is not accepted")]
    AlgorithmNotAllowed(AlgName),
    #[error("RS256 token without a key id")]
    MissingKeyId,
    #[error("key id not in the JWKS")]
    UnknownKey,
    /// The JWKS could not be fetched and no usable copy is cached: a server
    /// fault, not the client's.
    #[error("signing keys unavailable")]
    KeysUnavailable,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("claim {0} missing or not of the right type")]
    MissingClaim(&'static str),
    #[error("sub is not a valid user id ({0})")]
    InvalidSubject(InvalidValue),
}

impl Rejection {
    /// True when the refusal is our fault (the IdP unreachable), so the
    /// caller should answer a server error rather than "bad token".
    pub fn is_server_fault(&self) -> bool {
        matches!(self, Rejection::KeysUnavailable)
    }

    fn from_jwt(e: &jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => Rejection::BadSignature,
            K::ExpiredSignature => Rejection::Expired,
            K::ImmatureSignature => Rejection::NotYetValid,
            K::InvalidIssuer => Rejection::WrongIssuer,
            K::InvalidAudience => Rejection::WrongAudience,
            K::InvalidAlgorithm | K::MissingAlgorithm => {
                Rejection::AlgorithmNotAllowed(AlgName::Unrecognized)
            }
            K::MissingRequiredClaim(c) => Rejection::MissingClaim(static_claim(c)),
            K::InvalidClaimFormat(c) => Rejection::MissingClaim(static_claim(c)),
            K::InvalidToken => Rejection::Malformed("not three base64url parts"),
            K::Base64(_) => Rejection::Malformed("bad base64url"),
            K::Json(_) | K::Utf8(_) => {
                Rejection::Malformed("header or claims are not JSON objects")
            }
            // Key-format errors cannot come from the token; treat anything
            // unforeseen as "does not verify" rather than letting it through.
            _ => Rejection::BadSignature,
        }
    }
}

fn static_claim(c: &str) -> &'static str {
    match c {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "unknown",
    }
}

/// The JWKS could not be built at start-up.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error("cannot load the system's TLS root certificates for JWKS_URL: {0}")]
    TlsRoots(std::io::Error),
}

/// Checks tokens against the configured keys. Built once per execution
/// environment; cheap to share by reference.
pub struct Verifier {
    hs256: Option<(DecodingKey, Validation)>,
    rs256: Option<(Jwks, Validation)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.is_some())
            .field("jwks", &self.rs256.as_ref().map(|(j, _)| &j.config.url))
            .finish()
    }
}

impl Verifier {
    pub fn new(config: &AuthConfig) -> Result<Self, VerifierError> {
        let hs256 = config.hs256_secret.as_ref().map(|s| {
            (
                DecodingKey::from_secret(s.expose()),
                validation(config, Algorithm::HS256),
            )
        });
        let rs256 = match &config.jwks {
            Some(j) => Some((Jwks::new(j.clone())?, validation(config, Algorithm::RS256))),
            None => None,
        };
        Ok(Self { hs256, rs256 })
    }

    /// Fetches the JWKS now (best effort), so the first `$connect` does not
    /// pay for it. Meant for start-up, outside any request's latency.
    pub async fn warm_up(&self) {
        if let Some((jwks, _)) = &self.rs256 {
            jwks.refresh_if_allowed().await;
        }
    }

    /// The user a token speaks for, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<UserId, Rejection> {
        if token.is_empty() {
            return Err(Rejection::MissingToken);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::Malformed("longer than 8 KiB"));
        }
        let header = peek_header(token)?;
        let claims = match (header.alg, &self.hs256, &self.rs256) {
            (AlgName::Known(Algorithm::HS256), Some((key, validation)), _) => {
                decode(token, key, validation)?
            }
            (AlgName::Known(Algorithm::RS256), _, Some((jwks, validation))) => {
                let kid = header.kid.ok_or(Rejection::MissingKeyId)?;
                let key = jwks.key(&kid).await?;
                decode(token, &key, validation)?
            }
            (alg, _, _) => return Err(Rejection::AlgorithmNotAllowed(alg)),
        };
        match claims.sub {
            Value::String(s) => UserId::parse(&s).map_err(Rejection::InvalidSubject),
            _ => Err(Rejection::MissingClaim("sub")),
        }
    }
}

fn validation(config: &AuthConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(iss) = &config.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    match &config.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        // jsonwebtoken refuses any token carrying `aud` when no audience is
        // configured; "unset" here means "not checked".
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Value,
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, Rejection> {
    jsonwebtoken::decode::<Claims>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| Rejection::from_jwt(&e))
}

struct PeekedHeader {
    alg: AlgName,
    kid: Option<String>,
}

/// Reads `alg` and `kid` before any verification, only to pick the key.
/// Done by hand because jsonwebtoken cannot represent `alg: none` and would
/// report it as a JSON error.
fn peek_header(token: &str) -> Result<PeekedHeader, Rejection> {
    #[derive(Deserialize)]
    struct RawHeader {
        alg: String,
        #[serde(default)]
        kid: Option<String>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed("not three base64url parts"));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Rejection::Malformed("bad base64url"))?;
    let raw: RawHeader = serde_json::from_slice(&bytes)
        .map_err(|_| Rejection::Malformed("header is not a JSON object with alg"))?;
    let alg = if raw.alg.eq_ignore_ascii_case("none") {
        AlgName::None
    } else {
        raw.alg
            .parse()
            .map_or(AlgName::Unrecognized, AlgName::Known)
    };
    Ok(PeekedHeader { alg, kid: raw.kid })
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The RS256 keys: a JWKS cached with a TTL, refreshed on an unknown `kid`,
/// every fetch rate-limited.
struct Jwks {
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
    fn new(config: JwksConfig) -> Result<Self, VerifierError> {
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

    /// The key for `kid`, fetching the set first if it is stale or lacks the
    /// key and the rate limit allows.
    async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, Rejection> {
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

    async fn refresh_if_allowed(&self) {
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An HS256 token for `user_id`, valid for `ttl` from now, with `iss`/`aud`
/// when given: for local runs, tests and the local gateway's token command.
pub fn mint_hs256(
    secret: &[u8],
    user_id: &UserId,
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> String {
    let now = unix_now();
    let mut claims = Map::new();
    claims.insert("sub".into(), user_id.as_str().into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(ttl.as_secs()).into());
    if let Some(iss) = issuer {
        claims.insert("iss".into(), iss.into());
    }
    if let Some(aud) = audience {
        claims.insert("aud".into(), aud.into());
    }
    sign_hs256(secret, &Value::Object(claims))
}

/// Signs arbitrary claims with HS256. Built by hand on aws-lc's HMAC so it
/// cannot fail: `jsonwebtoken::encode` returns errors for key kinds never
/// used here.
pub fn sign_hs256(secret: &[u8], claims: &Value) -> String {
    sign_hs256_raw(secret, claims.to_string().as_bytes())
}

fn sign_hs256_raw(secret: &[u8], payload: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(payload);
    let signing_input = format!("{header}.{payload}");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Test helpers shared with other crates' tests (feature `test-util`): an
/// RSA key that signs RS256 tokens and publishes its JWK, and a loopback
/// JWKS server that counts the requests it serves.
#[cfg(any(test, feature = "test-util"))]
pub mod testing {
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::unix_now;

    /// Now, in seconds since the epoch, plus `offset` (negative for the past).
    pub fn now_plus(offset: i64) -> u64 {
        unix_now().saturating_add_signed(offset)
    }

    /// `{"sub": sub, "exp": now + 1h}`.
    pub fn claims(sub: &str) -> Value {
        json!({ "sub": sub, "iat": now_plus(0), "exp": now_plus(3600) })
    }

    /// A token with `alg: none` and an empty signature.
    pub fn unsigned_token(claims: &Value) -> String {
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    /// An RSA-2048 key generated on the spot (aws-lc-rs; about 0.1 s), so no
    /// private key is ever committed.
    pub struct RsaKey {
        pub kid: String,
        encoding: EncodingKey,
        /// The public key as a SubjectPublicKeyInfo PEM, as an IdP would
        /// publish it: the "secret" of the HS256-with-public-key attack.
        pub public_pem: String,
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    impl RsaKey {
        pub fn generate(kid: &str) -> Self {
            let pair = KeyPair::generate(KeySize::Rsa2048).expect("generate RSA key");
            let private = pair.as_der().expect("PKCS#8 DER");
            let public = aws_lc_rs::signature::KeyPair::public_key(&pair)
                .as_der()
                .expect("SPKI DER");
            let encoding =
                EncodingKey::from_rsa_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes())
                    .expect("jsonwebtoken reads the PKCS#8 PEM");
            Self {
                kid: kid.to_owned(),
                encoding,
                public_pem: pem("PUBLIC KEY", public.as_ref()),
            }
        }

        /// An RS256 token with this key's `kid`.
        pub fn sign(&self, claims: &Value) -> String {
            self.sign_with_kid(Some(&self.kid), claims)
        }

        /// An RS256 token with any `kid` (or none), signed by this key.
        pub fn sign_with_kid(&self, kid: Option<&str>, claims: &Value) -> String {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&header, claims, &self.encoding).expect("RS256 signing")
        }

        /// The public JWK (`kty`, `n`, `e`, `kid`, `use`, `alg`).
        pub fn jwk(&self) -> Value {
            let mut jwk = Jwk::from_encoding_key(&self.encoding, Algorithm::RS256).expect("JWK");
            jwk.common.key_id = Some(self.kid.clone());
            jwk.common.public_key_use = Some(PublicKeyUse::Signature);
            serde_json::to_value(jwk).expect("JWK serializes")
        }
    }

    /// `{"keys": [...]}` for these keys.
    pub fn jwks_json(keys: &[&RsaKey]) -> String {
        json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
    }

    /// A one-route HTTP/1.1 server on 127.0.0.1:0 answering every request
    /// with the current body and status, counting requests.
    pub struct JwksServer {
        pub url: String,
        requests: Arc<AtomicUsize>,
        body: Arc<Mutex<String>>,
        status: Arc<AtomicU16>,
        task: JoinHandle<()>,
    }

    impl JwksServer {
        pub async fn start(body: String) -> Self {
            Self::spawn(body, true).await
        }

        /// Accepts connections and never answers: a black-holed IdP.
        pub async fn start_silent() -> Self {
            Self::spawn(String::new(), false).await
        }

        async fn spawn(body: String, answer: bool) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            let addr = listener.local_addr().expect("local addr");
            let requests = Arc::new(AtomicUsize::new(0));
            let body = Arc::new(Mutex::new(body));
            let status = Arc::new(AtomicU16::new(200));
            let (r, b, s) = (requests.clone(), body.clone(), status.clone());
            let task = tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((mut sock, _)) = listener.accept().await {
                    if !answer {
                        held.push(sock);
                        continue;
                    }
                    let (r, b, s) = (r.clone(), b.clone(), s.clone());
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 1024];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        let body = b.lock().map(|g| g.clone()).unwrap_or_default();
                        let status = s.load(Ordering::SeqCst);
                        let response = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = sock.write_all(response.as_bytes()).await;
                        let _ = sock.shutdown().await;
                    });
                }
            });
            Self {
                url: format!("http://{addr}/.well-known/jwks.json"),
                requests,
                body,
                status,
                task,
            }
        }

        /// Requests served so far.
        pub fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }

        /// What later requests get (a key rotation).
        pub fn set_body(&self, body: String) {
            if let Ok(mut b) = self.body.lock() {
                *b = body;
            }
        }

        /// The status later requests get (an IdP answering errors).
        pub fn set_status(&self, status: u16) {
            self.status.store(status, Ordering::SeqCst);
        }
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A loopback URL nothing listens on (bound, then released): connection
    /// refused.
    pub async fn dead_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        format!("http://{addr}/.well-known/jwks.json")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::testing::*;
    use super::*;

    const SECRET: &[u8] = b"unit-test-secret";

    fn hs_verifier() -> Verifier {
        Verifier::new(&AuthConfig::hs256(SECRET)).unwrap()
    }

    fn jwks_config(url: &str) -> AuthConfig {
        AuthConfig {
            hs256_secret: None,
            jwks: Some(JwksConfig::new(url).unwrap()),
            ..AuthConfig::hs256(Vec::new())
        }
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> Env<impl Fn(&str) -> Option<String>> {
        Env(move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[tokio::test]
    async fn valid_hs256_token_yields_its_sub() {
        let token = mint_hs256(
            SECRET,
            &UserId::parse("bob").unwrap(),
            Duration::from_secs(60),
            None,
            None,
        );
        assert_eq!(hs_verifier().verify(&token).await.unwrap().as_str(), "bob");
    }

    #[tokio::test]
    async fn minted_token_carries_issuer_and_audience_that_verify() {
        let config = AuthConfig {
            issuer: Some("courier-local".into()),
            audience: Some("courier".into()),
            ..AuthConfig::hs256(SECRET)
        };
        let v = Verifier::new(&config).unwrap();
        let bob = UserId::parse("bob").unwrap();
        let token = mint_hs256(
            SECRET,
            &bob,
            Duration::from_secs(60),
            Some("courier-local"),
            Some("courier"),
        );
        assert_eq!(v.verify(&token).await.unwrap(), bob);
        let no_iss = mint_hs256(SECRET, &bob, Duration::from_secs(60), None, Some("courier"));
        assert_eq!(v.verify(&no_iss).await, Err(Rejection::MissingClaim("iss")));
        let no_aud = mint_hs256(
            SECRET,
            &bob,
            Duration::from_secs(60),
            Some("courier-local"),
            None,
        );
        assert_eq!(v.verify(&no_aud).await, Err(Rejection::MissingClaim("aud")));
    }

    #[tokio::test]
    async fn expired_token_is_refused() {
        let token = sign_hs256(SECRET, &json!({"sub": "bob", "exp": now_plus(-3600)}));
        assert_eq!(hs_verifier().verify(&token).await, Err(Rejection::Expired));
    }

    #[tokio::test]
    async fn expiry_within_leeway_is_accepted_and_beyond_it_refused() {
        let config = AuthConfig {
            leeway: Duration::from_secs(30),
            ..AuthConfig::hs256(SECRET)
        };
        let v = Verifier::new(&config).unwrap();
        let inside = sign_hs256(SECRET, &json!({"sub": "bob", "exp": now_plus(-10)}));
        let outside = sign_hs256(SECRET, &json!({"sub": "bob", "exp": now_plus(-60)}));
        assert!(v.verify(&inside).await.is_ok());
        assert_eq!(v.verify(&outside).await, Err(Rejection::Expired));
    }

    #[tokio::test]
    async fn token_without_exp_is_refused() {
        let token = sign_hs256(SECRET, &json!({"sub": "bob"}));
        assert_eq!(
            hs_verifier().verify(&token).await,
            Err(Rejection::MissingClaim("exp"))
        );
    }

    #[tokio::test]
    async fn token_signed_with_another_secret_is_refused() {
        let token = sign_hs256(b"someone-elses-secret", &claims("bob"));
        assert_eq!(
            hs_verifier().verify(&token).await,
            Err(Rejection::BadSignature)
        );
    }

    #[tokio::test]
    async fn tampered_claims_break_the_signature() {
        let token = sign_hs256(SECRET, &claims("bob"));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(claims("alice").to_string());
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(
            hs_verifier().verify(&tampered).await,
            Err(Rejection::BadSignature)
        );
    }

    #[tokio::test]
    async fn alg_none_is_refused_in_any_letter_case() {
        let v = hs_verifier();
        assert_eq!(
            v.verify(&unsigned_token(&claims("bob"))).await,
            Err(Rejection::AlgorithmNotAllowed(AlgName::None))
        );
        let shouting = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"NoNe"}"#),
            URL_SAFE_NO_PAD.encode(claims("bob").to_string())
        );
        assert_eq!(
            v.verify(&shouting).await,
            Err(Rejection::AlgorithmNotAllowed(AlgName::None))
        );
    }

    #[tokio::test]
    async fn hs512_is_refused_even_with_the_right_secret() {
        let header = jsonwebtoken::Header::new(Algorithm::HS512);
        let token = jsonwebtoken::encode(
            &header,
            &claims("bob"),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            hs_verifier().verify(&token).await,
            Err(Rejection::AlgorithmNotAllowed(AlgName::Known(
                Algorithm::HS512
            )))
        );
    }

    #[tokio::test]
    async fn missing_and_malformed_tokens_are_refused_with_a_reason() {
        let v = hs_verifier();
        assert_eq!(v.verify("").await, Err(Rejection::MissingToken));
        for junk in [
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.e30.sig",
            "e30.e30.",
            "bm90IGpzb24.e30.x",
        ] {
            assert!(
                matches!(v.verify(junk).await, Err(Rejection::Malformed(_))),
                "{junk} should be malformed"
            );
        }
        // Correctly signed, but the claims are not a JSON object.
        let garbage = sign_hs256_raw(SECRET, b"not json");
        assert!(matches!(
            v.verify(&garbage).await,
            Err(Rejection::Malformed(_))
        ));
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(
            v.verify(&huge).await,
            Err(Rejection::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn wrong_issuer_is_refused() {
        let config = AuthConfig {
            issuer: Some("https://idp.example".into()),
            ..AuthConfig::hs256(SECRET)
        };
        let v = Verifier::new(&config).unwrap();
        let mut c = claims("bob");
        c["iss"] = "https://evil.example".into();
        assert_eq!(
            v.verify(&sign_hs256(SECRET, &c)).await,
            Err(Rejection::WrongIssuer)
        );
        c["iss"] = "https://idp.example".into();
        assert!(v.verify(&sign_hs256(SECRET, &c)).await.is_ok());
    }

    #[tokio::test]
    async fn wrong_or_missing_audience_is_refused_when_configured() {
        let config = AuthConfig {
            audience: Some("courier".into()),
            ..AuthConfig::hs256(SECRET)
        };
        let v = Verifier::new(&config).unwrap();
        let mut c = claims("bob");
        assert_eq!(
            v.verify(&sign_hs256(SECRET, &c)).await,
            Err(Rejection::MissingClaim("aud"))
        );
        c["aud"] = "other-app".into();
        assert_eq!(
            v.verify(&sign_hs256(SECRET, &c)).await,
            Err(Rejection::WrongAudience)
        );
        c["aud"] = json!(["other-app", "courier"]);
        assert!(v.verify(&sign_hs256(SECRET, &c)).await.is_ok());
    }

    #[tokio::test]
    async fn audience_is_not_checked_when_not_configured() {
        let mut c = claims("bob");
        c["aud"] = "whatever".into();
        assert!(hs_verifier().verify(&sign_hs256(SECRET, &c)).await.is_ok());
    }

    #[tokio::test]
    async fn token_not_valid_yet_is_refused() {
        let mut c = claims("bob");
        c["nbf"] = now_plus(3600).into();
        assert_eq!(
            hs_verifier().verify(&sign_hs256(SECRET, &c)).await,
            Err(Rejection::NotYetValid)
        );
        c["nbf"] = now_plus(-5).into();
        assert!(hs_verifier().verify(&sign_hs256(SECRET, &c)).await.is_ok());
    }

    #[tokio::test]
    async fn missing_or_invalid_sub_is_refused() {
        let v = hs_verifier();
        let no_sub = sign_hs256(SECRET, &json!({"exp": now_plus(60)}));
        assert_eq!(v.verify(&no_sub).await, Err(Rejection::MissingClaim("sub")));
        let numeric = sign_hs256(SECRET, &json!({"sub": 42, "exp": now_plus(60)}));
        assert_eq!(
            v.verify(&numeric).await,
            Err(Rejection::MissingClaim("sub"))
        );
        let bad = sign_hs256(SECRET, &json!({"sub": "bob#admin", "exp": now_plus(60)}));
        assert!(matches!(
            v.verify(&bad).await,
            Err(Rejection::InvalidSubject(_))
        ));
        let empty = sign_hs256(SECRET, &json!({"sub": "", "exp": now_plus(60)}));
        assert!(matches!(
            v.verify(&empty).await,
            Err(Rejection::InvalidSubject(_))
        ));
    }

    #[tokio::test]
    async fn rs256_token_is_refused_when_only_a_secret_is_configured() {
        let key = RsaKey::generate("k1");
        assert_eq!(
            hs_verifier().verify(&key.sign(&claims("bob"))).await,
            Err(Rejection::AlgorithmNotAllowed(AlgName::Known(
                Algorithm::RS256
            )))
        );
    }

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
    async fn hs256_signed_with_the_rsa_public_key_is_refused() {
        let key = RsaKey::generate("k1");
        let server = JwksServer::start(jwks_json(&[&key])).await;
        let attack = sign_hs256(key.public_pem.as_bytes(), &claims("bob"));

        let jwks_only = Verifier::new(&jwks_config(&server.url)).unwrap();
        assert_eq!(
            jwks_only.verify(&attack).await,
            Err(Rejection::AlgorithmNotAllowed(AlgName::Known(
                Algorithm::HS256
            )))
        );
        // With a secret configured too, HS256 is checked against the secret
        // only, never against a JWKS key.
        let both = Verifier::new(&AuthConfig {
            hs256_secret: Some(Secret::new(SECRET)),
            ..jwks_config(&server.url)
        })
        .unwrap();
        assert_eq!(both.verify(&attack).await, Err(Rejection::BadSignature));
        assert_eq!(server.requests(), 0, "the attack never reaches the JWKS");
    }

    #[tokio::test]
    async fn rs256_signed_by_a_key_outside_the_jwks_is_refused() {
        let published = RsaKey::generate("k1");
        let impostor = RsaKey::generate("k1");
        let server = JwksServer::start(jwks_json(&[&published])).await;
        let v = Verifier::new(&jwks_config(&server.url)).unwrap();
        assert_eq!(
            v.verify(&impostor.sign(&claims("bob"))).await,
            Err(Rejection::BadSignature)
        );
    }

    #[tokio::test]
    async fn rs256_without_kid_is_refused_without_fetching() {
        let key = RsaKey::generate("k1");
        let server = JwksServer::start(jwks_json(&[&key])).await;
        let v = Verifier::new(&jwks_config(&server.url)).unwrap();
        assert_eq!(
            v.verify(&key.sign_with_kid(None, &claims("bob"))).await,
            Err(Rejection::MissingKeyId)
        );
        assert_eq!(server.requests(), 0);
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

        // The IdP rotates in k2; the first k2 token makes the cache refresh
        // at once (the last fetch is old enough), and it verifies.
        server.set_body(jwks_json(&[&k1, &k2]));
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(
            v.verify(&k2.sign(&claims("bob"))).await.unwrap().as_str(),
            "bob"
        );
        assert_eq!(
            server.requests(),
            2,
            "exactly one refresh for the unknown kid"
        );

        // A flood of random kids right after: refused, and no more fetches.
        for i in 0..50 {
            let kid = format!("random-{i}");
            assert_eq!(
                v.verify(&k1.sign_with_kid(Some(&kid), &claims("bob")))
                    .await,
                Err(Rejection::UnknownKey)
            );
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

    #[test]
    fn config_requires_a_secret_or_a_jwks_url_and_names_both() {
        let e = AuthConfig::from_env(&env(&[("JWT_ISSUER", "x")])).unwrap_err();
        assert_eq!(e, ConfigError::Missing("JWT_SECRET or JWKS_URL"));
        assert!(e.to_string().contains("JWT_SECRET") && e.to_string().contains("JWKS_URL"));
    }

    #[test]
    fn config_reads_every_variable() {
        let c = AuthConfig::from_env(&env(&[
            ("JWT_SECRET", "s3cret"),
            (
                "JWKS_URL",
                "https://cognito-idp.us-east-1.amazonaws.com/pool/.well-known/jwks.json",
            ),
            (
                "JWT_ISSUER",
                "https://cognito-idp.us-east-1.amazonaws.com/pool",
            ),
            ("JWT_AUDIENCE", "client-id"),
            ("JWT_LEEWAY_SECS", "5"),
            (
                "ALLOWED_ORIGINS",
                "https://App.Example.com/, http://localhost:5173",
            ),
        ]))
        .unwrap();
        assert_eq!(c.hs256_secret, Some(Secret::new("s3cret")));
        assert!(c.jwks.is_some());
        assert_eq!(
            c.issuer.as_deref(),
            Some("https://cognito-idp.us-east-1.amazonaws.com/pool")
        );
        assert_eq!(c.audience.as_deref(), Some("client-id"));
        assert_eq!(c.leeway, Duration::from_secs(5));
        let origins = c.allowed_origins.clone().unwrap();
        assert!(origins.allows("https://app.example.com"));
        assert!(origins.allows("HTTP://LOCALHOST:5173/"));
        assert!(!origins.allows("https://evil.example.com"));
        assert!(!origins.allows("https://app.example.com.evil.net"));
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "Debug never shows the secret"
        );
        let d = AuthConfig::from_env(&env(&[("JWT_SECRET", "s")])).unwrap();
        assert_eq!(d.leeway, DEFAULT_LEEWAY);
        assert_eq!(d.allowed_origins, None);
    }

    #[test]
    fn config_refuses_bad_values_by_name() {
        for (pairs, name) in [
            (
                &[("JWKS_URL", "http://idp.example.com/jwks.json")][..],
                "JWKS_URL",
            ),
            (&[("JWKS_URL", "not a url")][..], "JWKS_URL"),
            (
                &[("JWKS_URL", "ftp://idp.example.com/jwks.json")][..],
                "JWKS_URL",
            ),
            (
                &[("JWT_SECRET", "s"), ("JWT_LEEWAY_SECS", "soon")][..],
                "JWT_LEEWAY_SECS",
            ),
            (
                &[("JWT_SECRET", "s"), ("JWT_LEEWAY_SECS", "86400")][..],
                "JWT_LEEWAY_SECS",
            ),
            (
                &[("JWT_SECRET", "s"), ("ALLOWED_ORIGINS", "app.example.com")][..],
                "ALLOWED_ORIGINS",
            ),
            (
                &[
                    ("JWT_SECRET", "s"),
                    ("ALLOWED_ORIGINS", "https://a.com/path"),
                ][..],
                "ALLOWED_ORIGINS",
            ),
            (
                &[("JWT_SECRET", "s"), ("ALLOWED_ORIGINS", " , ")][..],
                "ALLOWED_ORIGINS",
            ),
        ] {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let e = AuthConfig::from_env(&Env(|k: &str| {
                pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
            }))
            .unwrap_err();
            assert!(
                matches!(e, ConfigError::Invalid { name: n, .. } if n == name),
                "{pairs:?} gave {e:?}"
            );
        }
        assert!(
            JwksConfig::new("http://127.0.0.1:8080/jwks.json").is_ok(),
            "loopback http is fine"
        );
    }

    #[test]
    fn rejection_text_never_echoes_token_content() {
        let token_bits = ["eyJ", "random-kid-value", "bob"];
        for r in [
            Rejection::AlgorithmNotAllowed(AlgName::Unrecognized),
            Rejection::UnknownKey,
            Rejection::Malformed("bad base64url"),
            Rejection::BadSignature,
        ] {
            let text = r.to_string();
            assert!(token_bits.iter().all(|b| !text.contains(b)), "{text}");
        }
    }
}
