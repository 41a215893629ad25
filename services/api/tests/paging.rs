//! Every List call pages: more items than a page come back a page at a time, each exactly once and in
//! the listing's order, also while the list changes between pages; a token sees only what it may, in
//! full pages; a bad page size or token is refused naming the field. The calls go to the real handlers
//! on a single-node state, as the `AuthLayer` would hand them a caller.

use gofer_api::{ApiService, Deps, NoTriggers};
use gofer_auth::Principal;
use gofer_clock::Clock;
use gofer_domain::Command;
use gofer_domain::access::{Caller, TokenRole};
use gofer_proto::v1::{self, gofer_service_server::GoferService};
use gofer_state::{StateHandle, StateNode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Code, Request, Status};

struct Fixture {
    api: ApiService,
    state: StateHandle,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let state = StateHandle::from(StateNode::open_single(&dir.path().join("state")).await.unwrap());
        let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let deps = Deps {
            state: state.clone(),
            logs: None,
            triggers: std::sync::Arc::new(NoTriggers),
            clock: Clock::manual(1_700_000_000_000).0,
            keyring: std::sync::Arc::new(gofer_secrets::Keyring::new(
                gofer_secrets::Key::from_bytes(&[7; 32]),
                vec![],
            )),
        };
        let api = gofer_api::run(gofer_api::Config::default(), deps, &tracker, &shutdown).await;
        let fixture = Fixture {
            api,
            state,
            tracker,
            shutdown,
            _dir: dir,
        };
        fixture.propose(r#"{"type":"init","cluster_id":"c","at":1}"#).await;
        fixture
    }

    /// Commits one command, written as the persisted format spells it.
    async fn propose(&self, command: &str) {
        let command: Command = serde_json::from_str(command).unwrap();
        self.state.propose(command).await.unwrap();
    }

    async fn pipeline(&self, namespace: &str, id: &str) {
        self.propose(&format!(
            r#"{{"type":"register_pipeline","namespace":"{namespace}","config":{{"id":"{id}","name":"{id}","description":"","parallelism":0,"tasks":[{{"id":"a","image":"img:1"}},{{"id":"b","image":"img:1"}},{{"id":"c","image":"img:1"}},{{"id":"d","image":"img:1"}},{{"id":"e","image":"img:1"}}]}},"at":2}}"#
        ))
        .await;
    }

    async fn start_run(&self, pipeline: &str) {
        self.propose(&format!(
            r#"{{"type":"start_run","namespace":"default","pipeline":"{pipeline}","at":3}}"#
        ))
        .await;
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(std::time::Duration::from_secs(10), self.tracker.wait()).await;
        assert!(
            drained.is_ok(),
            "{} tasks still run 10 s after shutdown",
            self.tracker.len()
        );
    }
}

fn as_admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(Principal::Admin);
    request
}

fn as_caller<T>(caller: &Caller, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(Principal::Caller(caller.clone()));
    request
}

/// Calls `list` with `token`, then with the token each page gives, until a page gives none; returns the
/// pages. Fails the test past 100 pages.
async fn pages_from<T>(
    mut token: String,
    mut list: impl AsyncFnMut(String) -> Result<(Vec<T>, String), Status>,
) -> Vec<Vec<T>> {
    let mut pages = Vec::new();
    loop {
        let (page, next) = list(token).await.unwrap();
        pages.push(page);
        if next.is_empty() {
            return pages;
        }
        assert!(pages.len() < 100, "a listing that never ends");
        token = next;
    }
}

/// Every page of a listing, from the first.
async fn pages<T>(list: impl AsyncFnMut(String) -> Result<(Vec<T>, String), Status>) -> Vec<Vec<T>> {
    pages_from(String::new(), list).await
}

fn lengths<T>(pages: &[Vec<T>]) -> Vec<usize> {
    pages.iter().map(Vec::len).collect()
}

fn refused_naming<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(field), "{status:?} should name {field}");
}

