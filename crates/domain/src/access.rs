//! Who may do what: API tokens with a role and a namespace scope, kept in the replicated state, and the
//! one policy every call to the public API is checked against, [`authorize`].
//!
//! The policy is a pure function of the caller, the method and the namespace the call acts in, so it is
//! tested as a whole matrix without a server (`access/tests.rs`). Tokens are stored only as the hex
//! SHA-256 of their secret: the secret itself never enters a command, a snapshot or an event. A token is
//! changed only through the log (`CreateToken`, `DisableToken`, `DeleteToken`), so every node and every
//! mirror admits and refuses the same tokens, and a disabled token stops working wherever the command has
//! been applied.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, validate_id};

/// The most tokens a cluster keeps.
pub const MAX_TOKENS: usize = 10_000;
/// The most namespace patterns one token may carry.
pub const MAX_TOKEN_NAMESPACES: usize = 64;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// Everything, everywhere: tokens, namespaces, extensions, cluster membership included.
    Admin,
    /// Pipelines, runs, subscriptions and pipeline secrets (and later objects) in its namespaces, and reading
    /// them.
    Operator,
    /// Reading what is in its namespaces.
    Viewer,
}

impl TokenRole {
    /// The role's name as users write it: `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Admin => "admin",
            TokenRole::Operator => "operator",
            TokenRole::Viewer => "viewer",
        }
    }

    /// Reads a role's name, naming `field` if it is none.
    pub fn parse(field: &str, text: &str) -> Result<TokenRole, Error> {
        match text {
            "admin" => Ok(TokenRole::Admin),
            "operator" => Ok(TokenRole::Operator),
            "viewer" => Ok(TokenRole::Viewer),
            other => Err(Error::invalid(
                field,
                format!("{other:?} is not a role: admin, operator or viewer"),
            )),
        }
    }

    /// Whether the role holds `right` (in the namespaces it is scoped to).
    fn holds(self, right: Right) -> bool {
        match self {
            TokenRole::Admin => true,
            TokenRole::Operator => right != Right::Administer,
            TokenRole::Viewer => right == Right::Read,
        }
    }
}

impl fmt::Display for TokenRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token as the cluster keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub role: TokenRole,
    /// The namespaces it acts in: names or glob patterns (`team-a-*`); `*` for all. An admin's is `*`.
    pub namespaces: Vec<String>,
    /// The hex SHA-256 of its secret.
    pub hash: String,
    pub created_at: i64,
    /// When it stops working (Unix milliseconds), or 0 for never.
    pub expires_at: i64,
    /// When it was disabled, or 0 while it works.
    pub disabled_at: i64,
}

impl TokenRecord {
    /// Whether it admits a call at `now`.
    pub fn works_at(&self, now: i64) -> bool {
        self.disabled_at == 0 && (self.expires_at == 0 || now < self.expires_at)
    }
}

/// The tokens a cluster keeps, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub tokens: BTreeMap<String, TokenRecord>,
}

impl Tokens {
    /// Whether no token was ever created (a snapshot then leaves the table out).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token whose secret hashes to `hash` (hex), with its name.
    pub fn by_hash(&self, hash: &str) -> Option<(&str, &TokenRecord)> {
        self.tokens
            .iter()
            .find(|(_, record)| record.hash == hash)
            .map(|(name, record)| (name.as_str(), record))
    }

    /// `CreateToken`: a new token; names and hashes are never reused while the token exists.
    pub(crate) fn create(&mut self, name: &str, mut record: TokenRecord) -> Result<(), Error> {
        validate_id("name", name)?;
        check_hash(&record.hash)?;
        if record.role == TokenRole::Admin {
            record.namespaces = vec!["*".to_string()];
        }
        check_patterns(&record.namespaces)?;
        if record.expires_at != 0 && record.expires_at <= record.created_at {
            return Err(Error::invalid("expires", "must be in the future"));
        }
        if self.tokens.contains_key(name) {
            return Err(Error::AlreadyExists(format!("token {name:?}")));
        }
        if self.by_hash(&record.hash).is_some() {
            return Err(Error::AlreadyExists("a token with this secret".into()));
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Err(Error::FailedPrecondition(format!(
                "the cluster keeps at most {MAX_TOKENS} tokens; delete some first"
            )));
        }
        self.tokens.insert(name.to_string(), record);
        Ok(())
    }

