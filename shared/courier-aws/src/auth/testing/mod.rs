//! Test kit shared with other crates' tests (feature `test-util`): an RSA
//! key that signs RS256 tokens and publishes its JWK, token helpers, and a
//! loopback JWKS server that counts the requests it serves.

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

use super::mint::unix_now;

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
