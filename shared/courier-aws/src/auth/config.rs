//! What the environment configures for auth, validated once at start-up.
//!
//! Pure data: nothing here does I/O or looks at a token, so a bad
//! deployment fails at cold start with the variable's name
//! ([`ConfigError`]) rather than on the first `$connect`.

use std::time::Duration;

use courier_core::config::{ConfigError, Env};

/// Default clock-skew allowance for `exp` and `nbf`. Small: the IdP and
/// Lambda both run on NTP-disciplined clocks.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(10);

/// The claim that names the user unless `USER_ID_CLAIM` says otherwise.
pub const DEFAULT_USER_ID_CLAIM: &str = "sub";

/// Longest `USER_ID_CLAIM` accepted: a claim name, not a document.
const MAX_USER_ID_CLAIM_LEN: usize = 256;

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
    /// `USER_ID_CLAIM`: the token claim whose (string) value is the user id;
    /// `sub` by default, `cognito:username` or a custom claim where the
    /// IdP's `sub` is not the id the app knows users by.
    pub user_id_claim: String,
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
            user_id_claim: DEFAULT_USER_ID_CLAIM.to_owned(),
        }
    }

    /// `USER_ID_CLAIM`, or `sub`. Public so the local gateway, which picks
    /// its keys its own way, reads the claim exactly as the authorizer does.
    pub fn user_id_claim_from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
    ) -> Result<String, ConfigError> {
        let Some(claim) = env.optional("USER_ID_CLAIM") else {
            return Ok(DEFAULT_USER_ID_CLAIM.to_owned());
        };
        let invalid = |reason: &str| ConfigError::Invalid {
            name: "USER_ID_CLAIM",
            reason: reason.to_owned(),
        };
        if claim.trim().is_empty() {
            return Err(invalid("must name a claim"));
        }
        if claim.len() > MAX_USER_ID_CLAIM_LEN {
            return Err(invalid("longer than 256 characters"));
        }
        if claim.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("a claim name has no whitespace"));
        }
        Ok(claim)
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
            user_id_claim: Self::user_id_claim_from_env(env)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> Env<impl Fn(&str) -> Option<String>> {
        Env(move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
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
            ("USER_ID_CLAIM", "cognito:username"),
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
        assert_eq!(c.user_id_claim, "cognito:username");
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
        assert_eq!(d.user_id_claim, "sub", "the default claim");
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
            (
                &[("JWT_SECRET", "s"), ("USER_ID_CLAIM", "  ")][..],
                "USER_ID_CLAIM",
            ),
            (
                &[("JWT_SECRET", "s"), ("USER_ID_CLAIM", "cognito: username")][..],
                "USER_ID_CLAIM",
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
}
