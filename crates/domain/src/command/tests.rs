//! The persisted format, pinned: a log and a snapshot written by an earlier Gofer must still decode, and
//! replaying that log must still give that snapshot, byte for byte.
//!
//! `golden/commands.jsonl` is a log of every kind of command (refused ones included) as Gofer wrote it,
//! and `golden/state.json` the state that log applied to, events included. `golden/legacy.jsonl` holds
//! commands as releases wrote them before their defaulted fields existed. `golden/security.jsonl` and
//! `golden/security-state.json` pin, the same way, the commands the security work added, and
//! `golden/blobs.jsonl` with `golden/blobs-state.json` those of the blob layer. If one of
//! these tests fails, an old log or snapshot would no longer replay: change the code, never the files.

use crate::{AttemptOutcome, AttemptRef, Command, State};

const COMMANDS: &str = include_str!("../golden/commands.jsonl");
const STATE: &str = include_str!("../golden/state.json");
const LEGACY: &str = include_str!("../golden/legacy.jsonl");
/// The commands the security work added (tokens, task limits, secrets, reports that name their executor,
/// a task's `user` and `inject_api_token`), as Gofer wrote them when it was done, and the state they gave.
const SECURITY: &str = include_str!("../golden/security.jsonl");
const SECURITY_STATE: &str = include_str!("../golden/security-state.json");
/// The commands the blob layer added (blobs, their copies, objects and their limits), as Gofer wrote them
/// when it was done, and the state they gave.
const BLOBS: &str = include_str!("../golden/blobs.jsonl");
const BLOBS_STATE: &str = include_str!("../golden/blobs-state.json");

fn decode(line: &str) -> Command {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("an old entry no longer decodes: {e}\n{line}"))
}

#[test]
fn every_command_of_the_golden_log_decodes_and_encodes_back_to_the_same_bytes() {
    for line in COMMANDS.lines() {
        let command = decode(line);
        assert_eq!(serde_json::to_string(&command).unwrap(), line);
    }
}

#[test]
fn replaying_the_golden_log_gives_the_golden_snapshot_byte_for_byte() {
    for (log, snapshot) in [(COMMANDS, STATE), (SECURITY, SECURITY_STATE), (BLOBS, BLOBS_STATE)] {
        for line in log.lines() {
            let command = decode(line);
            assert_eq!(serde_json::to_string(&command).unwrap(), line);
        }
        let mut state = State::default();
        for line in log.lines() {
            // Refusals are part of the log: they must stay refusals, and change nothing.
            let _ = state.apply(&decode(line));
        }
        assert_eq!(serde_json::to_string_pretty(&state).unwrap() + "\n", snapshot);
        let decoded: State = serde_json::from_str(snapshot).expect("the golden snapshot decodes");
        assert_eq!(decoded, state);
    }
}

#[test]
fn commands_written_before_their_defaulted_fields_existed_still_decode() {
    let legacy: Vec<Command> = LEGACY.lines().map(decode).collect();
    let target = AttemptRef {
        namespace: "default".into(),
        pipeline: "p".into(),
        run: 1,
        task: "a".into(),
    };
    assert_eq!(
        legacy[0],
        Command::AssignAttempt {
            target: target.clone(),
            attempt: 1,
            executor: "e1".into(),
            node: 0,
            scheduler: String::new(),
            epoch: 0,
            at: 5,
        }
    );
    assert_eq!(
        legacy[3],
        Command::AttemptFinished {
            target,
            attempt: 1,
            executor: String::new(),
            outcome: AttemptOutcome::Exited(0),
            log_node: 0,
            at: 8,
        }
    );
    assert_eq!(legacy.len(), 6);
}
