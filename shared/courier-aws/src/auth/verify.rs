//! The rules a token must pass, and every typed refusal.
//!
//! The header's `alg` only selects which of the configured keys to try; a
//! token whose `alg` has no configured key (`none`, HS256 when only a JWKS is
//! set — the "sign with the public key" attack —, RS256 without a JWKS,
//! anything else) is refused before any signature code runs. `exp` is always
//! required, `nbf` checked when present, `iss`/`aud` required and checked when
//! configured, and the user-id claim (`sub` unless `USER_ID_CLAIM` names
//! another, e.g. `cognito:username`) must be a string that parses as a
//! [`UserId`].
//!
//! Every refusal is a typed [`Rejection`] whose text never contains token
//! content (not even the `alg` or `kid` strings an attacker wrote), so it can
//! be logged as is. Where the RS256 key comes from is `jwks.rs`'s business;
//! this file only asks it for the key of a `kid`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use courier_core::domain::{InvalidValue, UserId};

use super::config::AuthConfig;
use super::jwks::Jwks;

/// Longest token accepted. API Gateway caps the whole request line far
/// above any real JWT; refusing early keeps base64 and JSON work bounded.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

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
    /// The configured user-id claim is absent or not a string. Holds the
    /// claim's name, which comes from the configuration, never the token.
    #[error("user-id claim {0} missing or not a string")]
    MissingUserIdClaim(String),
    /// The user-id claim is a string but not a valid [`UserId`]; the value
    /// itself is not kept.
    #[error("user-id claim {claim} is not a valid user id ({reason})")]
    InvalidUserId { claim: String, reason: InvalidValue },
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
    /// The claim whose value is the user id.
    user_id_claim: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.is_some())
            .field("jwks", &self.rs256.as_ref().map(|(j, _)| j.url()))
            .field("user_id_claim", &self.user_id_claim)
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
        Ok(Self {
            hs256,
            rs256,
            user_id_claim: config.user_id_claim.clone(),
        })
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
        match claims.get(&self.user_id_claim) {
            Some(Value::String(s)) => UserId::parse(s).map_err(|reason| Rejection::InvalidUserId {
                claim: self.user_id_claim.clone(),
                reason,
            }),
            _ => Err(Rejection::MissingUserIdClaim(self.user_id_claim.clone())),
        }
    }
}

fn validation(config: &AuthConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    // The user-id claim is checked by `verify` itself: it may be one
    // jsonwebtoken does not know (`cognito:username`), and a `sub` that is
    // not the user-id claim must not refuse a token.
    let mut required = vec!["exp"];
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

/// Every claim, so the user-id claim can be any of them.
type Claims = serde_json::Map<String, Value>;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::super::fixtures::{SECRET, hs_verifier, jwks_config};
    use super::super::mint::sign_hs256_raw;
    use super::super::testing::*;
    use super::super::{Secret, sign_hs256};
    use super::*;

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
        let missing = Err(Rejection::MissingUserIdClaim("sub".into()));
        let no_sub = sign_hs256(SECRET, &json!({"exp": now_plus(60)}));
        assert_eq!(v.verify(&no_sub).await, missing);
        let numeric = sign_hs256(SECRET, &json!({"sub": 42, "exp": now_plus(60)}));
        assert_eq!(v.verify(&numeric).await, missing);
        let bad = sign_hs256(SECRET, &json!({"sub": "bob#admin", "exp": now_plus(60)}));
        assert!(matches!(
            v.verify(&bad).await,
            Err(Rejection::InvalidUserId { claim, .. }) if claim == "sub"
        ));
        let empty = sign_hs256(SECRET, &json!({"sub": "", "exp": now_plus(60)}));
        assert!(matches!(
            v.verify(&empty).await,
            Err(Rejection::InvalidUserId { .. })
        ));
    }

    fn cognito_verifier() -> Verifier {
        Verifier::new(&AuthConfig {
            user_id_claim: "cognito:username".into(),
            ..AuthConfig::hs256(SECRET)
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_custom_user_id_claim_names_the_user_and_sub_is_ignored() {
        let v = cognito_verifier();
        // Cognito's `sub` is a UUID; the user id is the username.
        let token = sign_hs256(
            SECRET,
            &json!({
                "sub": "8f2c1a7e-0000-4000-8000-000000000001",
                "cognito:username": "alice",
                "exp": now_plus(60)
            }),
        );
        assert_eq!(v.verify(&token).await, Ok(UserId::parse("alice").unwrap()));
        // Neither a missing nor a numeric `sub` matters when it is not the claim.
        let no_sub = sign_hs256(
            SECRET,
            &json!({"cognito:username": "alice", "exp": now_plus(60)}),
        );
        assert_eq!(v.verify(&no_sub).await, Ok(UserId::parse("alice").unwrap()));
        let numeric_sub = sign_hs256(
            SECRET,
            &json!({"sub": 7, "cognito:username": "alice", "exp": now_plus(60)}),
        );
        assert_eq!(
            v.verify(&numeric_sub).await,
            Ok(UserId::parse("alice").unwrap())
        );
    }

    #[tokio::test]
    async fn a_custom_user_id_claim_missing_or_invalid_is_refused_by_its_name() {
        let v = cognito_verifier();
        let missing = Err(Rejection::MissingUserIdClaim("cognito:username".into()));
        // A valid `sub` does not stand in for the configured claim.
        let only_sub = sign_hs256(SECRET, &claims("bob"));
        assert_eq!(v.verify(&only_sub).await, missing);
        let not_a_string = sign_hs256(
            SECRET,
            &json!({"cognito:username": ["alice"], "exp": now_plus(60)}),
        );
        assert_eq!(v.verify(&not_a_string).await, missing);
        let invalid = sign_hs256(
            SECRET,
            &json!({"cognito:username": "alice smith", "exp": now_plus(60)}),
        );
        let refusal = v.verify(&invalid).await.unwrap_err();
        assert!(
            matches!(&refusal, Rejection::InvalidUserId { claim, .. } if claim == "cognito:username"),
            "{refusal:?}"
        );
        assert!(
            !refusal.to_string().contains("alice"),
            "the claim's value is not in the logged reason: {refusal}"
        );
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
