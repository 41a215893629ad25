//! The clock's own tests: the system clock reads the Unix time, a manual clock reads what its hand set,
//! and a loop waiting on its changes is woken by each move.

use std::time::Duration;

use super::*;

#[test]
fn the_system_clock_reads_unix_milliseconds() {
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let read = Clock::system().now_millis();
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((before..=after).contains(&read), "{before} <= {read} <= {after}");
}

#[test]
fn a_manual_clock_reads_what_its_hand_sets_in_every_clone() {
    let (clock, hand) = Clock::manual(1_000);
    let clone = clock.clone();
    assert_eq!(clock.now_millis(), 1_000);
    assert_eq!(hand.advance(Duration::from_millis(1_500)), 2_500);
    assert_eq!(
        (clock.now_millis(), clone.now_millis(), hand.now_millis()),
        (2_500, 2_500, 2_500)
    );
    hand.set(10);
    assert_eq!(clone.now_millis(), 10);
}

/// Whether `changes` reports a move without waiting.
async fn moved_already(changes: &mut Changes) -> bool {
    tokio::select! {
        biased;
        () = changes.changed() => true,
        () = std::future::ready(()) => false,
    }
}

#[tokio::test]
async fn moving_a_manual_clock_wakes_its_waiters_and_the_system_clock_never_does() {
    let (clock, hand) = Clock::manual(0);
    let mut changes = clock.changes();
    assert!(!moved_already(&mut changes).await, "nothing moved yet");
    // A move made before the wait is not missed, and is reported once.
    hand.advance(Duration::from_secs(1));
    assert!(moved_already(&mut changes).await);
    assert!(!moved_already(&mut changes).await);
    let waiting = tokio::spawn(async move { changes.changed().await });
    hand.set(5);
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the move wakes the waiter")
        .unwrap();

    let mut system = Clock::system().changes();
    tokio::task::yield_now().await;
    assert!(!moved_already(&mut system).await, "the system clock reports no change");
}
