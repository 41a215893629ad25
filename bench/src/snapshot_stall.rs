//! `snapshot-stall`: how a running state node's costs grow with what it holds, one decade of retained runs
//! at a time. One `goferd server` node with the state, api and extension-host roles (no scheduler, so
//! nothing dispatches and every run stays in the state). Each decade's runs are queued by 32 concurrent
//! clients, 100 per pipeline, each pipeline with ten interval subscriptions that do not fire meanwhile (as
//! in `state-scale`), while one more client writes sequentially (CreateNamespace) the whole time: its
//! latency is what a write costs while the state grows and the node snapshots (every snapshot stored
//! meanwhile is counted, by the snapshot file's inode). Twenty cron subscriptions fire every second the
//! whole time too: their skew (scheduled instant to run created) is the trigger path's while the state
//! grows. Then the node's resident memory per run, the snapshot file's size, and its restart to serving:
//! SIGKILL, start, until the API answers a read of the last run queued. The first decade is the baseline.
//! It records `## snapshot-stall` in `bench/RESULTS.md` (release build only).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use gofer_bench::cluster::{GoferCluster, Pki};
use gofer_bench::{Api, Machine, millis, now_millis, percentile, utc_timestamp};
use gofer_proto::v1;
use gofer_testkit::{BuildProfile, bin_dir_with_profile};

const SECTION_HEADING: &str = "## snapshot-stall";
/// Runs kept per pipeline, and so queued per pipeline.
const RUNS_PER_PIPELINE: u64 = 100;
/// The probe's writes are bounded: at most this many per decade.
const PROBE_MAX: usize = 2_000_000;
/// Interval subscriptions per pipeline, which never fire within the benchmark.
const SUBSCRIPTIONS_PER_PIPELINE: u64 = 10;
/// The pipeline the probe's cron subscriptions fire, and how many fire every second.
const FIRED: &str = "fired";
const CRON_PROBES: usize = 20;

#[derive(Parser)]
#[command(about = "Write latency, memory, snapshot size and restart time of a running node, by decade of runs")]
struct Args {
    /// Retained runs of the largest decade (the first is 1,000).
    #[arg(long, default_value_t = 1_000_000)]
    runs: u64,
    /// Concurrent clients queueing runs.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Benchmark a debug goferd (figures are not recorded).
    #[arg(long)]
    debug: bool,
    /// Print the figures only; leave bench/RESULTS.md alone.
    #[arg(long)]
    no_record: bool,
}

/// A set of write latencies: the median, the 99th percentile (nearest rank) and the slowest.
struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Option<Latency> {
        samples.sort_unstable();
        Some(Latency {
            max: *samples.last()?,
            p50: percentile(&samples, 50),
            p99: percentile(&samples, 99),
        })
    }
}

/// One decade's figures.
struct Decade {
    runs: u64,
    subscriptions: u64,
    fires: Latency,
    fires_expected: usize,
    fires_made: usize,
    queue_rate: f64,
    probe: Latency,
    probe_writes: usize,
    slow: usize,
    snapshots: usize,
    rss_per_run: u64,
    rss_mib: u64,
    snapshot_mib: f64,
    restart: Duration,
}

fn pipeline_id(n: u64) -> String {
    format!("scale-{}", n / RUNS_PER_PIPELINE)
}

