//! Issuing HS256 tokens: for local runs, the local gateway's token command,
//! the bench and tests. Production tokens come from the IdP; nothing on the
//! verify path calls this file, so the authorizer holds no signing code it
//! could misuse.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use courier_core::domain::UserId;

pub(super) fn unix_now() -> u64 {
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

pub(super) fn sign_hs256_raw(secret: &[u8], payload: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(payload);
    let signing_input = format!("{header}.{payload}");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::fixtures::{SECRET, hs_verifier};
    use super::super::{AuthConfig, Rejection, Verifier};
    use super::*;

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
}