    /// `DisableToken`: it stops working; disabling it again changes nothing.
    pub(crate) fn disable(&mut self, name: &str, at: i64) -> Result<(), Error> {
        let record = self
            .tokens
            .get_mut(name)
            .ok_or_else(|| Error::NotFound(format!("token {name:?}")))?;
        if record.disabled_at == 0 {
            record.disabled_at = at;
        }
        Ok(())
    }

    /// `DeleteToken`: it is forgotten.
    pub(crate) fn delete(&mut self, name: &str) -> Result<(), Error> {
        self.tokens
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| Error::NotFound(format!("token {name:?}")))
    }
}

fn check_hash(hash: &str) -> Result<(), Error> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Error::invalid("hash", "must be 64 lowercase hex digits (a SHA-256)"));
    }
    Ok(())
}

/// Checks namespace patterns: one to [`MAX_TOKEN_NAMESPACES`], each a namespace id in which `*` may stand
/// for any run of characters.
pub fn check_patterns(patterns: &[String]) -> Result<(), Error> {
    if patterns.is_empty() {
        return Err(Error::invalid(
            "namespaces",
            "name at least one namespace or pattern (`*` for all)",
        ));
    }
    if patterns.len() > MAX_TOKEN_NAMESPACES {
        return Err(Error::invalid(
            "namespaces",
            format!("at most {MAX_TOKEN_NAMESPACES} patterns"),
        ));
    }
    for (i, pattern) in patterns.iter().enumerate() {
        let valid = !pattern.is_empty()
            && pattern.len() <= crate::MAX_ID_LEN
            && pattern
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*'));
        if !valid {
            return Err(Error::invalid(
                format!("namespaces[{i}]"),
                format!("{pattern:?} is not a namespace or a pattern of [a-z0-9_-] and `*`"),
            ));
        }
    }
    Ok(())
}

/// Whether `namespace` matches `pattern`, where `*` stands for any run of characters.
pub(crate) fn matches(pattern: &str, namespace: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = namespace.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Who is calling the API, as the token it presented says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (`admin` for the bootstrap token).
    pub name: String,
    pub role: TokenRole,
    /// The namespace patterns it is scoped to.
    pub namespaces: Vec<String>,
    /// For a run's task token (`inject_api_token`), the run it speaks for: it may only read that run
    /// and start runs of its pipeline ([`RUN_TOKEN_METHODS`], [`authorize_target`]).
    pub run: Option<Box<RunScope>>,
}

/// What every run task token starts with, so that a node tells it from an API token at once (the token
/// itself is made and checked by `gofer_secrets::Keyring`).
pub const RUN_TOKEN_PREFIX: &str = "gofer_run/";

/// The run a task token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunScope {
    pub namespace: String,
    pub pipeline: String,
    pub run: u64,
}

impl fmt::Display for RunScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.pipeline, self.run)
    }
}

/// What a run's task token may call: read its own run (its tasks and their logs included), start runs of
/// its own pipeline, and put, get, list and delete its run's objects and its pipeline's.
pub const RUN_TOKEN_METHODS: [Method; 10] = [
    Method::GetRun,
    Method::WatchRun,
    Method::ListTaskExecutions,
    Method::GetTaskLogs,
    Method::StartRun,
    Method::WhoAmI,
    Method::PutObject,
    Method::GetObject,
    Method::ListObjects,
    Method::DeleteObject,
];

/// Whether `method` works on objects, which a run's task token reaches for its run and its pipeline.
fn on_objects(method: Method) -> bool {
    matches!(
        method,
        Method::PutObject | Method::GetObject | Method::ListObjects | Method::DeleteObject
    )
}

impl Caller {
    /// The caller a run's task token speaks for, while the run is not over.
    pub fn of_run(run: RunScope) -> Caller {
        Caller {
            name: format!("run {run}"),
            role: TokenRole::Operator,
            namespaces: vec![run.namespace.clone()],
            run: Some(Box::new(run)),
        }
    }

    /// The bootstrap admin token that `goferd dev` writes and `goferd server --admin-token-file` reads.
    pub fn bootstrap_admin() -> Caller {
        Caller {
            name: "admin".to_string(),
            role: TokenRole::Admin,
            namespaces: vec!["*".to_string()],
            run: None,
        }
    }

    /// The caller a stored token speaks for.
    pub fn of_token(name: &str, record: &TokenRecord) -> Caller {
        Caller {
            name: name.to_string(),
            role: record.role,
            namespaces: record.namespaces.clone(),
            run: None,
        }
    }

