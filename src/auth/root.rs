//! The root token: `Authorization: Basic base64("root:<token>")`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::config::Secret;

/// The root user's name in Basic credentials.
pub const ROOT_USER: &str = "root";

/// Decodes Basic credentials into (user, password); `None` when malformed.
pub fn parse_basic(credentials: &str) -> Option<(String, String)> {
    let raw = B64.decode(credentials.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// True when `password` is the root token, compared in constant time.
pub fn is_root_token(password: &str, token: &Secret) -> bool {
    super::same_secret(password.as_bytes(), token.expose().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_basic_root_credentials() {
        let token: Secret = "1111111111".to_string().into();
        let (user, password) = parse_basic(&B64.encode("root:1111111111")).unwrap();
        assert_eq!(user, ROOT_USER);
        assert!(is_root_token(&password, &token));
        assert!(!is_root_token("111111111", &token));
        assert!(!is_root_token("", &token));
        assert_eq!(parse_basic("%%%"), None);
        assert_eq!(parse_basic(&B64.encode("no-colon")), None);
    }
}
