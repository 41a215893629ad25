//! The whole authorization matrix: every method × each role × in and out of its namespaces, against a
//! table written out here independently of the policy; and the token table's own rules.

use super::*;

/// What each method needs, written out: `A` administer, `O` operate, `R` read; and whether it acts in a
/// namespace (`n`) or on the cluster (`c`).
const MATRIX: [(Method, char, char); 42] = [
    (Method::CreateNamespace, 'A', 'c'),
    (Method::ListNamespaces, 'R', 'c'),
    (Method::RegisterPipeline, 'O', 'n'),
    (Method::ListPipelines, 'R', 'n'),
    (Method::GetPipeline, 'R', 'n'),
    (Method::StartRun, 'O', 'n'),
    (Method::RetryRun, 'O', 'n'),
    (Method::GetRun, 'R', 'n'),
    (Method::ListRuns, 'R', 'n'),
    (Method::CancelRun, 'O', 'n'),
    (Method::WatchRun, 'R', 'n'),
    (Method::ListTaskExecutions, 'R', 'n'),
    (Method::InstallExtension, 'A', 'c'),
    (Method::UninstallExtension, 'A', 'c'),
    (Method::ListExtensions, 'R', 'c'),
    (Method::GetExtension, 'R', 'c'),
    (Method::CreateSubscription, 'O', 'n'),
    (Method::ListSubscriptions, 'R', 'n'),
    (Method::GetSubscription, 'R', 'n'),
    (Method::DeleteSubscription, 'O', 'n'),
    (Method::GetClusterStatus, 'R', 'c'),
    (Method::AddClusterNode, 'A', 'c'),
    (Method::RemoveClusterNode, 'A', 'c'),
    (Method::GetTaskLogs, 'R', 'n'),
    (Method::ListEvents, 'R', 'c'),
    (Method::CreateToken, 'A', 'c'),
    (Method::ListTokens, 'A', 'c'),
    (Method::GetToken, 'A', 'c'),
    (Method::DisableToken, 'A', 'c'),
    (Method::DeleteToken, 'A', 'c'),
    (Method::WhoAmI, 'R', 'c'),
    (Method::PutSecret, 'O', 'n'),
    (Method::ListSecrets, 'R', 'n'),
    (Method::DeleteSecret, 'O', 'n'),
    (Method::PutGlobalSecret, 'A', 'c'),
    (Method::ListGlobalSecrets, 'A', 'c'),
    (Method::DeleteGlobalSecret, 'A', 'c'),
    (Method::RotateSecretKey, 'A', 'c'),
    (Method::PutObject, 'O', 'n'),
    (Method::GetObject, 'R', 'n'),
    (Method::ListObjects, 'R', 'n'),
    (Method::DeleteObject, 'O', 'n'),
];

fn caller(role: TokenRole, namespaces: &[&str]) -> Caller {
    Caller {
        name: "t".into(),
        role,
        namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        run: None,
    }
}

#[test]
fn every_method_by_every_role_in_and_out_of_its_namespaces() {
    assert_eq!(
        MATRIX.iter().map(|(m, _, _)| *m).collect::<Vec<_>>(),
        Method::ALL,
        "the table names every method once, in order"
    );
    for (method, right, place) in MATRIX {
        assert_eq!(Method::from_rpc(method.as_str()), Some(method));
        assert_eq!(method.in_namespace(), place == 'n', "{method}");
        for role in [TokenRole::Admin, TokenRole::Operator, TokenRole::Viewer] {
            let may = matches!(
                (role, right),
                (TokenRole::Admin, _) | (TokenRole::Operator, 'O' | 'R') | (TokenRole::Viewer, 'R')
            );
            let scoped = caller(role, &["team-a", "team-b-*"]);
            if place == 'n' {
                for inside in ["team-a", "team-b-x", "team-b-"] {
                    let got = authorize(&scoped, method, Some(inside));
                    assert_eq!(got.is_ok(), may, "{role} {method} in {inside}: {got:?}");
                }
                for outside in ["team-c", "team-ab", "team-b", "default"] {
                    let got = authorize(&scoped, method, Some(outside));
                    assert!(got.is_err(), "{role} {method} in {outside}: {got:?}");
                }
                let everywhere = caller(role, &["*"]);
                assert_eq!(
                    authorize(&everywhere, method, Some("team-c")).is_ok(),
                    may,
                    "{role} {method} in *"
                );
            } else {
                assert_eq!(
                    authorize(&scoped, method, None).is_ok(),
                    may,
                    "{role} {method} on the cluster"
                );
            }
        }
    }
}

