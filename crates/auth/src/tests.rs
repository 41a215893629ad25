//! The token table and the layer's decisions: who gets through to which service, and why not.

use std::sync::Arc;

use gofer_domain::access::TokenRole;

use gofer_tls::Roles;

use super::*;

fn headers(token: Option<&str>) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(http::header::AUTHORIZATION, token.parse().unwrap());
    }
    headers
}

/// The cluster's tokens, as a directory: `viewer-a` (viewer on team-a) only.
struct Cluster;

impl TokenDirectory for Cluster {
    fn caller(&self, hash: &str) -> Option<Caller> {
        (hash == hash_hex(&hash_token("viewer-a"))).then(|| Caller {
            name: "viewer-a".into(),
            role: TokenRole::Viewer,
            namespaces: vec!["team-a".into()],
            run: None,
        })
    }
}

fn auth() -> TokenAuth {
    TokenAuth::new(vec![
        (hash_token("s3cret"), Principal::Admin),
        (hash_token("exec"), Principal::Executor),
        (hash_token("ext"), Principal::Extension("ticker".into())),
    ])
    .with_directory(Arc::new(Cluster))
}

#[test]
fn a_token_is_found_among_the_nodes_own_then_the_clusters() {
    let auth = auth();
    assert_eq!(
        auth.principal(&headers(Some("Bearer s3cret"))).ok(),
        Some(Principal::Admin)
    );
    assert!(matches!(
        auth.principal(&headers(Some("Bearer viewer-a"))),
        Ok(Principal::Caller(c)) if c.name == "viewer-a"
    ));
    for bad in [None, Some("Bearer nope"), Some("s3cret"), Some("Basic s3cret")] {
        let status = auth.principal(&headers(bad)).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad:?}");
    }
}

#[test]
fn each_principal_reaches_only_its_services() {
    let auth = auth();
    let code = |path: &str, token: Option<&str>, cert: Option<Roles>| {
        auth.admit(path, &headers(token), &peer(cert)).err().map(|s| s.code())
    };
    const EXECUTOR: Option<Roles> = Some(Roles::of(Role::Executor));
    let denied = Some(tonic::Code::PermissionDenied);
    // Health needs nothing.
    assert_eq!(code("/grpc.health.v1.Health/Check", None, None), None);
    // The API takes API callers only.
    assert_eq!(
        code("/gofer.v1.GoferService/ListRuns", Some("Bearer s3cret"), None),
        None
    );
    assert_eq!(
        code("/gofer.v1.GoferService/ListRuns", Some("Bearer viewer-a"), None),
        None
    );
    assert_eq!(
        code("/gofer.v1.GoferService/ListRuns", Some("Bearer exec"), None),
        denied
    );
    assert_eq!(
        code("/gofer.v1.GoferService/ListRuns", Some("Bearer ext"), None),
        denied
    );
    assert_eq!(
        code("/gofer.v1.GoferService/ListRuns", None, EXECUTOR),
        Some(tonic::Code::Unauthenticated),
        "a certificate is no API token"
    );
    // The dispatch stream: the executor's token or a cluster certificate.
    assert_eq!(
        code("/gofer.v1.DispatchService/Dispatch", Some("Bearer exec"), None),
        None
    );
    assert_eq!(code("/gofer.v1.DispatchService/Dispatch", None, EXECUTOR), None);
    assert_eq!(
        code("/gofer.v1.DispatchService/Dispatch", Some("Bearer viewer-a"), None),
        denied
    );
    assert_eq!(
        code("/gofer.v1.DispatchService/Dispatch", Some("Bearer ext"), None),
        denied
    );
    // The extension stream: extensions.
    assert_eq!(
        code("/gofer.v1.ExtensionService/Connect", Some("Bearer ext"), None),
        None
    );
    assert_eq!(
        code("/gofer.v1.ExtensionService/Connect", Some("Bearer viewer-a"), None),
        denied
    );
    assert_eq!(
        code("/gofer.v1.ExtensionService/Connect", None, EXECUTOR),
        Some(tonic::Code::Unauthenticated)
    );
    // A certificate alone dispatches only if it is an executor's.
    let scheduler = Some(Roles::of(Role::Scheduler).with(Role::Api));
    assert_eq!(code("/gofer.v1.DispatchService/Dispatch", None, scheduler), denied);
    assert_eq!(code("/gofer.v1.DispatchService/Dispatch", None, Some(Roles::ALL)), None);
    // A certificate without a role gets nowhere, token or not, and is told how to get one.
    for path in ["/gofer.v1.DispatchService/Dispatch", "/gofer.v1.GoferService/ListRuns"] {
        assert_eq!(code(path, Some("Bearer s3cret"), Some(Roles::NONE)), denied, "{path}");
    }
    let roleless = auth
        .admit(
            "/gofer.v1.DispatchService/Dispatch",
            &headers(None),
            &peer(Some(Roles::NONE)),
        )
        .unwrap_err();
    assert!(
        roleless.message().contains("goferd certs issue NAME --role"),
        "{roleless:?}"
    );
}

/// Who the handshake showed: a verified certificate with `roles`, or no certificate.
fn peer(cert: Option<Roles>) -> Peer {
    match cert {
        Some(roles) => Peer {
            certificate: Some(std::sync::Arc::from(&b"verified"[..])),
            name: "caller".into(),
            roles,
            ..Peer::default()
        },
        None => Peer::default(),
    }
}

#[test]
fn the_layer_refuses_a_method_the_role_never_holds_and_names_it() {
    let status = auth()
        .admit(
            "/gofer.v1.GoferService/StartRun",
            &headers(Some("Bearer viewer-a")),
            &peer(None),
        )
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "token viewer-a (viewer on team-a) cannot StartRun");
    let admitted = auth()
        .admit(
            "/gofer.v1.GoferService/GetRun",
            &headers(Some("Bearer viewer-a")),
            &peer(None),
        )
        .unwrap();
    assert!(matches!(admitted, Some(Principal::Caller(_))));
}

#[test]
fn a_method_missing_from_the_policy_is_refused_to_all_but_an_admin() {
    let path = "/gofer.v1.GoferService/NotInThePolicy";
    let status = auth()
        .admit(path, &headers(Some("Bearer viewer-a")), &peer(None))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "token viewer-a (viewer on team-a) cannot call /gofer.v1.GoferService/NotInThePolicy: the method is not in \
         Gofer's access policy"
    );
    assert_eq!(
        auth()
            .admit(path, &headers(Some("Bearer s3cret")), &peer(None))
            .unwrap(),
        Some(Principal::Admin)
    );
}

#[test]
fn a_granted_token_can_be_revoked() {
    let auth = TokenAuth::default();
    auth.grant(hash_token("ext"), Principal::Extension("ticker".into()));
    assert_eq!(
        auth.principal(&headers(Some("Bearer ext"))).ok(),
        Some(Principal::Extension("ticker".into()))
    );
    auth.revoke(&hash_token("ext"));
    assert_eq!(
        auth.principal(&headers(Some("Bearer ext"))).unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
}
