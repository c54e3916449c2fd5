//! `ApiError`: every failure of the API maps to a status and the contract's JSON body
//! `{"error": "<code>", "message": "<human text>"}` (+ `"fields"` on 422). Internals never leak.
//!
//! Every error code is an [`ErrorCode`] (listed in the OpenAPI document), and every mapping from
//! a library error (store, publisher, broker calls, failed-message claims) to a response lives here.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering},
};

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tracing::{error, info, warn};

use super::server::BodyTimedOut;
use crate::{
    amqp::{
        calls::CallError,
        publisher::PublishOutcome,
        replies::{Reply, RequestOutcome},
    },
    store::{StoreError, failed_messages::ClaimRefusal},
};

/// The stable, machine-readable codes of the API, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidBody,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    AlreadyResolved,
    RetryInProgress,
    IdempotencyConflict,
    PurgeRefused,
    NotScheduled,
    /// A replay's `expected_count` is no longer the count of what it selects (the answer has the
    /// current `count`).
    CountChanged,
    /// A replay that completed or failed cannot be cancelled.
    ReplayFinished,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    UnknownExchange,
    Unroutable,
    ConfirmationRequired,
    RateLimited,
    QueueFull,
    BrokerUnavailable,
    /// The responder answered a request with its error header (`mb-error`).
    ReplyError,
    /// No reply to a request within its timeout.
    ReplyTimeout,
    DatabaseUnavailable,
    StatsUnavailable,
    /// Edit and retry is turned off (`failed.edit_enabled`).
    EditDisabled,
    /// The message's `data` does not match its event's schema, or names a version it has none of.
    SchemaViolation,
    /// No schema matches the event and `schemas.unknown_events` is `reject`.
    UnknownEvent,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidJson | Self::InvalidBody => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::EditDisabled => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::AlreadyResolved
            | Self::RetryInProgress
            | Self::IdempotencyConflict
            | Self::PurgeRefused
            | Self::NotScheduled
            | Self::CountChanged
            | Self::ReplayFinished => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::ValidationFailed | Self::UnknownExchange | Self::Unroutable => StatusCode::UNPROCESSABLE_ENTITY,
            Self::SchemaViolation | Self::UnknownEvent => StatusCode::UNPROCESSABLE_ENTITY,
            Self::ConfirmationRequired => StatusCode::PRECONDITION_REQUIRED,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::ReplyError => StatusCode::BAD_GATEWAY,
            Self::ReplyTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::QueueFull | Self::BrokerUnavailable | Self::DatabaseUnavailable | Self::StatsUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub fields: Option<BTreeMap<String, String>>,
    /// Seconds, for 429 and 503 answers.
    pub retry_after: Option<u64>,
    /// On 409 `count_changed`: the count now.
    pub count: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable code, e.g. `validation_failed`.
    pub error: ErrorCode,
    pub message: String,
    /// On 422: the offending fields and what is wrong with each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, String>>,
    /// On 409 `count_changed`: how many messages the replay's filter selects now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            fields: None,
            retry_after: None,
            count: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::Unauthorized, "Missing or unknown bearer token.")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// The broker cannot be reached or did not answer: worth retrying in a second.
    pub fn broker_unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BrokerUnavailable, message).with_retry_after(1)
    }

    pub fn validation(fields: BTreeMap<String, String>) -> Self {
        let mut err = Self::new(ErrorCode::ValidationFailed, "The request is not valid; see fields.");
        err.fields = Some(fields);
        err
    }

    /// One bad field.
    pub fn invalid_field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::validation(BTreeMap::from([(field.into(), reason.into())]))
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The error as one item of a batch answer: `{index, status, error, message, fields?}`.
    pub fn to_item(&self, index: usize) -> serde_json::Value {
        let mut item = serde_json::json!({
            "index": index, "status": self.status().as_u16(), "error": self.code, "message": self.message,
        });
        if let Some(fields) = &self.fields {
            item["fields"] = serde_json::json!(fields);
        }
        item
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: self.code,
            message: self.message,
            fields: self.fields,
            count: self.count,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Whether the database was away at the API's last call: an outage is logged once at warn when
/// it starts and once at info when it ends, not at error on every request. One database per
/// process, hence one flag.
static DATABASE_AWAY: AtomicBool = AtomicBool::new(false);

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => {
                if !DATABASE_AWAY.swap(true, Ordering::Relaxed) {
                    warn!(error = %err, "The database is unreachable; the API answers 503 database_unavailable until it is back.");
                }
            }
            _ => error!(error = %err, "Database call failed."),
        }
        ApiError::new(
            ErrorCode::DatabaseUnavailable,
            "The database is unavailable; retry later.",
        )
        .with_retry_after(1)
    }
}

/// A handler's database call: its error as the API's, and the end of an outage noted.
pub fn stored<T>(result: Result<T, StoreError>) -> Result<T, ApiError> {
    if result.is_ok() && DATABASE_AWAY.swap(false, Ordering::Relaxed) {
        info!("The database is reachable again.");
    }
    result.map_err(ApiError::from)
}