    /// Whether the caller may see what is in `namespace` at all.
    pub fn sees(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|p| matches(p, namespace))
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(run) = &self.run {
            return write!(f, "the task token of run {run}");
        }
        write!(
            f,
            "token {} ({} on {})",
            self.name,
            self.role,
            self.namespaces.join(", ")
        )
    }
}

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Reading.
    Read,
    /// Changing pipelines, runs and subscriptions.
    Operate,
    /// Changing who may do what, and the cluster itself.
    Administer,
}

/// A call to the public API, by its RPC name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    CreateNamespace,
    ListNamespaces,
    RegisterPipeline,
    ListPipelines,
    GetPipeline,
    StartRun,
    RetryRun,
    GetRun,
    ListRuns,
    CancelRun,
    WatchRun,
    ListTaskExecutions,
    InstallExtension,
    UninstallExtension,
    ListExtensions,
    GetExtension,
    CreateSubscription,
    ListSubscriptions,
    GetSubscription,
    DeleteSubscription,
    GetClusterStatus,
    AddClusterNode,
    RemoveClusterNode,
    GetTaskLogs,
    ListEvents,
    CreateToken,
    ListTokens,
    GetToken,
    DisableToken,
    DeleteToken,
    WhoAmI,
    PutSecret,
    ListSecrets,
    DeleteSecret,
    PutGlobalSecret,
    ListGlobalSecrets,
    DeleteGlobalSecret,
    RotateSecretKey,
    PutObject,
    GetObject,
    ListObjects,
    DeleteObject,
}

impl Method {
    /// Every method, for tests that walk the whole matrix.
    pub const ALL: [Method; 42] = [
        Method::CreateNamespace,
        Method::ListNamespaces,
        Method::RegisterPipeline,
        Method::ListPipelines,
        Method::GetPipeline,
        Method::StartRun,
        Method::RetryRun,
        Method::GetRun,
        Method::ListRuns,
        Method::CancelRun,
        Method::WatchRun,
        Method::ListTaskExecutions,
        Method::InstallExtension,
        Method::UninstallExtension,
        Method::ListExtensions,
        Method::GetExtension,
        Method::CreateSubscription,
        Method::ListSubscriptions,
        Method::GetSubscription,
        Method::DeleteSubscription,
        Method::GetClusterStatus,
        Method::AddClusterNode,
        Method::RemoveClusterNode,
        Method::GetTaskLogs,
        Method::ListEvents,
        Method::CreateToken,
        Method::ListTokens,
        Method::GetToken,
        Method::DisableToken,
        Method::DeleteToken,
        Method::WhoAmI,
        Method::PutSecret,
        Method::ListSecrets,
        Method::DeleteSecret,
        Method::PutGlobalSecret,
        Method::ListGlobalSecrets,
        Method::DeleteGlobalSecret,
        Method::RotateSecretKey,
        Method::PutObject,
        Method::GetObject,
        Method::ListObjects,
        Method::DeleteObject,
    ];

