//! Bearer-token authentication: the token's SHA-256 is compared, in constant time, with every
//! configured client's hash. The token itself is never stored nor logged.

use std::sync::Arc;

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{header, request::Parts},
    middleware::Next,
    response::Response,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AppState, error::ApiError};
use crate::settings::{ClientSettings, Scope};

/// An authenticated caller, put in the request's extensions by [`require_token`].
#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    hash: [u8; 32],
    pub scopes: Vec<Scope>,
    /// Publish allow-list; `None` means any exchange of the topology.
    pub exchanges: Option<Vec<String>>,
}

impl Client {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }

    /// 403 unless the client holds `scope` (admin holds them all).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "Client `{}` lacks the `{scope}` scope.",
                self.name
            )))
        }
    }

    /// A tag of the token's hash, kept in console sessions: a new token ends the old sessions.
    pub fn token_tag(&self) -> String {
        hex::encode(&self.hash[..8])
    }

    pub fn may_publish_to(&self, exchange: &str) -> bool {
        self.exchanges
            .as_ref()
            .is_none_or(|list| list.iter().any(|e| e == exchange))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Clients(Vec<Arc<Client>>);

impl Clients {
    pub fn from_settings(clients: &[ClientSettings]) -> Self {
        Self(
            clients
                .iter()
                .map(|c| {
                    let mut hash = [0u8; 32];
                    // Settings::check guarantees 64 hex digits.
                    hex::decode_to_slice(&c.token_sha256, &mut hash).expect("token_sha256 checked at load");
                    Arc::new(Client {
                        name: c.name.clone(),
                        hash,
                        scopes: c.scopes.clone(),
                        exchanges: c.exchanges.clone(),
                    })
                })
                .collect(),
        )
    }

    /// The client of a console session: same name, same token tag.
    pub fn by_session(&self, name: &str, tag: &str) -> Option<Arc<Client>> {
        self.0.iter().find(|c| c.name == name && c.token_tag() == tag).cloned()
    }

    /// The client owning `token`. Every hash is compared, so timing says nothing about which.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Client>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for client in &self.0 {
            if bool::from(client.hash.ct_eq(&digest)) {
                found = Some(client.clone());
            }
        }
        found
    }
}

/// Middleware for every protected route: 401 without a known bearer token.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 §11.1); spaces around the token are not part of it.
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    let client = state.clients.authenticate(token).ok_or_else(ApiError::unauthorized)?;
    request.extensions_mut().insert(client);
    Ok(next.run(request).await)
}

/// Extractor for handlers behind [`require_token`].
pub struct Caller(pub Arc<Client>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Arc<Client>>()
            .cloned()
            .map(Caller)
            .ok_or_else(ApiError::unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients() -> Clients {
        let hash = hex::encode(Sha256::digest(b"secret-token"));
        Clients::from_settings(&[ClientSettings {
            name: "orders-service".into(),
            token_sha256: hash,
            scopes: vec![Scope::Publish],
            exchanges: Some(vec!["orders_exchange".into()]),
        }])
    }

    #[test]
    fn authenticates_by_hash_only() {
        let clients = clients();
        let client = clients.authenticate("secret-token").expect("known token");
        assert_eq!(client.name, "orders-service");
        assert!(clients.authenticate("secret-tokem").is_none());
        assert!(clients.authenticate("").is_none());
    }

    #[test]
    fn scopes_and_allow_list() {
        let client = clients().authenticate("secret-token").unwrap();
        assert!(client.require(Scope::Publish).is_ok());
        assert_eq!(client.require(Scope::Read).unwrap_err().status(), 403);
        assert!(client.may_publish_to("orders_exchange"));
        assert!(!client.may_publish_to("auth_exchange"));
    }
}
