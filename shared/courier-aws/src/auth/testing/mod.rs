//! The test kit, shared with other crates' tests through feature
//! `test-util`: an RSA key that signs RS256 tokens and publishes its JWK,
//! token helpers, and [`JwksServer`], an IdP's JWKS endpoint.
//!
//! [`http`] is the workspace's one loopback HTTP server. It lives here
//! because the JWKS tests needed it first; `courier-tests` uses it for every
//! AWS endpoint it fakes, so a fix to how it reads requests or closes
//! connections reaches every test at once. Keys are generated per run, so no
//! private key is ever committed.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use self::http::{Reply, StubServer};
use super::mint::unix_now;

pub mod http;

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
        let encoding = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes())
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

/// An IdP's JWKS endpoint: a [`StubServer`] answering every request with
/// the current key set and status, which a test changes to rotate keys or
/// take the IdP down.
pub struct JwksServer {
    pub url: String,
    reply: Arc<Mutex<Reply>>,
    server: StubServer,
}

impl JwksServer {
    /// Serves `body` (a JWK set, or garbage) with status 200.
    pub async fn start(body: String) -> Self {
        Self::serving(Reply::json(200, &body)).await
    }

    /// Accepts requests and never answers: a black-holed IdP.
    pub async fn start_silent() -> Self {
        Self::serving(Reply::hang()).await
    }

    async fn serving(reply: Reply) -> Self {
        let reply = Arc::new(Mutex::new(reply));
        let current = reply.clone();
        let server = StubServer::start(move |_| lock(&current).clone()).await;
        Self {
            url: format!("{}/.well-known/jwks.json", server.url()),
            reply,
            server,
        }
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.server.hits()
    }

    /// What later requests get (a key rotation).
    pub fn set_body(&self, body: String) {
        lock(&self.reply).body = body.into_bytes();
    }

    /// The status later requests get (an IdP answering errors).
    pub fn set_status(&self, status: u16) {
        lock(&self.reply).status = status;
    }
}

fn lock(reply: &Mutex<Reply>) -> MutexGuard<'_, Reply> {
    reply.lock().unwrap_or_else(PoisonError::into_inner)
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