    /// The method an RPC name (`StartRun`) names.
    pub fn from_rpc(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// The RPC's name: `StartRun`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::CreateNamespace => "CreateNamespace",
            Method::ListNamespaces => "ListNamespaces",
            Method::RegisterPipeline => "RegisterPipeline",
            Method::ListPipelines => "ListPipelines",
            Method::GetPipeline => "GetPipeline",
            Method::StartRun => "StartRun",
            Method::RetryRun => "RetryRun",
            Method::GetRun => "GetRun",
            Method::ListRuns => "ListRuns",
            Method::CancelRun => "CancelRun",
            Method::WatchRun => "WatchRun",
            Method::ListTaskExecutions => "ListTaskExecutions",
            Method::InstallExtension => "InstallExtension",
            Method::UninstallExtension => "UninstallExtension",
            Method::ListExtensions => "ListExtensions",
            Method::GetExtension => "GetExtension",
            Method::CreateSubscription => "CreateSubscription",
            Method::ListSubscriptions => "ListSubscriptions",
            Method::GetSubscription => "GetSubscription",
            Method::DeleteSubscription => "DeleteSubscription",
            Method::GetClusterStatus => "GetClusterStatus",
            Method::AddClusterNode => "AddClusterNode",
            Method::RemoveClusterNode => "RemoveClusterNode",
            Method::GetTaskLogs => "GetTaskLogs",
            Method::ListEvents => "ListEvents",
            Method::CreateToken => "CreateToken",
            Method::ListTokens => "ListTokens",
            Method::GetToken => "GetToken",
            Method::DisableToken => "DisableToken",
            Method::DeleteToken => "DeleteToken",
            Method::WhoAmI => "WhoAmI",
            Method::PutSecret => "PutSecret",
            Method::ListSecrets => "ListSecrets",
            Method::DeleteSecret => "DeleteSecret",
            Method::PutGlobalSecret => "PutGlobalSecret",
            Method::ListGlobalSecrets => "ListGlobalSecrets",
            Method::DeleteGlobalSecret => "DeleteGlobalSecret",
            Method::RotateSecretKey => "RotateSecretKey",
            Method::PutObject => "PutObject",
            Method::GetObject => "GetObject",
            Method::ListObjects => "ListObjects",
            Method::DeleteObject => "DeleteObject",
        }
    }

    /// The right the method needs.
    pub fn right(self) -> Right {
        use Method::*;
        match self {
            CreateNamespace | InstallExtension | UninstallExtension | AddClusterNode | RemoveClusterNode
            | CreateToken | ListTokens | GetToken | DisableToken | DeleteToken | PutGlobalSecret
            | ListGlobalSecrets | DeleteGlobalSecret | RotateSecretKey => Right::Administer,
            RegisterPipeline | StartRun | RetryRun | CancelRun | CreateSubscription | DeleteSubscription
            | PutSecret | DeleteSecret | PutObject | DeleteObject => Right::Operate,
            ListNamespaces | ListPipelines | GetPipeline | GetRun | ListRuns | WatchRun | ListTaskExecutions
            | ListExtensions | GetExtension | ListSubscriptions | GetSubscription | GetClusterStatus | GetTaskLogs
            | ListEvents | WhoAmI | ListSecrets | GetObject | ListObjects => Right::Read,
        }
    }

    /// Whether the method acts in one namespace (which the request names), rather than on the cluster.
    /// A cluster-wide list (namespaces, events) answers only with what the caller [`Caller::sees`].
    pub fn in_namespace(self) -> bool {
        use Method::*;
        matches!(
            self,
            RegisterPipeline
                | ListPipelines
                | GetPipeline
                | StartRun
                | RetryRun
                | GetRun
                | ListRuns
                | CancelRun
                | WatchRun
                | ListTaskExecutions
                | CreateSubscription
                | ListSubscriptions
                | GetSubscription
                | DeleteSubscription
                | GetTaskLogs
                | PutSecret
                | ListSecrets
                | DeleteSecret
                | PutObject
                | GetObject
                | ListObjects
                | DeleteObject
        )
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused call: who could not do what, where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{caller} cannot {method}{}", .namespace.as_ref().map(|n| format!(" in {n}")).unwrap_or_default())]
pub struct Denied {
    pub caller: Caller,
    pub method: Method,
    pub namespace: Option<String>,
}

/// Whether `caller` may call `method` in `namespace` (`None` for a method that acts on the cluster, or to
/// ask whether the caller may call the method in any namespace at all).
pub fn authorize(caller: &Caller, method: Method, namespace: Option<&str>) -> Result<(), Denied> {
    let denied = || Denied {
        caller: caller.clone(),
        method,
        namespace: namespace.map(str::to_string),
    };
    if !caller.role.holds(method.right()) {
        return Err(denied());
    }
    if caller.run.is_some() && !RUN_TOKEN_METHODS.contains(&method) {
        return Err(denied());
    }
    match namespace {
        Some(namespace) if !caller.sees(namespace) => Err(denied()),
        _ => Ok(()),
    }
}

/// Whether `caller`, already admitted to `method` in `namespace`, may act on `pipeline` and `run` (0 for
/// a call on the pipeline): a run's task token only on its own run, and for `StartRun` and objects on its
/// own pipeline; every other caller anywhere its namespaces reach.
pub fn authorize_target(
    caller: &Caller,
    method: Method,
    namespace: &str,
    pipeline: &str,
    run: u64,
) -> Result<(), Denied> {
    let Some(own) = &caller.run else {
        return Ok(());
    };
    let admitted = own.namespace == namespace
        && own.pipeline == pipeline
        && (method == Method::StartRun
            || method == Method::WhoAmI
            || own.run == run
            || (on_objects(method) && run == 0));
    if admitted {
        return Ok(());
    }
    Err(Denied {
        caller: caller.clone(),
        method,
        namespace: Some(match run {
            0 => format!("{namespace}/{pipeline}"),
            run => format!("{namespace}/{pipeline}/{run}"),
        }),
    })
}

#[cfg(test)]
mod tests;