async fn runs_page(
    fixture: &Fixture,
    pipeline: &str,
    page_size: i32,
    page_token: String,
) -> Result<(Vec<u64>, String), Status> {
    let request = v1::ListRunsRequest {
        namespace_id: "default".into(),
        pipeline_id: pipeline.into(),
        page_size,
        page_token,
    };
    let response = fixture.api.list_runs(as_admin(request)).await?.into_inner();
    Ok((response.runs.iter().map(|r| r.id).collect(), response.next_page_token))
}

#[tokio::test]
async fn runs_page_newest_first_each_once_while_new_runs_start() {
    let fixture = Fixture::new().await;
    fixture.pipeline("default", "p").await;
    for _ in 0..250 {
        fixture.start_run("p").await;
    }

    let all = pages(async |token| runs_page(&fixture, "p", 100, token).await).await;
    assert_eq!(lengths(&all), [100, 100, 50]);
    assert_eq!(all.concat(), (1..=250).rev().collect::<Vec<u64>>());

    // Runs that start after the first page are newer than any on it: the pages after it go on with the
    // older ones, so the 250 that were there come back once each, still newest first.
    let (first, token) = runs_page(&fixture, "p", 100, String::new()).await.unwrap();
    for _ in 0..5 {
        fixture.start_run("p").await;
    }
    let rest = pages_from(token, async |token| runs_page(&fixture, "p", 100, token).await).await;
    assert_eq!([first, rest.concat()].concat(), (1..=250).rev().collect::<Vec<u64>>());

    // The default page is 100, and a page size past the maximum is taken as the maximum.
    let (default, _) = runs_page(&fixture, "p", 0, String::new()).await.unwrap();
    assert_eq!(default.len(), gofer_api::DEFAULT_PAGE_SIZE);
    let (large, next) = runs_page(&fixture, "p", i32::MAX, String::new()).await.unwrap();
    assert_eq!((large.len(), next.as_str()), (255, ""));
    fixture.stop().await;
}

#[tokio::test]
async fn a_bad_page_size_or_token_is_refused_naming_the_field() {
    let fixture = Fixture::new().await;
    fixture.pipeline("default", "p").await;
    fixture.pipeline("default", "q").await;
    for _ in 0..3 {
        fixture.start_run("p").await;
    }
    refused_naming(runs_page(&fixture, "p", -1, String::new()).await, "page_size");
    refused_naming(runs_page(&fixture, "p", 1, "not a token".into()).await, "page_token");
    let (_, token) = runs_page(&fixture, "p", 1, String::new()).await.unwrap();
    // The token of one pipeline's runs does not page another's, nor another listing.
    refused_naming(runs_page(&fixture, "q", 1, token.clone()).await, "page_token");
    let tokens = v1::ListTokensRequest {
        page_size: 1,
        page_token: token.clone(),
    };
    refused_naming(fixture.api.list_tokens(as_admin(tokens)).await, "page_token");
    let pipelines = v1::ListPipelinesRequest {
        namespace_id: String::new(),
        page_size: 0,
        page_token: token,
    };
    refused_naming(fixture.api.list_pipelines(as_admin(pipelines)).await, "page_token");
    fixture.stop().await;
}

