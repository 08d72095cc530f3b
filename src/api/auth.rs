//! API tokens: `Authorization: Bearer <token>`. The config holds only each
//! token's SHA-256 (or the name of an environment variable holding the
//! token, hashed at load); a presented token is hashed and compared with
//! every configured hash in constant time, so neither timing nor the
//! order of the table tells anything. Tokens are never logged.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, Role};

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<Token>,
}

#[derive(Debug, Clone)]
struct Token {
    name: String,
    role: Role,
    sha256: [u8; 32],
}

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The token's name, recorded in the store as `created_by` and audit
    /// actor.
    pub name: String,
    pub role: Role,
}

/// Why a request is not authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, or not one of ours (401).
    Unauthenticated,
    /// A view token asked to change something (403).
    Forbidden,
}

/// Why the configured tokens cannot be used; each names the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token {0:?}: sha256 must be 64 hex digits")]
    BadHash(String),
    #[error("token {token:?}: environment variable {var} is not set")]
    EnvUnset { token: String, var: String },
    #[error("token {0:?}: no sha256 and no env")]
    NoSecret(String),
}

impl Tokens {
    /// From the config; a token read from an unset or empty environment
    /// variable is an error that names the token and the variable.
    pub fn from_config(cfg: &Config) -> Result<Tokens, TokenError> {
        let mut entries = Vec::new();
        for t in &cfg.admin.tokens {
            let sha256 = match (&t.sha256, &t.env) {
                (Some(h), _) => {
                    let mut out = [0u8; 32];
                    hex::decode_to_slice(h.get_ref(), &mut out)
                        .map_err(|_| TokenError::BadHash(t.name.clone()))?;
                    out
                }
                (None, Some(var)) => match std::env::var(var) {
                    Ok(v) if !v.is_empty() => Sha256::digest(v.as_bytes()).into(),
                    _ => {
                        return Err(TokenError::EnvUnset {
                            token: t.name.clone(),
                            var: var.clone(),
                        });
                    }
                },
                (None, None) => return Err(TokenError::NoSecret(t.name.clone())),
            };
            entries.push(Token {
                name: t.name.clone(),
                role: t.role,
                sha256,
            });
        }
        Ok(Tokens { entries })
    }

    /// Whether a token named `name` with `role` is still configured (a
    /// console session ends when its token is removed or changes role).
    pub fn has(&self, name: &str, role: Role) -> bool {
        self.entries
            .iter()
            .any(|t| t.name == name && t.role == role)
    }

    /// Checks an `Authorization` header value for a token of `need`
    /// (`Role::View` is satisfied by either role).
    pub fn check(&self, authorization: Option<&[u8]>, need: Role) -> Result<Actor, Denied> {
        let token = authorization
            .and_then(|h| {
                let (scheme, rest) = h.split_at_checked(7)?;
                scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
            })
            .map(|t| t.trim_ascii())
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Unauthenticated)?;
        let presented: [u8; 32] = Sha256::digest(token).into();
        let mut found: Option<&Token> = None;
        for t in &self.entries {
            // Every entry is compared; no early exit.
            if bool::from(t.sha256.ct_eq(&presented)) && found.is_none() {
                found = Some(t);
            }
        }
        let t = found.ok_or(Denied::Unauthenticated)?;
        if need == Role::Edit && t.role != Role::Edit {
            return Err(Denied::Forbidden);
        }
        Ok(Actor {
            name: t.name.clone(),
            role: t.role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tokens(extra: &str) -> Tokens {
        let text = format!(
            "[pbx]\ntarget = \"127.0.0.1:5080\"\nsources = [\"127.0.0.1/32\"]\n[[trunk]]\nname = \"c\"\ntarget = \"127.0.0.2:5070\"\nsources = [\"127.0.0.2/32\"]\n[admin]\n{extra}"
        );
        let loaded = crate::config::from_toml(Path::new("t.toml"), text).unwrap();
        Tokens::from_config(&loaded.config).unwrap()
    }

    #[test]
    fn roles_and_unknown_tokens() {
        let h = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
        let t = tokens(&format!(
            "[[admin.tokens]]\nname = \"ops\"\nrole = \"edit\"\nsha256 = \"{}\"\n[[admin.tokens]]\nname = \"crm\"\nrole = \"view\"\nsha256 = \"{}\"\n",
            h("edit-secret"),
            h("view-secret")
        ));
        assert_eq!(
            t.check(Some(b"Bearer edit-secret"), Role::Edit)
                .unwrap()
                .name,
            "ops"
        );
        assert_eq!(
            t.check(Some(b"bearer view-secret"), Role::View)
                .unwrap()
                .name,
            "crm"
        );
        assert_eq!(
            t.check(Some(b"Bearer view-secret"), Role::Edit)
                .unwrap_err(),
            Denied::Forbidden
        );
        assert_eq!(
            t.check(Some(b"Bearer nope"), Role::View).unwrap_err(),
            Denied::Unauthenticated
        );
        assert_eq!(
            t.check(Some(b"Basic abc"), Role::View).unwrap_err(),
            Denied::Unauthenticated
        );
        assert_eq!(
            t.check(None, Role::View).unwrap_err(),
            Denied::Unauthenticated
        );
    }
}
