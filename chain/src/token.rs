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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shape() {
        assert!(is_valid_token("Q96fD28Otj5xa-8Ic4LjNQ"));
        assert!(is_valid_token("______________________"));
        for bad in [
            "Q96fD28Otj5xa-8Ic4LjN",
            "Q96fD28Otj5xa-8Ic4LjNQQ",
            "Q96fD28Otj5xa+8Ic4LjNQ",
            "Q96fD28Otj5xa/8Ic4LjNQ",
            "<script>alert(1)</scri",
            "",
        ] {
            assert!(!is_valid_token(bad), "{bad:?}");
        }
        // 22 bytes of multi-byte text is not 22 characters of base64.
        assert!(!is_valid_token(&"é".repeat(11)));
    }
}
