//! The build's bearer token: 256 random bits, compared in constant time.

/// A secret; never printed (no `Debug` of its value, no `Display`).
pub struct Token(String);

impl Token {
    /// 32 bytes from the OS, as 64 hex digits.
    pub fn generate() -> Result<Token, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Constant time in the length of the presented value's overlap, so the
    /// answer's timing does not tell how much of a guess was right.
    pub fn matches(&self, presented: &str) -> bool {
        let expected = self.0.as_bytes();
        let presented = presented.as_bytes();
        let mut difference = expected.len() ^ presented.len();
        for (index, byte) in expected.iter().enumerate() {
            difference |= usize::from(byte ^ presented.get(index).copied().unwrap_or(0));
        }
        difference == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        let token = Token::generate().unwrap();
        assert_eq!(token.secret().len(), 64);
        assert!(token.matches(token.secret()));
        assert!(!token.matches(""));
        assert!(!token.matches(&token.secret()[..63]));
        assert!(!token.matches(&format!("{}0", token.secret())));
        let mut wrong = token.secret().to_owned();
        wrong.replace_range(0..1, if wrong.starts_with('0') { "1" } else { "0" });
        assert!(!token.matches(&wrong));
        assert_eq!(format!("{token:?}"), "Token(..)");
    }
}
