//! Bearer tokens: `<claims>.<signature>`, both base64url without padding, the
//! signature an HMAC-SHA256 over the encoded claims with `HB_AUTH_SECRET`.
//! Claims carry the subject, the role and the expiry (epoch seconds).
//!
//! With no secret the services run open (loopback only) and every caller is
//! treated as fully trusted; [`Authenticator::authenticate`] returns `None` then.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use std::str::FromStr;

type HmacSha256 = Hmac<Sha256>;

/// What a token lets its bearer do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything, including catalog writes.
    Admin,
    /// Royalty and traffic rows of this license holder only.
    LicenseHolder(String),
    /// Impression rows of this advertiser only.
    Advertiser(String),
    /// User progress and sessions.
    App,
    /// Heartbeats whose `device_id` is this device.
    Device(String),
    /// A trusted edge sending heartbeats for any device.
    Gateway,
}

impl Role {
    /// Builds a role from `--role` and an optional `--subject`: `license_holder`
    /// with subject `L1` is the same as `license_holder:L1`.
    pub fn from_parts(role: &str, subject: Option<&str>) -> Result<Role, AuthError> {
        match (role.contains(':'), subject) {
            (false, Some(id)) if matches!(role, "license_holder" | "advertiser" | "device") => {
                format!("{role}:{id}").parse()
            }
            _ => role.parse(),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Admin => write!(f, "admin"),
            Role::LicenseHolder(id) => write!(f, "license_holder:{id}"),
            Role::Advertiser(id) => write!(f, "advertiser:{id}"),
            Role::App => write!(f, "app"),
            Role::Device(id) => write!(f, "device:{id}"),
            Role::Gateway => write!(f, "gateway"),
        }
    }
}

impl FromStr for Role {
    type Err = AuthError;

    fn from_str(text: &str) -> Result<Role, AuthError> {
        let (kind, id) = match text.split_once(':') {
            Some((kind, id)) => (kind, Some(id)),
            None => (text, None),
        };
        let non_empty = |id: Option<&str>| match id {
            Some(id) if !id.is_empty() => Ok(id.to_string()),
            _ => Err(AuthError::UnknownRole(text.to_string())),
        };
        match (kind, id) {
            ("admin", None) => Ok(Role::Admin),
            ("app", None) => Ok(Role::App),
            ("gateway", None) => Ok(Role::Gateway),
            ("license_holder", id) => Ok(Role::LicenseHolder(non_empty(id)?)),
            ("advertiser", id) => Ok(Role::Advertiser(non_empty(id)?)),
            ("device", id) => Ok(Role::Device(non_empty(id)?)),
            _ => Err(AuthError::UnknownRole(text.to_string())),
        }
    }
}

/// The signed part of a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    /// Expiry, epoch seconds.
    pub exp: i64,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub role: Role,
}

/// Why a token was refused. Every variant means 401 / `UNAUTHENTICATED`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed bearer token")]
    Malformed,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("unknown role {0:?}")]
    UnknownRole(String),
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenKey {
    secret: Vec<u8>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    pub fn new(secret: &str) -> TokenKey {
        TokenKey {
            secret: secret.as_bytes().to_vec(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.secret).expect("hmac accepts keys of any length")
    }

    /// Mints a token for `role`, valid until `exp` (epoch seconds).
    pub fn mint(&self, subject: &str, role: &Role, exp: i64) -> String {
        let claims = Claims {
            sub: subject.to_string(),
            role: role.to_string(),
            exp,
        };
        let json = serde_json::to_vec(&claims).expect("claims serialize");
        let encoded = URL_SAFE_NO_PAD.encode(json);
        let mut mac = self.mac();
        mac.update(encoded.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{encoded}.{signature}")
    }

    /// Verifies the signature (constant time) and the expiry against `now_s`.
    pub fn verify(&self, token: &str, now_s: i64) -> Result<Principal, AuthError> {
        let (encoded, signature) = token.split_once('.').ok_or(AuthError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthError::Malformed)?;
        let mut mac = self.mac();
        mac.update(encoded.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| AuthError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
        if claims.exp <= now_s {
            return Err(AuthError::Expired);
        }
        Ok(Principal {
            subject: claims.sub,
            role: claims.role.parse()?,
        })
    }
}

/// How a service checks callers: open (no secret, loopback only) or HMAC tokens.
#[derive(Clone, Debug)]
pub enum Authenticator {
    Open,
    Hmac(TokenKey),
}

impl Authenticator {
    /// From `HB_AUTH_SECRET`: empty or absent means open.
    pub fn from_secret(secret: Option<&str>) -> Authenticator {
        match secret {
            Some(s) if !s.is_empty() => Authenticator::Hmac(TokenKey::new(s)),
            _ => Authenticator::Open,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Authenticator::Open)
    }

    /// Checks an `authorization` header value. `Ok(None)` in open mode.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Option<Principal>, AuthError> {
        let key = match self {
            Authenticator::Open => return Ok(None),
            Authenticator::Hmac(key) => key,
        };
        let header = header.ok_or(AuthError::Missing)?.trim();
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(AuthError::Malformed)?
            .trim();
        key.verify(token, chrono::Utc::now().timestamp()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn a_minted_token_verifies_with_its_role() {
        let key = TokenKey::new("s3cret");
        let token = key.mint("lh-1", &Role::LicenseHolder("lh-1".into()), NOW + 60);
        let principal = key.verify(&token, NOW).unwrap();
        assert_eq!(principal.role, Role::LicenseHolder("lh-1".into()));
        assert_eq!(principal.subject, "lh-1");
    }

    #[test]
    fn an_expired_token_is_refused() {
        let key = TokenKey::new("s3cret");
        let token = key.mint("a", &Role::Admin, NOW);
        assert_eq!(key.verify(&token, NOW), Err(AuthError::Expired));
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let key = TokenKey::new("s3cret");
        let token = key.mint("a", &Role::App, NOW + 60);
        let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"a","role":"admin","exp":9999999999}"#);
        let signature = token.split_once('.').unwrap().1;
        assert_eq!(
            key.verify(&format!("{forged}.{signature}"), NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            TokenKey::new("other").verify(&token, NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(key.verify("nodot", NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn roles_parse_and_print_alike() {
        for text in [
            "admin",
            "app",
            "gateway",
            "license_holder:L",
            "advertiser:A",
            "device:d-1",
        ] {
            assert_eq!(text.parse::<Role>().unwrap().to_string(), text);
        }
        assert!("license_holder".parse::<Role>().is_err());
        assert!("root".parse::<Role>().is_err());
        assert_eq!(
            Role::from_parts("advertiser", Some("A")).unwrap(),
            Role::Advertiser("A".into())
        );
    }

    #[test]
    fn the_header_needs_the_bearer_scheme() {
        let key = TokenKey::new("k");
        let auth = Authenticator::Hmac(key.clone());
        let token = key.mint("g", &Role::Gateway, i64::MAX);
        assert!(auth
            .authenticate(Some(&format!("Bearer {token}")))
            .unwrap()
            .is_some());
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert_eq!(auth.authenticate(Some(&token)), Err(AuthError::Malformed));
        assert_eq!(Authenticator::Open.authenticate(None), Ok(None));
    }
}