#[tokio::test]
async fn namespaces_page_over_those_the_token_sees() {
    let fixture = Fixture::new().await;
    // Namespaces the caller sees and others, interleaved in the order of ids.
    for i in 0..30 {
        for team in ["a", "b"] {
            let id = format!("n{i:02}-{team}");
            fixture
                .propose(&format!(r#"{{"type":"create_namespace","namespace":"{id}","at":2}}"#))
                .await;
        }
    }
    let viewer = Caller {
        name: "viewer".into(),
        role: TokenRole::Viewer,
        namespaces: vec!["*-a".into()],
        run: None,
    };
    let list = async |caller: &Caller, token: String| {
        let request = v1::ListNamespacesRequest {
            page_size: 7,
            page_token: token,
        };
        let response = fixture
            .api
            .list_namespaces(as_caller(caller, request))
            .await?
            .into_inner();
        let ids: Vec<String> = response.namespaces.into_iter().map(|n| n.id).collect();
        Ok((ids, response.next_page_token))
    };
    let seen = pages(async |token| list(&viewer, token).await).await;
    // Full pages of what the viewer sees: 30 namespaces in pages of 7.
    assert_eq!(lengths(&seen), [7, 7, 7, 7, 2]);
    let expected: Vec<String> = (0..30).map(|i| format!("n{i:02}-a")).collect();
    assert_eq!(seen.concat(), expected);

    let admin = Caller::bootstrap_admin();
    let everything = pages(async |token| list(&admin, token).await).await;
    assert_eq!(everything.concat().len(), 61, "60 namespaces and default");
    fixture.stop().await;
}

#[tokio::test]
async fn tokens_page_by_name_and_a_change_between_pages_skips_or_repeats_none_that_stayed() {
    let fixture = Fixture::new().await;
    let create = async |name: &str| {
        let hash = gofer_auth::hash_hex(&gofer_auth::hash_token(name));
        fixture
            .propose(&format!(
                r#"{{"type":"create_token","name":"{name}","role":"viewer","namespaces":["default"],"hash":"{hash}","at":2}}"#
            ))
            .await
    };
    for i in 0..12 {
        create(&format!("t{i:02}")).await;
    }
    let list = async |token: String| {
        let request = v1::ListTokensRequest {
            page_size: 5,
            page_token: token,
        };
        let response = fixture.api.list_tokens(as_admin(request)).await?.into_inner();
        let names: Vec<String> = response.tokens.into_iter().map(|t| t.name).collect();
        Ok((names, response.next_page_token))
    };
    let (first, token) = list(String::new()).await.unwrap();
    assert_eq!(first, ["t00", "t01", "t02", "t03", "t04"]);
    // Between pages: the token the cursor stands on and one not listed yet go; one before the cursor and
    // one after it come.
    for gone in ["t04", "t07"] {
        fixture
            .propose(&format!(r#"{{"type":"delete_token","name":"{gone}","at":3}}"#))
            .await;
    }
    create("t015").await;
    create("t085").await;
    let rest = pages_from(token, list).await.concat();
    assert_eq!(rest, ["t05", "t06", "t08", "t085", "t09", "t10", "t11"]);
    fixture.stop().await;
}

#[tokio::test]
async fn pipelines_task_executions_extensions_and_subscriptions_page_too() {
    let fixture = Fixture::new().await;
    for id in ["p1", "p2", "p3", "p4", "p5"] {
        fixture.pipeline("default", id).await;
    }
    let pipelines = pages(async |token| {
        let request = v1::ListPipelinesRequest {
            namespace_id: "default".into(),
            page_size: 2,
            page_token: token,
        };
        let response = fixture.api.list_pipelines(as_admin(request)).await?.into_inner();
        let ids: Vec<String> = response.pipelines.into_iter().map(|p| p.id).collect();
        Ok((ids, response.next_page_token))
    })
    .await;
    assert_eq!(lengths(&pipelines), [2, 2, 1]);
    assert_eq!(pipelines.concat(), ["p1", "p2", "p3", "p4", "p5"]);

    fixture.start_run("p1").await;
    let tasks = pages(async |token| {
        let request = v1::ListTaskExecutionsRequest {
            namespace_id: "default".into(),
            pipeline_id: "p1".into(),
            run_id: 1,
            page_size: 2,
            page_token: token,
        };
        let response = fixture.api.list_task_executions(as_admin(request)).await?.into_inner();
        let ids: Vec<String> = response.task_executions.into_iter().map(|t| t.task_id).collect();
        Ok((ids, response.next_page_token))
    })
    .await;
    assert_eq!(lengths(&tasks), [2, 2, 1]);
    assert_eq!(tasks.concat(), ["a", "b", "c", "d", "e"]);

    for name in ["x1", "x2", "x3"] {
        fixture
            .propose(&format!(
                r#"{{"type":"install_extension","name":"{name}","image":"img:1","settings":{{}},"at":4}}"#
            ))
            .await;
    }
    let extensions = pages(async |token| {
        let request = v1::ListExtensionsRequest {
            page_size: 2,
            page_token: token,
        };
        let response = fixture.api.list_extensions(as_admin(request)).await?.into_inner();
        let names: Vec<String> = response.extensions.into_iter().map(|e| e.name).collect();
        Ok((names, response.next_page_token))
    })
    .await;
    assert_eq!(lengths(&extensions), [2, 1]);
    assert_eq!(extensions.concat(), ["x1", "x2", "x3"]);

    fixture
        .propose(r#"{"type":"register_extension","name":"interval","builtin":true,"registration":{"version":"1","documentation":"","settings":[{"name":"every","required":true,"description":"","secret":false}],"registered_at":5},"at":5}"#)
        .await;
    for label in ["s1", "s2", "s3"] {
        fixture
            .propose(&format!(
                r#"{{"type":"create_subscription","namespace":"default","pipeline":"p2","label":"{label}","extension":"interval","settings":{{"every":"1m"}},"at":6}}"#
            ))
            .await;
    }
    let subscriptions = pages(async |token| {
        let request = v1::ListSubscriptionsRequest {
            namespace_id: "default".into(),
            pipeline_id: "p2".into(),
            page_size: 2,
            page_token: token,
        };
        let response = fixture.api.list_subscriptions(as_admin(request)).await?.into_inner();
        let labels: Vec<String> = response.subscriptions.into_iter().map(|s| s.label).collect();
        Ok((labels, response.next_page_token))
    })
    .await;
    assert_eq!(lengths(&subscriptions), [2, 1]);
    assert_eq!(subscriptions.concat(), ["s1", "s2", "s3"]);
    fixture.stop().await;
}

#[tokio::test]
async fn secrets_page_by_key_in_their_pipeline_and_globally() {
    let fixture = Fixture::new().await;
    fixture.pipeline("default", "p").await;
    for i in 0..7 {
        let key = format!("k{i}");
        let pipeline = v1::PutSecretRequest {
            namespace_id: "default".into(),
            pipeline_id: "p".into(),
            key: key.clone(),
            value: b"a value".to_vec(),
        };
        fixture.api.put_secret(as_admin(pipeline)).await.unwrap();
        let global = v1::PutGlobalSecretRequest {
            key,
            value: b"a value".to_vec(),
            namespaces: vec!["*".into()],
        };
        fixture.api.put_global_secret(as_admin(global)).await.unwrap();
    }
    let of_pipeline = pages(async |page_token: String| {
        let request = v1::ListSecretsRequest {
            namespace_id: "default".into(),
            pipeline_id: "p".into(),
            page_size: 3,
            page_token,
        };
        let response = fixture.api.list_secrets(as_admin(request)).await?.into_inner();
        let keys: Vec<String> = response.secrets.into_iter().map(|s| s.key).collect();
        Ok((keys, response.next_page_token))
    })
    .await;
    assert_eq!(lengths(&of_pipeline), [3, 3, 1]);
    assert_eq!(of_pipeline.concat(), ["k0", "k1", "k2", "k3", "k4", "k5", "k6"]);
    let global = pages(async |page_token: String| {
        let request = v1::ListGlobalSecretsRequest {
            page_size: 4,
            page_token,
        };
        let response = fixture.api.list_global_secrets(as_admin(request)).await?.into_inner();
        let keys: Vec<String> = response.secrets.into_iter().map(|s| s.key).collect();
        Ok((keys, response.next_page_token))
    })
    .await;
    assert_eq!(lengths(&global), [4, 3]);
    assert_eq!(global.concat().len(), 7);
    // A page token of one listing is no token of another.
    let (_, token) = {
        let request = v1::ListGlobalSecretsRequest {
            page_size: 1,
            page_token: String::new(),
        };
        let response = fixture
            .api
            .list_global_secrets(as_admin(request))
            .await
            .unwrap()
            .into_inner();
        (response.secrets, response.next_page_token)
    };
    let other = v1::ListSecretsRequest {
        namespace_id: "default".into(),
        pipeline_id: "p".into(),
        page_size: 1,
        page_token: token,
    };
    refused_naming(fixture.api.list_secrets(as_admin(other)).await, "page_token");
    fixture.stop().await;
}
