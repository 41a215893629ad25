//! The token calls: make one (its secret is drawn here, shown once, and only its hash goes to the log),
//! list, show, disable and delete them, and say who the caller is.

use gofer_domain::access::{Caller, TokenRole};
use gofer_domain::{Command, Error};
use gofer_proto::{into_status, token_role_from_proto, token_role_to_proto, token_to_proto, v1};
use tonic::Status;

use crate::api::ApiService;
use crate::paging::{Page, past};

/// The prefix of every token secret Gofer makes, so a leaked one is recognisable in a scan.
const SECRET_PREFIX: &str = "gofer_";

impl ApiService {
    pub(crate) async fn issue_token(&self, request: v1::CreateTokenRequest) -> Result<v1::CreateTokenResponse, Status> {
        let role = token_role_from_proto("role", request.role).map_err(into_status)?;
        let namespaces = if role == TokenRole::Admin {
            vec!["*".to_string()]
        } else {
            request.namespaces
        };
        if request.expires_in_millis < 0 {
            return Err(into_status(Error::invalid("expires_in_millis", "must not be negative")));
        }
        let secret = new_secret()?;
        let hash = gofer_auth::hash_hex(&gofer_auth::hash_token(&secret));
        let now = self.clock.now_millis();
        let expires_at = match request.expires_in_millis {
            0 => 0,
            millis => now.saturating_add(millis),
        };
        self.propose(Command::CreateToken {
            name: request.name.clone(),
            role,
            namespaces,
            hash,
            expires_at,
            at: now,
        })
        .await?;
        let token = self.token_proto(&request.name)?;
        Ok(v1::CreateTokenResponse {
            token: Some(token),
            secret,
        })
    }

    /// One `page` of the tokens, by name.
    pub(crate) fn tokens_proto(&self, page: &Page) -> Result<v1::ListTokensResponse, Status> {
        let after = page.after::<String>()?;
        let (tokens, next_page_token) = self.read(|s| {
            let tokens =
                past(&s.tokens.tokens, after.as_deref()).map(|(name, record)| (name, token_to_proto(name, record)));
            Ok(page.take(tokens))
        })?;
        Ok(v1::ListTokensResponse {
            tokens,
            next_page_token,
        })
    }

    pub(crate) fn token_proto(&self, name: &str) -> Result<v1::Token, Status> {
        self.read(|s| {
            s.tokens
                .tokens
                .get(name)
                .map(|record| token_to_proto(name, record))
                .ok_or_else(|| Error::NotFound(format!("token {name:?}")))
        })
    }

    pub(crate) async fn disable_named_token(&self, name: String) -> Result<v1::Token, Status> {
        self.propose(Command::DisableToken {
            name: name.clone(),
            at: self.clock.now_millis(),
        })
        .await?;
        self.token_proto(&name)
    }

    pub(crate) async fn delete_named_token(&self, name: String) -> Result<(), Status> {
        self.propose(Command::DeleteToken {
            name,
            at: self.clock.now_millis(),
        })
        .await?;
        Ok(())
    }

    /// What `caller`'s token may do, and when it stops working.
    pub(crate) fn caller_proto(&self, caller: Caller) -> v1::WhoAmIResponse {
        let expires = self
            .state
            .read(|s| s.tokens.tokens.get(&caller.name).map(|t| t.expires_at));
        v1::WhoAmIResponse {
            role: token_role_to_proto(caller.role) as i32,
            expires_unix_millis: expires.unwrap_or(0),
            name: caller.name,
            namespaces: caller.namespaces,
        }
    }
}

/// A fresh token secret: 32 random bytes as hex, after [`SECRET_PREFIX`].
fn new_secret() -> Result<String, Status> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Status::unavailable("no randomness for a token secret; try again"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{SECRET_PREFIX}{hex}"))
}
