//! `goferctl token` and `goferctl whoami`: API tokens with a role and the namespaces they act in, and
//! which token this goferctl presents. A new token's secret is printed once; the cluster keeps only its
//! hash.

use std::process::ExitCode;

use clap::Subcommand;
use gofer_proto::v1;

use crate::client;
use crate::context::Context;
use crate::failure::Failure;
use crate::json;
use crate::output::{self, Format, print_json, print_table};
use crate::pages::{self, Limit};

#[derive(Subcommand)]
pub enum Command {
    /// Make a token and print its secret (shown only this once)
    Create {
        name: String,
        /// admin, operator or viewer
        #[arg(long)]
        role: String,
        /// A namespace or a pattern such as team-a-* it acts in (repeatable; an admin acts everywhere)
        #[arg(id = "namespace", long = "namespace", value_name = "PATTERN")]
        namespaces: Vec<String>,
        /// How long it works, such as 30d, 12h or 90m; for ever if not given
        #[arg(long, value_parser = parse_expiry)]
        expires: Option<i64>,
    },
    /// List tokens (never their secrets)
    List {
        #[command(flatten)]
        limit: Limit,
    },
    /// Show one token
    Get { name: String },
    /// Stop a token working on every node; it stays listed
    Disable { name: String },
    /// Forget a token
    Delete { name: String },
}

/// Reads `30d`, `12h`, `90m`, `45s` into milliseconds.
fn parse_expiry(text: &str) -> Result<i64, gofer_domain::Error> {
    let millis = match text.strip_suffix('d').map(str::parse::<i64>) {
        Some(Ok(days)) => days.saturating_mul(86_400_000),
        _ => gofer_domain::schedule::parse_duration("expires", text)?,
    };
    if millis <= 0 {
        return Err(gofer_domain::Error::invalid("expires", "must be a positive duration"));
    }
    Ok(millis)
}

pub async fn run(command: Command, ctx: &Context) -> Result<ExitCode, Failure> {
    let mut api = ctx.connect().await?;
    let format = ctx.format;
    match command {
        Command::Create {
            name,
            role,
            namespaces,
            expires,
        } => {
            let role = match role.as_str() {
                "admin" => v1::TokenRole::Admin,
                "operator" => v1::TokenRole::Operator,
                "viewer" => v1::TokenRole::Viewer,
                other => {
                    return Err(Failure(format!(
                        "--role {other:?} is not a role: admin, operator or viewer"
                    )));
                }
            };
            let request = v1::CreateTokenRequest {
                name,
                role: role as i32,
                namespaces,
                expires_in_millis: expires.unwrap_or(0),
            };
            let created = api.create_token(request).await.map_err(client::status)?.into_inner();
            match format {
                Format::Json | Format::Yaml => print_json(&json::value(&created)),
                Format::Table => {
                    let token = created.token.unwrap_or_default();
                    eprintln!(
                        "token {} ({} on {}) created; its secret follows and is not shown again",
                        token.name,
                        role_name(token.role),
                        token.namespaces.join(", ")
                    );
                    say!("{}", created.secret);
                }
            }
        }
        Command::List { limit } => {
            let tokens = pages::collect(limit, async |page_size, page_token| {
                let request = v1::ListTokensRequest { page_size, page_token };
                let list = api.list_tokens(request).await?.into_inner();
                Ok((list.tokens, list.next_page_token))
            })
            .await?;
            match format {
                Format::Json | Format::Yaml => print_json(&json::values(&tokens)),
                Format::Table => print_tokens(&tokens),
            }
        }
        Command::Get { name } => {
            let token = api.get_token(v1::GetTokenRequest { name }).await;
            let token = answered(token.map(|r| r.into_inner().token))?;
            output::emit(
                format,
                || print_json(&json::value(&token)),
                || print_tokens(std::slice::from_ref(&token)),
            );
        }
        Command::Disable { name } => {
            let token = api.disable_token(v1::DisableTokenRequest { name }).await;
            let token = answered(token.map(|r| r.into_inner().token))?;
            output::emit(
                format,
                || print_json(&json::value(&token)),
                || say!("token {} disabled", token.name),
            );
        }
        Command::Delete { name } => {
            api.delete_token(v1::DeleteTokenRequest { name: name.clone() })
                .await
                .map_err(client::status)?;
            match format {
                Format::Json | Format::Yaml => print_json(&serde_json::json!({ "name": name, "deleted": true })),
                Format::Table => say!("token {name} deleted"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `goferctl whoami`: the token this goferctl presents, its role and namespaces.
pub async fn whoami(ctx: &Context) -> Result<ExitCode, Failure> {
    let mut api = ctx.connect().await?;
    let me = api
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .map_err(client::status)?
        .into_inner();
    output::emit(
        ctx.format,
        || print_json(&json::value(&me)),
        || {
            say!(
                "token {} ({} on {}), expires {}",
                me.name,
                role_name(me.role),
                me.namespaces.join(", "),
                expiry(me.expires_unix_millis)
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// The token an answer carries.
fn answered(answer: Result<Option<v1::Token>, tonic::Status>) -> Result<v1::Token, Failure> {
    Ok(answer.map_err(client::status)?.unwrap_or_default())
}

fn role_name(role: i32) -> &'static str {
    match v1::TokenRole::try_from(role) {
        Ok(v1::TokenRole::Admin) => "admin",
        Ok(v1::TokenRole::Operator) => "operator",
        Ok(v1::TokenRole::Viewer) => "viewer",
        _ => "unknown",
    }
}

fn expiry(millis: i64) -> String {
    if millis == 0 {
        "never".to_string()
    } else {
        output::time(millis)
    }
}

fn print_tokens(tokens: &[v1::Token]) {
    print_table(
        &["NAME", "ROLE", "NAMESPACES", "CREATED (UTC)", "EXPIRES (UTC)", "STATE"],
        tokens
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    role_name(t.role).to_string(),
                    t.namespaces.join(","),
                    output::time(t.created_unix_millis),
                    expiry(t.expires_unix_millis),
                    if t.disabled_unix_millis == 0 {
                        "active"
                    } else {
                        "disabled"
                    }
                    .to_string(),
                ]
            })
            .collect(),
    );
}
