//! OPC UA status codes as [`DriverError`]s, which the API turns into HTTP
//! answers: access problems are 403, values the server will not take are
//! 400, a lost connection is 503, a timeout 504, anything else 502.

use std::future::Future;
use std::time::Duration;

use opcua::types::StatusCode;

use ferrite_core::driver::DriverError;

/// The error a status code from a service call means.
pub(super) fn error(code: StatusCode) -> DriverError {
    let text = format!("{code}");
    match code {
        StatusCode::BadUserAccessDenied
        | StatusCode::BadNotWritable
        | StatusCode::BadNotReadable
        | StatusCode::BadSecurityModeInsufficient
        | StatusCode::BadIdentityTokenRejected
        | StatusCode::BadIdentityTokenInvalid
        | StatusCode::BadNotExecutable => DriverError::Denied(text),
        StatusCode::BadOutOfRange
        | StatusCode::BadTypeMismatch
        | StatusCode::BadDataEncodingInvalid
        | StatusCode::BadDataEncodingUnsupported
        | StatusCode::BadIndexRangeInvalid
        | StatusCode::BadIndexRangeNoData
        | StatusCode::BadWriteNotSupported
        | StatusCode::BadInvalidArgument
        | StatusCode::BadArgumentsMissing
        | StatusCode::BadTooManyArguments => DriverError::Rejected(text),
        StatusCode::BadTimeout | StatusCode::BadRequestTimeout => {
            DriverError::Timeout(Duration::ZERO)
        }
        c if is_link_loss(c) => DriverError::Unreachable(text),
        _ => DriverError::Refused(text),
    }
}

/// Whether `code` means the session or connection is gone, rather than that
/// the server refused one request.
pub(super) fn is_link_loss(code: StatusCode) -> bool {
    matches!(
        code,
        StatusCode::BadNotConnected
            | StatusCode::BadConnectionClosed
            | StatusCode::BadConnectionRejected
            | StatusCode::BadSessionClosed
            | StatusCode::BadSessionIdInvalid
            | StatusCode::BadSessionNotActivated
            | StatusCode::BadSecureChannelClosed
            | StatusCode::BadSecureChannelIdInvalid
            | StatusCode::BadCommunicationError
            | StatusCode::BadServerNotConnected
            | StatusCode::BadServerHalted
            | StatusCode::BadShutdown
            | StatusCode::BadNoCommunication
            | StatusCode::BadDisconnect
            | StatusCode::BadTcpInternalError
            | StatusCode::BadTcpEndpointUrlInvalid
    )
}

/// Runs a service call with the device's timeout, mapping every failure.
pub(super) async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, opcua::types::Error>>,
) -> Result<T, DriverError> {
    within_code(timeout, call)
        .await
        .map_err(|code| error_within(code, timeout))
}

/// [`error`], with `timeout` as the time a timed-out call waited.
pub(super) fn error_within(code: StatusCode, timeout: Duration) -> DriverError {
    match error(code) {
        DriverError::Timeout(_) => DriverError::Timeout(timeout),
        other => other,
    }
}

/// Runs a service call with the device's timeout; a failure is its status
/// code (Bad_Timeout when the timeout ran out), for callers that act on
/// particular codes.
pub(super) async fn within_code<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, opcua::types::Error>>,
) -> Result<T, StatusCode> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(StatusCode::BadTimeout),
        Ok(result) => result.map_err(|e| e.status()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_onto_the_api_errors_the_issue_names() {
        assert!(matches!(
            error(StatusCode::BadUserAccessDenied),
            DriverError::Denied(_)
        ));
        assert!(matches!(
            error(StatusCode::BadNotWritable),
            DriverError::Denied(_)
        ));
        assert!(matches!(
            error(StatusCode::BadOutOfRange),
            DriverError::Rejected(_)
        ));
        assert!(matches!(
            error(StatusCode::BadTypeMismatch),
            DriverError::Rejected(_)
        ));
        assert!(matches!(
            error(StatusCode::BadConnectionClosed),
            DriverError::Unreachable(_)
        ));
        assert!(matches!(
            error(StatusCode::BadRequestTimeout),
            DriverError::Timeout(_)
        ));
        assert!(matches!(
            error(StatusCode::BadNodeIdUnknown),
            DriverError::Refused(_)
        ));
    }
}