#[test]
fn an_admin_acts_everywhere_and_a_refusal_names_who_what_and_where() {
    let admin = Caller::bootstrap_admin();
    for method in Method::ALL {
        assert!(authorize(&admin, method, Some("anything")).is_ok(), "{method}");
    }
    let viewer = caller(TokenRole::Viewer, &["team-a"]);
    let denied = authorize(&viewer, Method::StartRun, Some("team-b")).unwrap_err();
    assert_eq!(
        denied.to_string(),
        "token t (viewer on team-a) cannot StartRun in team-b"
    );
    let denied = authorize(&viewer, Method::CreateToken, None).unwrap_err();
    assert_eq!(denied.to_string(), "token t (viewer on team-a) cannot CreateToken");
}

#[test]
fn patterns_match_whole_namespaces_with_stars_for_any_run() {
    for (pattern, namespace, expected) in [
        ("team-a", "team-a", true),
        ("team-a", "team-ab", false),
        ("team-a-*", "team-a-x", true),
        ("team-a-*", "team-a-", true),
        ("team-a-*", "team-a", false),
        ("*", "anything", true),
        ("*-prod", "web-prod", true),
        ("*-prod", "web-prod-2", false),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxcyyb", false),
        ("a**", "a", true),
    ] {
        assert_eq!(matches(pattern, namespace), expected, "{pattern} ~ {namespace}");
    }
}

fn record(role: TokenRole, namespaces: &[&str], hash: char) -> TokenRecord {
    TokenRecord {
        role,
        namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        hash: hash.to_string().repeat(64),
        created_at: 10,
        expires_at: 0,
        disabled_at: 0,
    }
}

#[test]
fn tokens_are_created_once_found_by_hash_disabled_and_deleted() {
    let mut tokens = Tokens::default();
    tokens
        .create("ci-bot", record(TokenRole::Operator, &["team-a"], 'a'))
        .unwrap();
    assert!(matches!(
        tokens.create("ci-bot", record(TokenRole::Viewer, &["x"], 'b')),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        tokens.create("other", record(TokenRole::Viewer, &["x"], 'a')),
        Err(Error::AlreadyExists(_))
    ));
    tokens
        .create("boss", record(TokenRole::Admin, &["team-a"], 'c'))
        .unwrap();
    assert_eq!(tokens.tokens["boss"].namespaces, ["*"], "an admin acts everywhere");
    let (name, found) = tokens.by_hash(&"a".repeat(64)).unwrap();
    assert_eq!((name, found.role), ("ci-bot", TokenRole::Operator));
    assert!(found.works_at(11));
    tokens.disable("ci-bot", 20).unwrap();
    tokens.disable("ci-bot", 30).unwrap();
    assert_eq!(tokens.tokens["ci-bot"].disabled_at, 20);
    assert!(!tokens.tokens["ci-bot"].works_at(21));
    tokens.delete("ci-bot").unwrap();
    assert!(tokens.by_hash(&"a".repeat(64)).is_none());
    assert!(matches!(tokens.delete("ci-bot"), Err(Error::NotFound(_))));
}

