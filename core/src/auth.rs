//! The daemon's access token.
//!
//! TLS proves to the client that it reached the right daemon (the certificate is pinned); the
//! token proves to the daemon that the caller may use it: only someone who can read the state
//! directory (mode 0700, token file 0600) has it. Every call carries it in its head and the
//! server compares it in constant time, so its timing leaks nothing about the right value.

use std::fmt;

use subtle::ConstantTimeEq;

/// Token length in bytes: 256 bits.
pub const TOKEN_LEN: usize = 32;

/// A 256-bit secret. Its `Debug` never prints the value, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Token([u8; TOKEN_LEN]);

/// Why a token file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The text is not 64 hexadecimal digits.
    #[error("token must be 64 hexadecimal digits (256 bits); the file holds something else")]
    Malformed,
}

impl Token {
    /// A token with the given bytes.
    pub fn from_bytes(bytes: [u8; TOKEN_LEN]) -> Token {
        Token(bytes)
    }

    /// A token from a slice of exactly [`TOKEN_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Token> {
        bytes.try_into().ok().map(Token)
    }

    /// Reads the hex form kept in the state directory (surrounding whitespace allowed).
    pub fn from_hex(text: &str) -> Result<Token, TokenError> {
        let text = text.trim().as_bytes();
        if text.len() != TOKEN_LEN * 2 {
            return Err(TokenError::Malformed);
        }
        let mut bytes = [0u8; TOKEN_LEN];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let hi = hex_digit(pair[0]).ok_or(TokenError::Malformed)?;
            let lo = hex_digit(pair[1]).ok_or(TokenError::Malformed)?;
            *byte = hi << 4 | lo;
        }
        Ok(Token(bytes))
    }

    /// The hex form kept in the state directory.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The raw bytes, as sent in a request head.
    pub fn as_bytes(&self) -> &[u8; TOKEN_LEN] {
        &self.0
    }

    /// Compares in constant time.
    pub fn verify(&self, presented: &Token) -> bool {
        self.0.ct_eq(&presented.0).into()
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_debug_hides_the_value() {
        let token = Token::from_bytes([0xab; 32]);
        assert_eq!(
            Token::from_hex(&format!("{}\n", token.to_hex())).unwrap(),
            token
        );
        assert!(!format!("{token:?}").contains("ab"));
        assert!(Token::from_hex("abc").is_err());
        assert!(Token::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn verify_compares_every_byte() {
        let token = Token::from_bytes([1; 32]);
        let mut other = [1; 32];
        assert!(token.verify(&Token::from_bytes(other)));
        other[31] = 2;
        assert!(!token.verify(&Token::from_bytes(other)));
    }
}
