//! Triggers end to end: cron subscriptions that fire, survive a stop and catch up as `catchup_window` says
//! without ever running one instant twice; signed webhooks; settings checked against the extension.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use gofer_testkit::{GoferDev, wait_until};
use serde_json::Value;

use crate::{now_millis, pipeline, start, stderr};

/// Every run of `pipeline` as JSON.
fn runs(dev: &GoferDev, pipeline: &str) -> Result<Vec<Value>> {
    Ok(dev
        .ctl_json(&["run", "list", pipeline])?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Scheduled instant → number of runs made for it.
fn runs_by_instant(runs: &[Value]) -> BTreeMap<i64, usize> {
    let mut out = BTreeMap::new();
    for run in runs {
        let instant = run["trigger"]["scheduled_unix_millis"].as_i64().unwrap_or(0);
        *out.entry(instant).or_insert(0) += 1;
    }
    out
}

#[test]
fn cron_fires_and_a_restart_catches_up_within_the_window_without_a_double_run() -> Result<()> {
    let mut dev = start()?;
    dev.register(&pipeline("tick", &[("a", "true", &[])]))?;
    let created = dev.ctl_json(&[
        "subscription",
        "create",
        "tick",
        "cron",
        "every-2s",
        "-s",
        "expression=*/2 * * * * *",
        "-s",
        "catchup_window=5s",
    ])?;
    assert_eq!(created["extension"], "cron");
    let before = wait_until("three cron runs", Duration::from_secs(30), || {
        let runs = runs(&dev, "tick")?;
        Ok((runs.len() >= 3).then_some(runs))
    })?;
    for run in &before {
        let trigger = &run["trigger"];
        assert_eq!(trigger["extension"], "cron");
        assert_eq!(trigger["subscription"], "every-2s");
        let instant = trigger["scheduled_unix_millis"].as_i64().context("scheduled instant")?;
        assert_eq!(instant % 2000, 0, "cron instants fall on even seconds: {trigger}");
        // Fired within a second of its instant (a generous bound; bench/ measures the real skew).
        assert!(run["created_unix_millis"].as_i64().unwrap() - instant < 1_500, "{run}");
    }
    let table = dev.ctl_ok(&["run", "get", "tick", "1"])?;
    assert!(table.contains("cron/every-2s @"), "run get shows the trigger: {table}");

    dev.stop()?;
    let stopped_at = now_millis();
    // The outage itself is what this test is about: keep Gofer down for 11 s of wall-clock time.
    wait_until("an 11 s outage", Duration::from_secs(20), || {
        Ok((now_millis() - stopped_at >= 11_000).then_some(()))
    })?;
    let restarted_at = now_millis();
    dev.relaunch()?;

    let after = wait_until("the first fire after the restart", Duration::from_secs(30), || {
        let runs = runs(&dev, "tick")?;
        Ok(runs
            .iter()
            .any(|r| r["trigger"]["scheduled_unix_millis"].as_i64().unwrap_or(0) > restarted_at + 2_000)
            .then_some(runs))
    })?;
    let counts = runs_by_instant(&after);
    assert!(
        counts.values().all(|n| *n == 1),
        "no scheduled instant has two runs: {counts:?}"
    );
    let last_before = runs_by_instant(&before).keys().copied().max().unwrap();
    let first_after = counts.keys().copied().find(|i| *i > restarted_at + 2_000).unwrap();
    // Every even second between the last fire before the stop and the first regular fire after the restart
    // is accounted for exactly once: caught up (a run) or skipped (counted on the subscription).
    let missed: Vec<i64> = (last_before / 2000 + 1..first_after / 2000).map(|k| k * 2000).collect();
    let caught: Vec<i64> = missed.iter().copied().filter(|i| counts.contains_key(i)).collect();
    let subscription = dev.ctl_json(&["subscription", "get", "tick", "every-2s"])?;
    let skipped = subscription["skipped"].as_u64().unwrap();
    assert_eq!(
        caught.len() as u64 + skipped,
        missed.len() as u64,
        "caught {caught:?}, skipped {skipped}, missed {missed:?}"
    );
    assert!(
        skipped >= 1,
        "instants older than the 5 s window were skipped: {subscription}"
    );
    assert!(
        !caught.is_empty(),
        "instants inside the window were caught up: {missed:?} {counts:?}"
    );
    for instant in &caught {
        assert!(
            *instant >= restarted_at - 5_000 - 2_000,
            "only recent instants are caught up: {instant} vs {restarted_at}"
        );
    }
    let reason = subscription["recent_skips"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("catch-up window"), "{subscription}");
    dev.ctl_ok(&["subscription", "delete", "tick", "every-2s"])?;
    Ok(())
}

#[test]
fn overlap_skip_never_lets_two_runs_of_a_subscription_overlap() -> Result<()> {
    let dev = start()?;
    dev.register(&pipeline("slowtick", &[("a", "sleep 2.5", &[])]))?;
    dev.ctl_ok(&[
        "subscription",
        "create",
        "slowtick",
        "interval",
        "fast",
        "-s",
        "every=1s",
        "-s",
        "overlap=skip",
    ])?;
    let subscription = wait_until("skipped fires", Duration::from_secs(40), || {
        let sub = dev.ctl_json(&["subscription", "get", "slowtick", "fast"])?;
        Ok((sub["skipped"].as_u64() >= Some(2) && sub["fired"].as_u64() >= Some(2)).then_some(sub))
    })?;
    assert!(
        subscription["recent_skips"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("overlap skip"),
        "{subscription}"
    );
    dev.ctl_ok(&["subscription", "delete", "slowtick", "fast"])?;
    let done = wait_until("runs to end", Duration::from_secs(60), || {
        let runs = runs(&dev, "slowtick")?;
        Ok(runs.iter().all(|r| r["state"] == "SUCCEEDED").then_some(runs))
    })?;
    let mut spans: Vec<(i64, i64)> = done
        .iter()
        .map(|r| {
            (
                r["started_unix_millis"].as_i64().unwrap(),
                r["ended_unix_millis"].as_i64().unwrap(),
            )
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "runs overlapped: {spans:?}");
    }
    Ok(())
}

/// A minimal HTTP/1.1 POST over loopback; returns the status and body.
pub(crate) fn post(url: &str, headers: &[(&str, String)], body: &[u8]) -> Result<(u16, String)> {
    request("POST", url, headers, body)
}

/// A minimal HTTP/1.1 request over loopback; returns the status and body.
fn request(method: &str, url: &str, headers: &[(&str, String)], body: &[u8]) -> Result<(u16, String)> {
    let rest = url.strip_prefix("http://").context("http url")?;
    let (addr, path) = rest.split_at(rest.find('/').context("url path")?);
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    // A refused oversized body may close the connection before we finish writing: that is fine.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    let status: u16 = text.split_whitespace().nth(1).context("status line")?.parse()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// GitHub's `X-Hub-Signature-256` value for `body`.
pub(crate) fn signature(secret: &str, body: &[u8]) -> String {
    let key = hmac_sha256(secret.as_bytes(), body);
    format!("sha256={}", key.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// HMAC-SHA256 (RFC 2104) on a small SHA-256, so the test checks the server against an independent
/// implementation rather than the server's own code.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(message);
    let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];
    let mut padded = data.to_vec();
    padded.push(0x80);
    while padded.len() % 64 != 56 {
        padded.push(0);
    }
    padded.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for chunk in padded.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(chunk[4 * i..4 * i + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    let mut out = [0u8; 32];
    for (i, word) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// The webhook secret the tests sign with.
const SECRET: &str = "s3cret-for-gofer-e2e";

#[test]
fn a_signed_webhook_makes_one_run_a_replay_none_and_bad_requests_are_refused() -> Result<()> {
    let dev = start()?;
    dev.register(&pipeline(
        "hooked",
        &[("a", "echo ref=$GOFER_PARAM_REF repo=$GOFER_PARAM_REPOSITORY_NAME", &[])],
    ))?;
    dev.ctl_ok(&[
        "subscription",
        "create",
        "hooked",
        "webhook",
        "gh",
        "-s",
        "secret=s3cret-for-gofer-e2e",
        "-s",
        "fields=ref,repository.name",
    ])?;
    let subscription = dev.ctl_json(&["subscription", "get", "hooked", "gh"])?;
    let url = subscription["webhook_url"].as_str().context("webhook_url")?.to_string();
    assert!(
        url.starts_with(&dev.webhooks) && url.ends_with("/webhooks/default/hooked/gh"),
        "{url}"
    );
    assert_eq!(
        subscription["settings"]["secret"], "********",
        "secrets are never shown back"
    );

    let body = br#"{"ref": "refs/heads/main", "repository": {"name": "gofer"}}"#;
    let good = |delivery: &str| {
        vec![
            ("X-Hub-Signature-256", signature(SECRET, body)),
            ("X-GitHub-Delivery", delivery.to_string()),
        ]
    };
    // Anything but a POST to a webhook path gets a JSON error too.
    let (status, reply) = request("GET", &url, &[], b"")?;
    assert_eq!(status, 405, "{reply}");
    assert!(reply.contains("\"error\""), "{reply}");
    let (status, reply) = post(&format!("{url}/extra"), &good("d-0"), body)?;
    assert_eq!(status, 404, "{reply}");
    assert!(reply.contains("\"error\""), "{reply}");
    let (status, reply) = post(&url, &good("d-1"), body)?;
    assert_eq!(status, 202, "{reply}");
    let reply: Value = serde_json::from_str(&reply)?;
    assert_eq!(
        (
            reply["outcome"].as_str(),
            reply["run_id"].as_u64(),
            reply["duplicate"].as_bool()
        ),
        (Some("started"), Some(1), Some(false))
    );
    let (status, replay) = post(&url, &good("d-1"), body)?;
    assert_eq!(status, 200, "{replay}");
    let replay: Value = serde_json::from_str(&replay)?;
    assert_eq!(
        (replay["run_id"].as_u64(), replay["duplicate"].as_bool()),
        (Some(1), Some(true))
    );

    let bad_signature = vec![
        ("X-Hub-Signature-256", signature("wrong", body)),
        ("X-GitHub-Delivery", "d-2".to_string()),
    ];
    let (status, refused) = post(&url, &bad_signature, body)?;
    assert_eq!(status, 401, "{refused}");
    assert!(refused.contains("signature"), "{refused}");
    let (status, reply) = post(&url, &[("X-GitHub-Delivery", "d-3".to_string())], body)?;
    assert_eq!(status, 401, "{reply}");
    // A subscription that does not exist answers as a bad signature does, even to a delivery signed with
    // a real secret, so that names cannot be probed.
    let unknown = url.replace("/gh", "/nope");
    let (status, reply) = post(&unknown, &good("d-4"), body)?;
    assert_eq!((status, &reply), (401, &refused));
    // Without a delivery id the body is the event: the first delivery makes a run, the same body again none.
    let other = br#"{"ref": "refs/heads/dev", "repository": {"name": "gofer"}}"#;
    let (status, reply) = post(&url, &[("X-Hub-Signature-256", signature(SECRET, other))], other)?;
    assert_eq!(status, 202, "{reply}");
    let (status, reply) = post(&url, &[("X-Hub-Signature-256", signature(SECRET, other))], other)?;
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("\"duplicate\":true"), "{reply}");
    let not_json = b"not json";
    let (status, reply) = post(
        &url,
        &[
            ("X-Hub-Signature-256", signature(SECRET, not_json)),
            ("Idempotency-Key", "d-5".into()),
        ],
        not_json,
    )?;
    assert_eq!(status, 400, "{reply}");
    let big = vec![b'x'; 1024 * 1024 + 1];
    let (status, reply) = post(
        &url,
        &[
            ("X-Hub-Signature-256", signature(SECRET, &big)),
            ("Idempotency-Key", "d-6".into()),
        ],
        &big,
    )?;
    assert_eq!(status, 413, "{reply}");

    let run = dev.ctl_json(&["run", "get", "hooked", "1"])?;
    assert_eq!(run["trigger"]["delivery_id"], "d-1");
    assert_eq!(run["trigger"]["parameters"]["ref"], "refs/heads/main");
    assert_eq!(run["trigger"]["parameters"]["repository.name"], "gofer");
    // The chosen fields reach the tasks as GOFER_PARAM_<NAME>.
    let ended = crate::wait_for_end(&dev, "hooked", "1")?;
    assert_eq!(ended["state"], "SUCCEEDED", "{ended}");
    assert_eq!(
        dev.ctl_ok(&["task", "logs", "hooked", "1", "a"])?,
        "ref=refs/heads/main repo=gofer\n"
    );
    assert_eq!(
        runs(&dev, "hooked")?.len(),
        2,
        "only the two distinct good deliveries made runs"
    );
    Ok(())
}

#[test]
fn subscription_settings_are_checked_against_the_extension() -> Result<()> {
    let dev = start()?;
    dev.register(&pipeline("checked", &[("a", "true", &[])]))?;
    for (args, field) in [
        (
            vec!["-s", "expression=* * * * *", "-s", "colour=red"],
            "settings.colour",
        ),
        (vec![], "settings.expression"),
        (vec!["-s", "expression=61 * * * *"], "settings.expression"),
        (
            vec!["-s", "expression=* * * * *", "-s", "timezone=Mars/Olympus"],
            "settings.timezone",
        ),
        (
            vec!["-s", "expression=* * * * *", "-s", "overlap=sometimes"],
            "settings.overlap",
        ),
    ] {
        let mut all = vec!["subscription", "create", "checked", "cron", "bad"];
        all.extend(args);
        let output = dev.ctl(&all)?;
        assert_eq!(output.status.code(), Some(1), "{all:?}");
        let err = stderr(&output);
        assert!(err.contains(field) && err.contains("InvalidArgument"), "{all:?}: {err}");
    }
    // A new webhook's secret is long enough that signatures cannot be guessed.
    let short = dev.ctl(&[
        "subscription",
        "create",
        "checked",
        "webhook",
        "w",
        "-s",
        "secret=s3cret",
    ])?;
    assert_eq!(short.status.code(), Some(1));
    let err = stderr(&short);
    assert!(
        err.contains("settings.secret") && err.contains("InvalidArgument"),
        "{err}"
    );
    let missing = dev.ctl(&["subscription", "create", "checked", "nope", "x"])?;
    assert!(stderr(&missing).contains("NotFound"), "{}", stderr(&missing));
    let usage = dev.ctl(&["subscription", "create", "checked", "cron", "x", "-s", "novalue"])?;
    assert_eq!(usage.status.code(), Some(2));
    assert_eq!(
        dev.ctl_json(&["subscription", "list", "checked"])?,
        serde_json::json!([])
    );
    let extensions = dev.ctl_json(&["extension", "list"])?;
    let names: Vec<&str> = extensions
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["cron", "interval", "webhook"]);
    let cron = dev.ctl_json(&["extension", "get", "cron"])?;
    assert!(
        cron["settings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "expression" && s["required"] == true)
    );
    Ok(())
}
