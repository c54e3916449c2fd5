//! Console sessions without a server-side store: the cookie holds the client's name, the login's
//! expiry and a tag of the client's token hash, signed with HMAC-SHA-256 under
//! `console.session_key`. Any replica with the same key accepts it; rotating a client's token or
//! removing the client ends its sessions (the tag or the name no longer matches).

use std::sync::Arc;

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::{
    http::{AppState, auth::Client},
    settings::ConsoleSettings,
};

pub const SESSION_COOKIE: &str = "mb_session";
pub const FLASH_COOKIE: &str = "mb_flash";

/// What a signed value is for, in the MAC: a flash cookie never passes for a session.
#[derive(Clone, Copy)]
pub enum Purpose {
    Session,
    Flash,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Session => b"session\n",
            Self::Flash => b"flash\n",
        }
    }
}

/// The signing key and cookie attributes.
pub struct Sessions {
    key: Vec<u8>,
    ttl_seconds: i64,
    secure: bool,
}

impl Sessions {
    pub fn from_settings(settings: &ConsoleSettings) -> Self {
        let configured = settings.session_key.expose().as_bytes();
        let key = if configured.is_empty() {
            tracing::warn!(
                "console.session_key is empty: console sessions are signed with a random key and valid on this process only, until it restarts."
            );
            [uuid::Uuid::new_v4().into_bytes(), uuid::Uuid::new_v4().into_bytes()].concat()
        } else {
            configured.to_vec()
        };
        Self {
            key,
            ttl_seconds: i64::try_from(settings.session_ttl.as_secs()).unwrap_or(i64::MAX),
            secure: settings.cookie_secure,
        }
    }

    fn mac(&self, purpose: Purpose, text: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(purpose.label());
        mac.update(text.as_bytes());
        mac
    }

    /// `base64url(text).base64url(mac)`.
    pub fn seal(&self, purpose: Purpose, text: &str) -> String {
        let tag = self.mac(purpose, text).finalize().into_bytes();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(text), URL_SAFE_NO_PAD.encode(tag))
    }

    /// The text of a value sealed for `purpose` with this key, else `None`.
    pub fn open(&self, purpose: Purpose, sealed: &str) -> Option<String> {
        let (text, tag) = sealed.split_once('.')?;
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(text).ok()?).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // verify_slice compares in constant time.
        self.mac(purpose, &text).verify_slice(&tag).ok()?;
        Some(text)
    }

    fn cookie(&self, name: &str, value: &str, max_age: i64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
    }

    /// The `Set-Cookie` value of a new session for `client`.
    pub fn login_cookie(&self, client: &Client) -> String {
        let expires = Utc::now().timestamp().saturating_add(self.ttl_seconds);
        let text = format!("v1|{expires}|{}|{}", client.token_tag(), client.name);
        self.cookie(SESSION_COOKIE, &self.seal(Purpose::Session, &text), self.ttl_seconds)
    }

    pub fn logout_cookie(&self) -> String {
        self.cookie(SESSION_COOKIE, "", 0)
    }

    /// A one-line message for the next page (POST-redirect-GET).
    pub fn flash_cookie(&self, message: &str) -> String {
        self.cookie(FLASH_COOKIE, &self.seal(Purpose::Flash, message), 60)
    }

    pub fn clear_flash_cookie(&self) -> String {
        self.cookie(FLASH_COOKIE, "", 0)
    }

    /// The client of a valid, unexpired session cookie in `headers`.
    pub fn operator(&self, state: &AppState, headers: &HeaderMap) -> Option<Arc<Client>> {
        let text = self.open(Purpose::Session, cookie(headers, SESSION_COOKIE)?)?;
        let mut parts = text.splitn(4, '|');
        let (Some("v1"), Some(expires), Some(tag), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if expires.parse::<i64>().ok()? <= Utc::now().timestamp() {
            return None;
        }
        state.clients.by_session(name, tag)
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The logged-in operator; without a valid session, pages redirect to the login form.
pub struct Operator(pub Arc<Client>);

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        state
            .sessions
            .operator(state, &parts.headers)
            .map(Operator)
            .ok_or_else(|| Redirect::to("/console/login").into_response())
    }
}

/// The message left by the previous action, if any (cleared by the console's middleware).
pub struct Flash(pub Option<String>);

impl FromRequestParts<AppState> for Flash {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Flash(
            cookie(&parts.headers, FLASH_COOKIE).and_then(|v| state.sessions.open(Purpose::Flash, v)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::settings::Secret;

    fn sessions(key: &str) -> Sessions {
        Sessions::from_settings(&ConsoleSettings {
            session_key: Secret::new(key),
            session_ttl: Duration::from_secs(60),
            cookie_secure: true,
        })
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_purpose() {
        let a = sessions(&"a".repeat(32));
        let sealed = a.seal(Purpose::Session, "v1|1|tag|orders-ops");
        assert_eq!(
            a.open(Purpose::Session, &sealed).as_deref(),
            Some("v1|1|tag|orders-ops")
        );
        assert_eq!(a.open(Purpose::Flash, &sealed), None, "a session is not a flash");
        assert_eq!(sessions(&"b".repeat(32)).open(Purpose::Session, &sealed), None);
        // Any change to the text or the tag breaks the seal.
        let (text, tag) = sealed.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode("v1|1|tag|admin");
        assert_eq!(a.open(Purpose::Session, &format!("{forged}.{tag}")), None);
        assert_eq!(a.open(Purpose::Session, &format!("{text}.{}", &tag[1..])), None);
        assert_eq!(a.open(Purpose::Session, "garbage"), None);
    }

    #[test]
    fn cookies_are_http_only_strict_and_scoped_to_the_console() {
        let cookie = sessions(&"a".repeat(32)).flash_cookie("Retried 3 messages");
        assert!(cookie.starts_with("mb_flash="), "{cookie}");
        for attribute in ["Path=/console", "HttpOnly", "SameSite=Strict", "Max-Age=60", "Secure"] {
            assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
        }
    }

    #[test]
    fn cookie_lookup_reads_every_header_and_pair() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "a=1; mb_flash=x.y".parse().unwrap());
        headers.append(header::COOKIE, "mb_session=s.t".parse().unwrap());
        assert_eq!(cookie(&headers, "mb_flash"), Some("x.y"));
        assert_eq!(cookie(&headers, "mb_session"), Some("s.t"));
        assert_eq!(cookie(&headers, "mb"), None);
    }
}
