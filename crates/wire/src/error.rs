use thiserror::Error;

/// Why a SASL exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SaslError {
    /// A response line was not valid base64.
    #[error("invalid base64 in SASL response")]
    Base64,
    /// A PLAIN message did not have the `authzid NUL authcid NUL passwd` shape.
    #[error("malformed SASL PLAIN message")]
    MalformedPlain,
    /// A decoded field was not UTF-8 (RFC 4616 requires UTF-8).
    #[error("SASL field is not UTF-8")]
    NotUtf8,
    /// The user name or password was empty.
    #[error("empty user name or password")]
    Empty,
    /// The client sent `*` to cancel the exchange.
    #[error("SASL exchange cancelled by the client")]
    Cancelled,
}