#[test]
fn bad_tokens_are_refused_naming_the_field() {
    let mut tokens = Tokens::default();
    let cases = [
        ("Bad Name", record(TokenRole::Viewer, &["x"], 'a'), "name"),
        ("t", record(TokenRole::Viewer, &[], 'a'), "namespaces"),
        ("t", record(TokenRole::Viewer, &["Team"], 'a'), "namespaces[0]"),
        ("t", record(TokenRole::Viewer, &["x", "a/b"], 'a'), "namespaces[1]"),
        ("t", record(TokenRole::Viewer, &["x"], 'g'), "hash"),
        (
            "t",
            TokenRecord {
                expires_at: 5,
                ..record(TokenRole::Viewer, &["x"], 'a')
            },
            "expires",
        ),
    ];
    for (name, record, field) in cases {
        match tokens.create(name, record) {
            Err(Error::InvalidArgument { field: named, .. }) => assert_eq!(named, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert!(tokens.is_empty());
}

#[test]
fn an_expired_token_stops_working_at_its_expiry() {
    let expiring = TokenRecord {
        expires_at: 100,
        ..record(TokenRole::Viewer, &["x"], 'a')
    };
    assert!(expiring.works_at(99));
    assert!(!expiring.works_at(100));
}

/// A run's task token: only its own run's reads and its own pipeline's StartRun, in its own namespace,
/// whatever its role would allow otherwise.
#[test]
fn a_run_token_reads_its_run_and_starts_its_pipeline_and_nothing_else() {
    let token = Caller::of_run(RunScope {
        namespace: "team-a".into(),
        pipeline: "build".into(),
        run: 7,
    });
    for method in Method::ALL {
        let allowed = RUN_TOKEN_METHODS.contains(&method);
        assert_eq!(authorize(&token, method, None).is_ok(), allowed, "{method}");
        assert_eq!(
            authorize(&token, method, Some("team-a")).is_ok(),
            allowed,
            "{method} in team-a"
        );
        assert!(authorize(&token, method, Some("team-b")).is_err(), "{method} in team-b");
    }
    for method in [
        Method::GetRun,
        Method::WatchRun,
        Method::ListTaskExecutions,
        Method::GetTaskLogs,
    ] {
        assert!(
            authorize_target(&token, method, "team-a", "build", 7).is_ok(),
            "{method}"
        );
        assert!(
            authorize_target(&token, method, "team-a", "build", 6).is_err(),
            "{method} of another run"
        );
        assert!(
            authorize_target(&token, method, "team-a", "deploy", 7).is_err(),
            "{method} of another pipeline"
        );
        assert!(
            authorize_target(&token, method, "team-b", "build", 7).is_err(),
            "{method} elsewhere"
        );
    }
    assert!(authorize_target(&token, Method::StartRun, "team-a", "build", 0).is_ok());
    // Objects: its own run's and its pipeline's (run 0), never another run's or pipeline's.
    for method in [
        Method::PutObject,
        Method::GetObject,
        Method::ListObjects,
        Method::DeleteObject,
    ] {
        assert!(
            authorize_target(&token, method, "team-a", "build", 7).is_ok(),
            "{method}"
        );
        assert!(
            authorize_target(&token, method, "team-a", "build", 0).is_ok(),
            "{method} of the pipeline"
        );
        assert!(
            authorize_target(&token, method, "team-a", "build", 6).is_err(),
            "{method} of another run"
        );
        assert!(
            authorize_target(&token, method, "team-a", "deploy", 0).is_err(),
            "{method} of another pipeline"
        );
    }
    let denied = authorize_target(&token, Method::StartRun, "team-a", "deploy", 0).unwrap_err();
    assert_eq!(
        denied.to_string(),
        "the task token of run team-a/build/7 cannot StartRun in team-a/deploy"
    );
    let denied = authorize(&token, Method::ListRuns, Some("team-a")).unwrap_err();
    assert_eq!(
        denied.to_string(),
        "the task token of run team-a/build/7 cannot ListRuns in team-a"
    );
    // Every other caller is held by its namespaces alone.
    let operator = caller(TokenRole::Operator, &["team-a"]);
    assert!(authorize_target(&operator, Method::GetRun, "team-a", "deploy", 3).is_ok());
}
