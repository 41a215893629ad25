//! `ticker`, an example Gofer extension written with the extension SDK: it fires every subscription
//! every `every_seconds` seconds. The key is the time slot, so a restarted ticker never fires a slot twice.
//!
//! Install it from a local image with `goferctl extension install ticker IMAGE`; an install setting
//! `crash_after=N` (env `GOFER_SETTING_CRASH_AFTER`) makes it exit after N fires, to show the host
//! restarting a crashed extension.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gofer_extension_sdk::{Connection, Extension, Firer, Handler, Subscription, SubscriptionRef};

struct Ticker {
    loops: HashMap<SubscriptionRef, tokio::task::JoinHandle<()>>,
    fired: Arc<AtomicU64>,
    crash_after: Option<u64>,
}

impl Handler for Ticker {
    fn subscribed(&mut self, subscription: Subscription, firer: &Firer) {
        let every: u64 = subscription
            .settings
            .get("every_seconds")
            .and_then(|s| s.parse().ok())
            .unwrap_or(5)
            .max(1);
        let (firer, fired, crash_after) = (firer.clone(), self.fired.clone(), self.crash_after);
        let id = subscription.id.clone();
        let ticking = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(every));
            loop {
                tick.tick().await;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let key = format!("ticker:{id}:{}", now / every);
                match firer.fire(&id, key, Default::default()).await {
                    Ok(report) => println!("fired {id}: {report:?}"),
                    Err(err) => eprintln!("fire {id} failed: {err}"),
                }
                if crash_after.is_some_and(|n| fired.fetch_add(1, Ordering::SeqCst) + 1 >= n) {
                    eprintln!("crash_after reached: exiting to show a restart");
                    std::process::exit(3);
                }
            }
        });
        if let Some(previous) = self.loops.insert(subscription.id, ticking) {
            previous.abort();
        }
    }

    fn unsubscribed(&mut self, subscription: &SubscriptionRef) {
        if let Some(ticking) = self.loops.remove(subscription) {
            ticking.abort();
        }
    }
}

#[tokio::main]
async fn main() {
    let crash_after = std::env::var("GOFER_SETTING_CRASH_AFTER")
        .ok()
        .and_then(|v| v.parse().ok());
    let ticker = Ticker {
        loops: HashMap::new(),
        fired: Arc::default(),
        crash_after,
    };
    let extension = Extension::new("ticker", env!("CARGO_PKG_VERSION"))
        .documentation("Fires each subscription every `every_seconds` seconds.")
        .setting("every_seconds", true, "seconds between fires (at least 1)");
    let result = match Connection::from_env() {
        Ok(connection) => extension.run(connection, ticker).await,
        Err(err) => Err(err),
    };
    if let Err(err) = result {
        eprintln!("ticker: {err}");
        std::process::exit(1);
    }
}
