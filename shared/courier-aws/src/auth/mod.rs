//! Token verification for the `$connect` authorizer (docs/protocol.md,
//! Connecting: what the authorizer checks and the handshake outcomes).
//!
//! A client proves who it is with a JWT in `?token=`; its `sub` (or the claim
//! `USER_ID_CLAIM` names) becomes the
//! [`UserId`](courier_core::domain::UserId) every later route trusts. Two
//! kinds of key, each pinned to one algorithm so a token can never choose how
//! it is checked:
//!
//! - **HS256 with `JWT_SECRET`**, for local runs and non-production stages.
//! - **RS256 with a JWKS** (`JWKS_URL`, Cognito or any OIDC provider), the key
//!   chosen by the token's `kid`.
//!
//! # Layout
//!
//! One job per file, so a change to how keys are fetched cannot quietly
//! change what a token must prove, and a reviewer of either reads only that:
//!
//! - `config.rs`: what the environment configures ([`AuthConfig`],
//!   [`JwksConfig`], [`OriginAllowlist`], [`Secret`]) and its validation.
//!   Pure data; no I/O.
//! - `verify.rs`: the rules a token must pass ([`Verifier`]) and every typed
//!   refusal ([`Rejection`]). The only file that decides "accepted".
//! - `jwks.rs`: fetching and caching the RS256 keys. It answers "the key for
//!   this `kid`, or why there is none" and knows nothing of claims.
//! - `mint.rs`: issuing HS256 tokens, for local runs, tools and tests. Kept
//!   apart from verification so nothing on the verify path can sign.
//! - [`testing`] (tests and feature `test-util`): keys, tokens and a JWKS
//!   endpoint for tests; its [`testing::http`] is the one loopback HTTP
//!   server every test in the workspace uses to stand in for a remote (an
//!   IdP here, AWS endpoints in `courier-tests`).
//!
//! The submodules are private and their public items re-exported here, so
//! the paths callers use (`courier_aws::auth::Verifier`, …) do not depend on
//! this layout.

mod config;
mod jwks;
mod mint;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
mod verify;

pub use config::{
    AuthConfig, DEFAULT_LEEWAY, DEFAULT_USER_ID_CLAIM, JwksConfig, OriginAllowlist, Secret,
};
pub use mint::{mint_hs256, sign_hs256};
pub use verify::{AlgName, MAX_TOKEN_BYTES, Rejection, Verifier, VerifierError};

/// Shared by the unit tests of the submodules.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod fixtures {
    use super::{AuthConfig, JwksConfig, Verifier};

    pub const SECRET: &[u8] = b"unit-test-secret";

    pub fn hs_verifier() -> Verifier {
        Verifier::new(&AuthConfig::hs256(SECRET)).unwrap()
    }

    /// RS256 only, from the JWKS at `url`, defaults for the rest.
    pub fn jwks_config(url: &str) -> AuthConfig {
        AuthConfig {
            hs256_secret: None,
            jwks: Some(JwksConfig::new(url).unwrap()),
            ..AuthConfig::hs256(Vec::new())
        }
    }
}