async fn register(api: &mut Api, id: String, keep_runs: u32) -> Result<()> {
    api.register_pipeline(v1::RegisterPipelineRequest {
        namespace_id: String::new(),
        config: Some(v1::PipelineConfig {
            id: id.clone(),
            name: id,
            keep_runs,
            tasks: vec![v1::Task {
                id: "a".into(),
                image: "benchmark/none:1".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    })
    .await
    .context("RegisterPipeline")?;
    Ok(())
}

async fn subscribe(
    api: &mut Api,
    pipeline: String,
    extension: &str,
    label: String,
    setting: (&str, &str),
) -> Result<()> {
    api.create_subscription(v1::CreateSubscriptionRequest {
        namespace_id: String::new(),
        pipeline_id: pipeline,
        extension: extension.into(),
        label,
        settings: [(setting.0.to_string(), setting.1.to_string())].into(),
    })
    .await
    .context("CreateSubscription")?;
    Ok(())
}

/// Runs `work` on every number of `from..to`, each taken by one of `clients` concurrent clients.
async fn concurrently<F, Fut>(cluster: &GoferCluster, from: u64, to: u64, clients: usize, work: F) -> Result<()>
where
    F: Fn(Api, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Api>> + Send,
{
    let next = Arc::new(AtomicU64::new(from));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut api = cluster.client(1).await?;
        let (next, work) = (next.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= to {
                    return anyhow::Ok(());
                }
                api = work(api, n).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Registers the pipelines of runs `from..to` and their interval subscriptions, with `clients`
/// concurrent clients.
async fn register_pipelines(cluster: &GoferCluster, from: u64, to: u64, clients: usize) -> Result<()> {
    let (first, end) = (from / RUNS_PER_PIPELINE, to / RUNS_PER_PIPELINE);
    concurrently(cluster, first, end, clients, |mut api, k| async move {
        let id = pipeline_id(k * RUNS_PER_PIPELINE);
        register(&mut api, id.clone(), RUNS_PER_PIPELINE as u32).await?;
        for i in 0..SUBSCRIPTIONS_PER_PIPELINE {
            subscribe(&mut api, id.clone(), "interval", format!("i{i}"), ("every", "24h")).await?;
        }
        Ok(api)
    })
    .await
}

/// Queues runs `from..to` with `clients` concurrent clients; returns the runs per second.
async fn queue_runs(cluster: &GoferCluster, from: u64, to: u64, clients: usize) -> Result<f64> {
    let began = Instant::now();
    concurrently(cluster, from, to, clients, |mut api, n| async move {
        api.start_run(v1::StartRunRequest {
            pipeline_id: pipeline_id(n),
            request_id: format!("scale-{n}"),
            ..Default::default()
        })
        .await
        .context("StartRun")?;
        Ok(api)
    })
    .await?;
    Ok((to - from) as f64 / began.elapsed().as_secs_f64())
}

/// The snapshot file's inode, which changes with every snapshot stored (written aside, renamed in).
fn snapshot_inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Writes sequentially until `stop`, noting each latency and every snapshot stored meanwhile.
async fn probe(
    mut api: Api,
    prefix: String,
    snapshot: PathBuf,
    stop: Arc<AtomicBool>,
) -> Result<(Vec<Duration>, usize)> {
    let mut samples = Vec::new();
    let mut inode = snapshot_inode(&snapshot);
    let mut snapshots = 0;
    while !stop.load(Ordering::Relaxed) && samples.len() < PROBE_MAX {
        let began = Instant::now();
        api.create_namespace(v1::CreateNamespaceRequest {
            id: format!("{prefix}-{}", samples.len()),
        })
        .await
        .context("CreateNamespace")?;
        samples.push(began.elapsed());
        let now = snapshot_inode(&snapshot);
        if now != inode {
            snapshots += 1;
            inode = now;
        }
    }
    Ok((samples, snapshots))
}

/// The skew of the cron probes' fires scheduled within `window` (whole seconds inside it), and how many
/// were expected and made.
async fn fire_skew(api: &mut Api, window: (i64, i64)) -> Result<(Latency, usize, usize)> {
    let first = window.0 / 1000 * 1000 + 2000;
    let last = window.1 / 1000 * 1000 - 1000;
    ensure!(last >= first, "the window is too short to measure fires");
    let runs = gofer_bench::all_runs(api, "default", FIRED).await?;
    let (made, skews) = gofer_bench::fire_skews(&runs, first, last);
    let expected = CRON_PROBES * ((last - first) / 1000 + 1) as usize;
    let skew = Latency::of(skews).context("no probe fire in the window")?;
    Ok((skew, expected, made.len()))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .context("VmRSS")
}

/// Kills the node, starts it again, and times until it serves a read of run `last`.
async fn restart(cluster: &mut GoferCluster, last: u64) -> Result<Duration> {
    let member = &mut cluster.members[0];
    member.kill();
    let began = Instant::now();
    member.start()?;
    let deadline = Duration::from_secs(600);
    loop {
        ensure!(began.elapsed() < deadline, "the node did not serve within {deadline:?}");
        if let Ok(mut api) = cluster.client(1).await
            && let Ok(runs) = api
                .list_runs(v1::ListRunsRequest {
                    namespace_id: String::new(),
                    pipeline_id: pipeline_id(last),
                    ..Default::default()
                })
                .await
            && runs
                .into_inner()
                .runs
                .iter()
                .any(|r| r.request_id == format!("scale-{last}"))
        {
            return Ok(began.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    ensure!(args.runs >= 1_000 && args.clients > 0, "--runs must be at least 1000");
    let profile = if args.debug {
        BuildProfile::Debug
    } else {
        BuildProfile::Release
    };
    let bins = bin_dir_with_profile(profile)?;
    let dir = tempfile::Builder::new().prefix("gofer-stall-bench-").tempdir()?;
    let pki = Pki::make(&bins.join("goferd"), dir.path(), &["node1".to_string()])?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut cluster = GoferCluster::start(&bins, &pki, dir.path(), 1, &["--roles", "state,api,extension-host"])?;
    let snapshot = dir.path().join("gofer1/state/snapshot");
    let mut decades = Vec::new();
    runtime.block_on(async {
        cluster.leader(Duration::from_secs(60)).await?;
        let mut api = cluster.client(1).await?;
        register(&mut api, FIRED.into(), 100_000).await?;
        for i in 0..CRON_PROBES {
            subscribe(
                &mut api,
                FIRED.into(),
                "cron",
                format!("c{i}"),
                ("expression", "* * * * * *"),
            )
            .await?;
        }
        let mut held = 0;
        let mut size = 1_000;
        while size <= args.runs {
            eprintln!("growing to {size} runs…");
            let stop = Arc::new(AtomicBool::new(false));
            let prober = tokio::spawn(probe(
                cluster.client(1).await?,
                format!("probe-{size}"),
                snapshot.clone(),
                stop.clone(),
            ));
            let window_start = now_millis();
            let queued = match register_pipelines(&cluster, held, size, args.clients).await {
                Ok(()) => queue_runs(&cluster, held, size, args.clients).await,
                Err(err) => Err(err),
            };
            // A small decade grows in a moment: measure the fires over ten seconds at least.
            let window_end = (window_start + 10_000).max(now_millis());
            tokio::time::sleep(Duration::from_millis((window_end - now_millis()).max(0) as u64)).await;
            stop.store(true, Ordering::Relaxed);
            let (samples, snapshots) = prober.await??;
            let queue_rate = queued?;
            let mut api = cluster.client(1).await?.max_decoding_message_size(256 * 1024 * 1024);
            let (fires, fires_expected, fires_made) = fire_skew(&mut api, (window_start, window_end)).await?;
            held = size;
            let pid = cluster.members[0].child.as_ref().context("the node runs")?.id();
            let rss = rss_kib(pid)?;
            let snapshot_bytes = std::fs::metadata(&snapshot).map(|m| m.len()).unwrap_or(0);
            let restart = restart(&mut cluster, held - 1).await?;
            let probe_writes = samples.len();
            let slow = samples.iter().filter(|s| **s > Duration::from_millis(50)).count();
            decades.push(Decade {
                runs: held,
                subscriptions: held / RUNS_PER_PIPELINE * SUBSCRIPTIONS_PER_PIPELINE,
                fires,
                fires_expected,
                fires_made,
                queue_rate,
                probe: Latency::of(samples).context("no probe writes")?,
                probe_writes,
                slow,
                snapshots,
                rss_per_run: rss * 1024 / held,
                rss_mib: rss / 1024,
                snapshot_mib: snapshot_bytes as f64 / f64::from(1 << 20),
                restart,
            });
            size *= 10;
        }
        anyhow::Ok(())
    })?;
    let machine = runtime.block_on(Machine::describe())?;
    let base = &decades[0];
    let rows: String = decades
        .iter()
        .map(|d| {
            format!(
                "| {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.1} | {} | {} | {:.0} | {:.0} | {:.0} | {}/{} | {} | {} | \
                 {:.1} | {:.0} | {:.1}× |\n",
                d.runs,
                d.subscriptions,
                d.queue_rate,
                d.probe_writes,
                millis(d.probe.p50),
                millis(d.probe.p99),
                millis(d.probe.max),
                d.slow,
                d.snapshots,
                millis(d.fires.p50),
                millis(d.fires.p99),
                millis(d.fires.max),
                d.fires_made,
                d.fires_expected,
                d.rss_mib,
                d.rss_per_run,
                d.snapshot_mib,
                millis(d.restart),
                d.restart.as_secs_f64() / base.restart.as_secs_f64(),
            )
        })
        .collect();
    let report = format!(
        "{SECTION_HEADING}\n\n\
         A running state node's costs, one decade of retained runs at a time: one `goferd server` node (state, api \
         and extension-host roles, no scheduler, so the runs stay queued in the state), each decade's runs queued \
         by {clients} concurrent clients, 100 per pipeline with ten interval subscriptions each (every 24h, so \
         they do not fire meanwhile), while one more client writes sequentially (CreateNamespace) the whole time \
         and twenty cron subscriptions fire every second (fire skew: scheduled instant to run created, over the \
         whole seconds of the decade's growth, ten seconds at least). \
         Its latency is a write's while the state grows and the node snapshots; `snapshots` counts those stored \
         meanwhile (a snapshot is due after 5,000 entries and a log of a quarter of the last snapshot's size). \
         Then the node's resident memory, the snapshot file, and a restart: SIGKILL, start, until the API answers \
         a read of the last run queued (the snapshot decoded, the log after it replayed). The first decade is the \
         baseline for the restart. Before snapshots had a file of their own, one write in 20,000 stalled 212 ms at \
         100,000 runs, behind the purge that waited for the snapshot's redb transaction; and before the purge left \
         deleting segments and freeing entries to a thread of its own, the largest decade's slowest write took \
         246 to 325 ms (6 to 9 writes over 50 ms).\n\n\
         - Date: {date}\n\
         - Machine: {cpus} CPUs ({cpu})\n\
         - goferd: {profile:?} build of {revision}\n\n\
         | runs | subscriptions | queued per s | probe writes | write p50 ms | p99 ms | max ms | over 50 ms | \
         snapshots | fire skew p50 ms | p99 ms | max ms | fires made/expected | RSS MiB | RSS bytes per run | \
         snapshot MiB | restart to serving ms | against the first |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         {rows}",
        clients = args.clients,
        date = utc_timestamp(SystemTime::now()),
        cpus = machine.cpus,
        cpu = machine.cpu_model,
        revision = machine.revision,
    );
    drop(cluster);
    gofer_bench::publish(SECTION_HEADING, &report, !args.debug && !args.no_record)
}