impl From<&BodyTimedOut> for ApiError {
    fn from(timed_out: &BodyTimedOut) -> Self {
        let limit = humantime::format_duration(timed_out.0);
        Self::new(
            ErrorCode::RequestTimeout,
            format!("The request body did not arrive within {limit} (app.body_read_timeout)."),
        )
    }
}

impl ApiError {
    /// A refused claim on failed message `id`.
    pub fn from_claim(refusal: ClaimRefusal, id: u64) -> Self {
        match refusal {
            ClaimRefusal::NotFound => ApiError::not_found(format!("No failed message {id}.")),
            ClaimRefusal::AlreadyResolved => Self::new(
                ErrorCode::AlreadyResolved,
                format!("Failed message {id} is already resolved."),
            ),
            ClaimRefusal::InProgress => Self::new(
                ErrorCode::RetryInProgress,
                format!("Failed message {id} is being retried right now."),
            ),
        }
    }

    /// A broker call on `what` (e.g. "queue `orders_queue`") that did not go through.
    pub fn from_call(err: CallError, what: &str) -> Self {
        match err {
            CallError::NotFound(_) => ApiError::not_found(format!("No {what} on the broker.")),
            CallError::Refused(reason) => Self::new(
                ErrorCode::PurgeRefused,
                format!("RabbitMQ refused it for {what}: {reason}."),
            ),
            CallError::TimedOut => Self::broker_unavailable(format!("RabbitMQ did not answer in time for {what}.")),
            CallError::Disconnected(reason) => Self::broker_unavailable(format!("RabbitMQ: {reason}.")),
        }
    }

    /// The broker's answer to a publish of `exchange`/`routing_key`; `None` when it was confirmed.
    pub fn from_publish(outcome: &PublishOutcome, exchange: &str, routing_key: &str) -> Option<Self> {
        Some(match outcome {
            PublishOutcome::Confirmed => return None,
            PublishOutcome::Unroutable => Self::new(
                ErrorCode::Unroutable,
                format!(
                    "No queue is bound to `{exchange}` for routing key `{routing_key}`; the message was not stored."
                ),
            ),
            PublishOutcome::Rejected => Self::new(
                ErrorCode::QueueFull,
                "A destination queue is full and refused the message; retry later.",
            )
            .with_retry_after(1),
            PublishOutcome::Unavailable(reason) => {
                Self::broker_unavailable(format!("RabbitMQ is unavailable: {reason}."))
            }
            PublishOutcome::TimedOut => Self::broker_unavailable(
                "RabbitMQ did not confirm in time; the message may or may not have been stored.",
            ),
        })
    }
}

impl ApiError {
    /// What became of a request to `exchange`/`routing_key`: the reply, or the error to answer
    /// (a reply that carries the responder's error header is one).
    pub fn from_request(
        outcome: RequestOutcome,
        exchange: &str,
        routing_key: &str,
        timeout: std::time::Duration,
    ) -> Result<Reply, Self> {
        match outcome {
            RequestOutcome::Replied(reply) => match &reply.error {
                None => Ok(*reply),
                Some(reason) => Err(Self::new(
                    ErrorCode::ReplyError,
                    format!("The responder answered with an error: {reason}"),
                )),
            },
            RequestOutcome::TimedOut => Err(Self::new(
                ErrorCode::ReplyTimeout,
                format!(
                    "No reply within {} from a responder of `{exchange}`/`{routing_key}`.",
                    humantime::format_duration(timeout)
                ),
            )),
            RequestOutcome::NotPublished(outcome) => Err(Self::from_publish(&outcome, exchange, routing_key)
                .unwrap_or_else(|| Self::broker_unavailable("RabbitMQ confirmed a request it did not send."))),
        }
    }
}

/// Routes that do not exist answer in the same JSON shape as everything else.
pub async fn not_found() -> ApiError {
    ApiError::not_found("No such route.")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "This route does not accept that method.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_snake_case_names() {
        assert_eq!(ErrorCode::BrokerUnavailable.as_str(), "broker_unavailable");
        assert_eq!(
            serde_json::to_value(ErrorCode::ConfirmationRequired).unwrap(),
            "confirmation_required"
        );
        assert_eq!(ErrorCode::Unroutable.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn a_database_outage_is_logged_once_and_its_end_once() {
        let logs = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..5 {
                let err = StoreError::Unavailable(sqlx::Error::PoolTimedOut);
                assert_eq!(ApiError::from(err).code, ErrorCode::DatabaseUnavailable);
            }
            stored(Ok(())).unwrap();
            stored(Ok(())).unwrap();
        });
        let text = logs.text();
        assert_eq!(text.matches("WARN").count(), 1, "{text}");
        assert_eq!(text.matches("ERROR").count(), 0, "{text}");
        assert_eq!(text.matches("reachable again").count(), 1, "{text}");
    }

    /// Log lines written by the subscriber under test.
    #[derive(Clone, Default)]
    struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl LogBuffer {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl std::io::Write for LogBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
        type Writer = LogBuffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }
}
