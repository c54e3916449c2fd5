//! Reading a JSON request body ourselves, so every failure gets the contract's answer: 413
//! `payload_too_large`, 415 `unsupported_media_type`, 400 `invalid_json`, 408 `request_timeout`
//! for a body that stalled (never axum's text).

use axum::{
    body::Bytes,
    extract::rejection::BytesRejection,
    http::{HeaderMap, StatusCode, header},
};
use serde_json::Value;

use super::{
    error::{ApiError, ErrorCode},
    server::BodyTimedOut,
};

pub fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Value, ApiError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let essence = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "Send the body as application/json.",
            ));
        }
    }
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else if let Some(timed_out) = BodyTimedOut::find(&rejection) {
            ApiError::from(timed_out)
        } else {
            ApiError::new(ErrorCode::InvalidBody, "The request body could not be read.")
        }
    })?;
    if bytes.len() > limit {
        return Err(too_large(limit));
    }
    serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::new(ErrorCode::InvalidJson, format!("The body is not valid JSON: {err}.")))
}

pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(ErrorCode::PayloadTooLarge, format!("The body exceeds {limit} bytes."))
}
