//! API errors: `{"error": {"type", "code", "message", "param"?, …}}`, and the
//! one place where error types become HTTP statuses.

use purser_engine::{AdvanceError, Busy, Outcome, QueryError};
use serde_json::{Map, Value, json};

#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(
        status: u16,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            extra: Map::new(),
        }
    }

    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        let mut error = ApiError::new(400, "invalid_request", "parameter_invalid", message);
        error.param = Some(param.to_owned());
        error
    }

    pub fn missing(param: &str) -> ApiError {
        let mut error = ApiError::new(
            400,
            "invalid_request",
            "parameter_missing",
            format!("{param} is required"),
        );
        error.param = Some(param.to_owned());
        error
    }

    pub fn unknown_field(param: &str) -> ApiError {
        let mut error = ApiError::new(
            400,
            "invalid_request",
            "parameter_unknown",
            format!("unknown field {param}"),
        );
        error.param = Some(param.to_owned());
        error
    }

    pub fn malformed(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "invalid_request", "malformed_json", message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, "invalid_request", code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(404, "not_found", code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(409, "conflict", code, message)
    }

    pub fn unauthenticated() -> ApiError {
        ApiError::new(
            401,
            "authentication_error",
            "invalid_api_key",
            "a valid API key is required: Authorization: Bearer <key>",
        )
    }

    pub fn forbidden(scope: &str) -> ApiError {
        ApiError::new(
            403,
            "permission_error",
            "insufficient_scope",
            format!("this API key lacks the {scope} scope"),
        )
    }

    pub fn idempotency(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(409, "idempotency_error", code, message)
    }

    pub fn too_large() -> ApiError {
        ApiError::new(
            413,
            "payload_too_large",
            "payload_too_large",
            "the request body is larger than 1 MiB",
        )
    }

    pub fn body_timeout() -> ApiError {
        ApiError::new(
            408,
            "invalid_request",
            "request_timeout",
            "the request body did not arrive in time",
        )
    }

    pub fn rate_limited() -> ApiError {
        ApiError::new(
            429,
            "rate_limited",
            "queue_full",
            "the engine is saturated; retry with backoff",
        )
    }

    pub fn unavailable() -> ApiError {
        ApiError::new(
            503,
            "api_error",
            "unavailable",
            "the ledger is not accepting writes; retry later with the same idempotency key",
        )
    }

    /// No answer in time, or a commit that failed: the request may have
    /// taken effect.
    pub fn outcome_unknown() -> ApiError {
        ApiError::new(
            503,
            "api_error",
            "outcome_unknown",
            "the outcome is not known yet: the request may have been applied; retry with the same Idempotency-Key to get its answer",
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "api_error", "internal_error", message)
    }

    pub fn body(&self) -> Vec<u8> {
        let mut error = json!({"type": self.kind, "code": self.code, "message": self.message});
        if let Some(param) = &self.param {
            error["param"] = json!(param);
        }
        if let Value::Object(map) = &mut error {
            map.extend(self.extra.clone());
        }
        serde_json::to_vec(&json!({"error": error})).expect("JSON rendering cannot fail")
    }
}

impl From<Busy> for ApiError {
    fn from(busy: Busy) -> ApiError {
        match busy {
            Busy::QueueFull => ApiError::rate_limited(),
            Busy::Unavailable => ApiError::unavailable(),
            Busy::Paced => ApiError::new(
                429,
                "rate_limited",
                "list_rate_limited",
                "this account's lists are being read faster than they are served; retry in a moment",
            ),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> ApiError {
        match error {
            QueryError::Panicked => ApiError::internal("a store query panicked"),
            // Damage is named (what, where): stored data that fails its
            // check is refused, never served, and the operator must see why.
            QueryError::Store(error @ purser_store::StoreError::Damaged(_)) => {
                tracing::error!(%error, "store query found damage");
                ApiError::internal(error.to_string())
            }
            QueryError::Store(error) => {
                tracing::error!(%error, "store query failed");
                ApiError::internal("the store could not answer")
            }
        }
    }
}

impl From<AdvanceError> for ApiError {
    fn from(error: AdvanceError) -> ApiError {
        match error {
            AdvanceError::TooFar => ApiError::invalid("seconds", "the clock cannot move that far"),
            AdvanceError::Query(error) => error.into(),
            AdvanceError::Busy(busy) => busy.into(),
        }
    }
}

/// A command's outcome as a status and a body.
pub fn outcome(outcome: Outcome) -> (u16, Vec<u8>) {
    let error = match outcome {
        Outcome::Answered { status, body } => return (status, body),
        Outcome::KeyReused => ApiError::idempotency(
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        ),
        Outcome::KeyInUse => ApiError::idempotency(
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still running",
        ),
        Outcome::Busy(busy) => busy.into(),
        Outcome::Pending => ApiError::outcome_unknown(),
        Outcome::RecallFailed(message) => ApiError::internal(message),
    };
    (error.status, error.body())
}

#[cfg(feature = "axum")]
mod response {
    use axum::http::{HeaderValue, StatusCode, header};
    use axum::response::{IntoResponse, Response};

    use super::ApiError;

    /// A JSON response from a status and a rendered body.
    pub fn json_response(status: u16, body: Vec<u8>) -> Response {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }

    impl IntoResponse for ApiError {
        fn into_response(self) -> Response {
            json_response(self.status, self.body())
        }
    }
}

#[cfg(feature = "axum")]
pub use response::json_response;
