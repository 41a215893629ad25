//! The queue between the executors' streams and the committer: bounded, and a full one makes the stream
//! wait rather than grow or drop a report.

use gofer_domain::AttemptRef;

use super::*;

fn report(run: u64) -> Report {
    let (acks, _) = mpsc::unbounded_channel();
    Report {
        command: Command::AttemptStarted {
            target: AttemptRef {
                namespace: "default".into(),
                pipeline: "p".into(),
                run,
                task: "a".into(),
            },
            attempt: 1,
            executor: "e1".into(),
            at: 1,
        },
        detail: String::new(),
        ack: None,
        acks,
        refused: CancellationToken::new(),
    }
}

#[tokio::test]
async fn a_full_report_queue_makes_the_stream_wait_until_the_committer_takes_one() {
    let (reports, mut queue) = report_queue();
    for run in 0..MAX_QUEUED_REPORTS as u64 {
        assert!(reports.try_send(report(run)).is_ok(), "report {run} fits");
    }
    assert!(
        matches!(
            reports.try_send(report(u64::MAX)),
            Err(mpsc::error::TrySendError::Full(_))
        ),
        "the queue holds at most {MAX_QUEUED_REPORTS}"
    );
    let next = MAX_QUEUED_REPORTS as u64;
    let mut waiting = pinned_send(&reports, report(next));
    assert!(
        futures_util::poll!(&mut waiting).is_pending(),
        "a stream waits on a full queue"
    );
    let first = queue.recv().await.expect("a queued report");
    assert!(matches!(first.command, Command::AttemptStarted { ref target, .. } if target.run == 0));
    assert!(
        futures_util::poll!(&mut waiting).is_ready(),
        "taking one lets the stream go on"
    );
}

/// The stream's send, pinned so that a test can poll it.
fn pinned_send(
    reports: &mpsc::Sender<Report>,
    report: Report,
) -> std::pin::Pin<Box<impl std::future::Future<Output = Result<(), mpsc::error::SendError<Report>>> + '_>> {
    Box::pin(reports.send(report))
}
