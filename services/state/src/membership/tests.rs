//! A leader's refusal of a membership change reaches the follower that forwarded it as openraft's typed
//! error, so the follower's retry decides on the type.

use openraft::error::{InProgress, LearnerNotFound};

use super::*;

#[test]
fn a_refusal_travels_with_its_type() {
    let in_progress = ChangeMembershipError::InProgress(InProgress {
        committed: None,
        membership_log_id: None,
    });
    let not_a_learner = ChangeMembershipError::LearnerNotFound(LearnerNotFound { node_id: 4 });
    for refused in [in_progress, not_a_learner] {
        let status = refusal_status(&refused);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(refusal(&status), Some(refused));
    }
    assert_eq!(refusal(&tonic::Status::unavailable("no refusal here")), None);
}
