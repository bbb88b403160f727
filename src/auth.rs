//! Client access: the node's token (`--auth-token-file`) and how a candidate is checked.
//!
//! The token itself is not kept: the node keeps a random HMAC key and the token's tag under
//! it, and checks a candidate by `ring::hmac::verify` (constant time), so neither a timing
//! difference nor a memory dump of a running node gives the token away. Owns the token file's
//! format and the check; it never decides which ops need it (the front ends do).

use std::path::Path;

use ring::hmac;
use ring::rand::SystemRandom;
use zeroize::Zeroizing;

/// A token shorter than this is refused: it would be guessable.
pub const TOKEN_BYTES_MIN: usize = 16;
/// Wrong tokens one connection may send before it is closed.
pub const WRONG_TOKENS_MAX: u32 = 3;

/// A client token as a client holds it; wiped on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(Zeroizing<Vec<u8>>);

impl AuthToken {
    pub fn new(bytes: Vec<u8>) -> AuthToken {
        AuthToken(Zeroizing::new(bytes))
    }

    /// Reads a token file: its content, without the trailing line break or spaces.
    pub fn read(path: &Path) -> Result<AuthToken, String> {
        let content = Zeroizing::new(
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        );
        let end = content
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |at| at + 1);
        let start = content[..end]
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(end);
        Ok(AuthToken::new(content[start..end].to_vec()))
    }

    /// What a client tool was told: the token in `file`, else in `$REPRAM_TOKEN`, else none.
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Option<AuthToken>, String> {
        Ok(match file {
            Some(path) => Some(AuthToken::read(path)?),
            None => std::env::var("REPRAM_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .map(|t| AuthToken::new(t.into_bytes())),
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

/// What a node knows of its token: enough to check one, not to tell it.
pub struct ClientAuth {
    key: hmac::Key,
    tag: hmac::Tag,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientAuth(<token set>)")
    }
}

impl ClientAuth {
    /// Takes the node's token; refuses one too short to be safe.
    pub fn new(token: &AuthToken) -> Result<ClientAuth, String> {
        if token.as_bytes().len() < TOKEN_BYTES_MIN {
            return Err(format!(
                "the token has {} characters; at least {TOKEN_BYTES_MIN} are needed \
                 (e.g. `head -c 24 /dev/urandom | base64`)",
                token.as_bytes().len()
            ));
        }
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| "no system randomness for the token's key".to_string())?;
        let tag = hmac::sign(&key, token.as_bytes());
        Ok(ClientAuth { key, tag })
    }

    /// Whether `candidate` is the token, in time that does not depend on where it differs.
    pub fn check(&self, candidate: &[u8]) -> bool {
        hmac::verify(&self.key, candidate, self.tag.as_ref()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_itself_passes_the_check() {
        let token = AuthToken::new(b"correct horse battery staple".to_vec());
        let auth = ClientAuth::new(&token).expect("long enough");
        assert!(auth.check(b"correct horse battery staple"));
        assert!(!auth.check(b"correct horse battery stapl"));
        assert!(!auth.check(b"correct horse battery staple "));
        assert!(!auth.check(b""));
    }

    #[test]
    fn a_short_token_is_refused_and_no_token_is_ever_printed() {
        let short = AuthToken::new(b"tooshort".to_vec());
        assert!(ClientAuth::new(&short).unwrap_err().contains("at least 16"));
        assert_eq!(format!("{short:?}"), "AuthToken(<redacted>)");
    }

    #[test]
    fn a_token_file_is_read_without_its_line_break() {
        let path = std::env::temp_dir().join(format!("repram-token-{}", std::process::id()));
        std::fs::write(&path, b"  s3cret-token-of-some-length\n").expect("write");
        let token = AuthToken::read(&path).expect("read");
        assert_eq!(token.as_bytes(), b"s3cret-token-of-some-length");
        let _ = std::fs::remove_file(&path);
        assert!(AuthToken::read(&path).unwrap_err().contains("cannot read"));
    }
}
