//! Control API errors: a status code and an [`ErrorBody`] that says what to
//! do. Every rejection of a request (bad JSON, bad path, unknown route)
//! comes out in this shape too, so clients parse one error format.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rewind_api::control::ErrorBody;

/// An error response of the control API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>, hint: Option<String>) -> ApiError {
        ApiError { status, body: ErrorBody { error: error.into(), hint } }
    }

    /// 400: the request itself is wrong (syntax, names, sizes).
    pub fn bad_request(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error, None)
    }

    /// 404: no such volume, snapshot or route.
    pub fn not_found(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, error, None)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, error, None)
    }

    /// 422: a well-formed point that is not in the retained history.
    pub fn outside_history(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error, None)
    }

    /// 507: the data dir's filesystem is full; nothing was changed.
    pub fn no_space(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INSUFFICIENT_STORAGE, error, None)
    }

    /// 500: the daemon failed (IO). The cause chain goes to the log and the
    /// message; the hint points at the log.
    pub fn internal(context: &str, error: &(dyn std::error::Error + 'static)) -> ApiError {
        let message = format!("{context}: {}", crate::error_chain(error));
        tracing::error!(error = %message, "control request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            message,
            Some("the daemon's log (stderr, or journalctl -u rewindd) has the details".into()),
        )
    }

    /// Adds what to do about it.
    pub fn hint(mut self, hint: impl Into<String>) -> ApiError {
        self.body.hint = Some(hint.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
