//! API errors: `{"error":{"code":"...","message":"..."}}` with a fitting
//! HTTP status, as docs/contract.md fixes.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferrite_models::value::WriteCheckError;

use crate::store::StoreError;
use ferrite_core::driver::DriverError;

/// An error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// Further lines, such as every `file:line:col: message` of a refused
    /// rule.
    pub details: Vec<String>,
}

impl ApiError {
    /// Builds one.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// The same error with `details`.
    pub fn with_details(mut self, details: Vec<String>) -> Self {
        self.details = details;
        self
    }

    /// 404 for an unknown device.
    pub fn no_device(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_device",
            format!("no device `{id}`"),
        )
    }

    /// 404 for an unknown property.
    pub fn no_property(id: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_property",
            format!("device `{id}` has no property `{name}`"),
        )
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code, such as `out_of_range`.
    #[schema(example = "out_of_range")]
    pub code: String,
    /// For people.
    pub message: String,
    /// Further lines, such as each `file:line:col: message` of a refused
    /// rule.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                details: self.details,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<WriteCheckError> for ApiError {
    fn from(e: WriteCheckError) -> Self {
        let (status, code) = match e {
            WriteCheckError::ReadOnly(_) => (StatusCode::FORBIDDEN, "read_only"),
            WriteCheckError::WrongType { .. } => (StatusCode::BAD_REQUEST, "wrong_type"),
            WriteCheckError::OutOfRange { .. } => (StatusCode::BAD_REQUEST, "out_of_range"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<DriverError> for ApiError {
    fn from(e: DriverError) -> Self {
        let (status, code) = match e {
            DriverError::Refused(_) => (StatusCode::BAD_GATEWAY, "device_refused"),
            DriverError::Denied(_) => (StatusCode::FORBIDDEN, "device_denied"),
            DriverError::Rejected(_) => (StatusCode::BAD_REQUEST, "device_rejected"),
            DriverError::Unreachable(_) => (StatusCode::SERVICE_UNAVAILABLE, "device_unreachable"),
            DriverError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "device_timeout"),
            DriverError::Encode(_) => (StatusCode::BAD_REQUEST, "out_of_range"),
            DriverError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<crate::control::WriteError> for ApiError {
    fn from(e: crate::control::WriteError) -> Self {
        use crate::control::WriteError;
        match e {
            WriteError::NoDevice(d) => Self::no_device(&d),
            WriteError::NoProperty { device, property } => Self::no_property(&device, &property),
            WriteError::Check(e) => e.into(),
            WriteError::Driver(e) => e.into(),
            e @ WriteError::Held { .. } => Self::new(StatusCode::CONFLICT, e.code(), e.to_string()),
            e @ WriteError::NoDriver(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string())
            }
        }
    }
}

impl From<crate::control::CallError> for ApiError {
    fn from(e: crate::control::CallError) -> Self {
        use crate::control::CallError;
        match e {
            CallError::NoDevice(d) => Self::no_device(&d),
            e @ CallError::NoMethod { .. } => {
                Self::new(StatusCode::NOT_FOUND, e.code(), e.to_string())
            }
            e @ CallError::Check(_) => Self::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
            CallError::Driver(e) => e.into(),
            e @ CallError::NoDriver(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string())
            }
        }
    }
}

/// A blocking task that panicked or was cancelled.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            e.to_string(),
        )
    }
}
