//! The raft port's policy as a table: each role against each call and the commands that matter.

use std::sync::Arc;

use gofer_domain::access::TokenRole;
use gofer_domain::{AttemptRef, Command};
use gofer_tls::listen::Peer;

use super::*;

fn peer(roles: Roles) -> Peer {
    Peer {
        remote_addr: None,
        certificate: Some(Arc::from(&b"verified"[..])),
        name: "p".into(),
        roles,
    }
}

fn one(role: Role) -> Roles {
    Roles::of(role)
}

const CALLS: [RaftCall; 10] = [
    RaftCall::AppendEntries,
    RaftCall::Vote,
    RaftCall::InstallSnapshot,
    RaftCall::Propose,
    RaftCall::ReadIndex,
    RaftCall::ChangeMembership,
    RaftCall::ReadTaskLog,
    RaftCall::Follow,
    RaftCall::ClusterStatus,
    RaftCall::StoreTaskLog,
];

#[test]
fn each_role_may_make_only_its_calls() {
    use RaftCall::*;
    let table: [(Role, &[RaftCall]); 5] = [
        (Role::State, &CALLS),
        (
            Role::Api,
            &[Propose, ReadIndex, ChangeMembership, ReadTaskLog, Follow, ClusterStatus],
        ),
        (
            Role::Scheduler,
            &[Propose, ReadIndex, Follow, ClusterStatus, StoreTaskLog],
        ),
        (Role::ExtensionHost, &[Propose, ReadIndex, Follow, ClusterStatus]),
        (Role::Executor, &[]),
    ];
    for (role, allowed) in table {
        for call in CALLS {
            let verdict = may_call(&peer(one(role)), call);
            assert_eq!(verdict.is_ok(), allowed.contains(&call), "{role} {call:?}: {verdict:?}");
        }
    }
    for call in CALLS {
        assert!(may_call(&peer(Roles::ALL), call).is_ok(), "{call:?}");
        let roleless = may_call(&peer(Roles::NONE), call).unwrap_err();
        assert!(roleless.to_string().contains("goferd certs issue"), "{roleless}");
    }
    // The method names the generated service routes by.
    for call in CALLS {
        assert_eq!(RaftCall::of(&format!("{call:?}")), Some(call));
    }
    assert_eq!(RaftCall::of("Nope"), None);
    let refused = may_call(&peer(one(Role::Executor)), Propose).unwrap_err().to_string();
    assert!(
        refused.contains("\"p\"") && refused.contains("executor") && refused.contains("Propose"),
        "{refused}"
    );
}

fn namespace() -> Command {
    Command::CreateNamespace {
        namespace: "n".into(),
        at: 1,
    }
}

fn token() -> Command {
    Command::CreateToken {
        name: "t".into(),
        role: TokenRole::Admin,
        namespaces: vec!["*".into()],
        hash: "00".into(),
        expires_at: 0,
        at: 1,
    }
}

fn assign() -> Command {
    Command::AssignAttempt {
        target: AttemptRef {
            namespace: "n".into(),
            pipeline: "p".into(),
            run: 1,
            task: "t".into(),
        },
        attempt: 1,
        executor: "e".into(),
        node: 1,
        scheduler: "s".into(),
        epoch: 1,
        at: 1,
    }
}

fn fire() -> Command {
    Command::Fire { fires: vec![], at: 1 }
}

fn lease(role: LeaseRole) -> Command {
    Command::AcquireLease {
        role,
        holder: "h".into(),
        ttl_millis: 1,
        address: String::new(),
        connected: Vec::new(),
        at: 1,
    }
}

fn fenced(role: LeaseRole, command: Command) -> Command {
    Command::Fenced {
        role,
        holder: "h".into(),
        epoch: 1,
        command: Box::new(command),
    }
}

fn batch(commands: Vec<Command>) -> Command {
    Command::Batch { commands }
}

#[test]
fn each_role_may_propose_only_what_it_issues() {
    use LeaseRole::{ExtensionHost, Scheduler};
    let scheduler_batch = || fenced(Scheduler, batch(vec![assign(), assign()]));
    let init = || Command::Init {
        cluster_id: "c".into(),
        at: 1,
    };
    let table: Vec<(Command, &[Role])> = vec![
        (namespace(), &[Role::Api]),
        (token(), &[Role::Api]),
        (init(), &[]),
        (assign(), &[]),
        (scheduler_batch(), &[Role::Scheduler]),
        (fenced(ExtensionHost, batch(vec![assign()])), &[]),
        (fenced(Scheduler, token()), &[]),
        (fenced(Scheduler, batch(vec![assign(), token()])), &[]),
        (lease(Scheduler), &[Role::Scheduler]),
        (lease(ExtensionHost), &[Role::ExtensionHost]),
        (fire(), &[Role::ExtensionHost]),
        (fenced(ExtensionHost, fire()), &[Role::ExtensionHost]),
        (fenced(Scheduler, fire()), &[]),
        (batch(vec![fire(), token()]), &[]),
        (batch(vec![namespace(), token()]), &[Role::Api]),
    ];
    for (command, allowed) in &table {
        for role in Role::ALL {
            let verdict = may_propose("p", one(role), command);
            let expected = role == Role::State || allowed.contains(&role);
            assert_eq!(verdict.is_ok(), expected, "{role} proposing {command:?}: {verdict:?}");
        }
    }
    // A process with several roles issues what any of them does, and nothing more.
    let api_and_scheduler = one(Role::Api).with(Role::Scheduler);
    assert!(may_propose("p", api_and_scheduler, &scheduler_batch()).is_ok());
    assert!(may_propose("p", api_and_scheduler, &token()).is_ok());
    assert!(may_propose("p", api_and_scheduler, &fire()).is_err());
    let refused = may_propose("exec1", one(Role::Executor), &token())
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("exec1") && refused.contains("create_token"),
        "{refused}"
    );
}
