//! Shape of a trace token, checked before any lookup, in the browser too.

/// Length of a token: 16 random bytes in URL-safe base64 without padding.
pub const TOKEN_LEN: usize = 22;

/// Accepts exactly the shape of a token made by the server.
pub fn is_valid_token(token: &str) -> bool {
    token.len() == TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
