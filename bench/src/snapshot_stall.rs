//! `snapshot-stall`: whether a snapshot stalls writes on a running node with a large state. One
//! `goferd server` state node (state and api roles, so nothing dispatches and every run stays in the
//! state), measured twice in the same run: sequential writes (CreateNamespace) while the state is nearly
//! empty, then the same number once `--runs` runs are queued. The node snapshots every 5,000 entries, so
//! each measurement spans several snapshots; before snapshots were built from a shadow copy, each one
//! cloned the whole state under the lock every apply waits for (`state-scale`: 121 ms at 100,000 runs).
//! It records `## snapshot-stall` in `bench/RESULTS.md` (release build only).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use gofer_bench::cluster::{GoferCluster, Pki};
use gofer_bench::{Api, Machine, millis, utc_timestamp};
use gofer_proto::v1;
use gofer_testkit::{BuildProfile, bin_dir_with_profile};

const SECTION_HEADING: &str = "## snapshot-stall";
const PIPELINE_ID: &str = "stall";

#[derive(Parser)]
#[command(about = "Write latency across snapshots on a node with a small and a large state")]
struct Args {
    /// Runs queued before the second measurement.
    #[arg(long, default_value_t = 100_000)]
    runs: u64,
    /// Sequential writes per measurement (the node snapshots every 5,000 entries).
    #[arg(long, default_value_t = 15_000)]
    writes: usize,
    /// Benchmark a debug goferd (figures are not recorded).
    #[arg(long)]
    debug: bool,
    /// Print the figures only; leave bench/RESULTS.md alone.
    #[arg(long)]
    no_record: bool,
}

struct Latency {
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    /// Writes slower than 50 ms.
    slow: usize,
}

async fn sequential(api: &mut Api, prefix: &str, count: usize) -> Result<Latency> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let began = Instant::now();
        api.create_namespace(v1::CreateNamespaceRequest {
            id: format!("{prefix}-{i}"),
        })
        .await
        .context("CreateNamespace")?;
        samples.push(began.elapsed());
    }
    samples.sort_unstable();
    let slow = samples.iter().filter(|s| **s > Duration::from_millis(50)).count();
    let pick = |per_mille: usize| samples[(samples.len() * per_mille).div_ceil(1000).max(1) - 1];
    Ok(Latency {
        p50: pick(500),
        p99: pick(990),
        p999: pick(999),
        max: *samples.last().context("samples")?,
        slow,
    })
}

async fn queue_runs(cluster: &GoferCluster, count: u64, clients: usize) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut api = cluster.client(1).await?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return anyhow::Ok(());
                }
                api.start_run(v1::StartRunRequest {
                    pipeline_id: PIPELINE_ID.into(),
                    request_id: format!("stall-{n}"),
                    ..Default::default()
                })
                .await
                .context("StartRun")?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    ensure!(args.writes > 0 && args.runs > 0, "counts must be positive");
    let profile = if args.debug {
        BuildProfile::Debug
    } else {
        BuildProfile::Release
    };
    let bins = bin_dir_with_profile(profile)?;
    let dir = tempfile::Builder::new().prefix("gofer-stall-bench-").tempdir()?;
    let pki = Pki::make(&bins.join("goferd"), dir.path(), &["node1".to_string()])?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let cluster = GoferCluster::start(&bins, &pki, dir.path(), 1, &["--roles", "state,api"])?;
    let (small, large, rss) = runtime.block_on(async {
        cluster.leader(Duration::from_secs(60)).await?;
        let mut api = cluster.client(1).await?;
        api.register_pipeline(v1::RegisterPipelineRequest {
            namespace_id: String::new(),
            config: Some(v1::PipelineConfig {
                id: PIPELINE_ID.into(),
                name: PIPELINE_ID.into(),
                keep_runs: 100_000,
                tasks: vec![v1::Task {
                    id: "a".into(),
                    image: "benchmark/none:1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        })
        .await?;
        eprintln!("{} writes on a nearly empty state…", args.writes);
        let small = sequential(&mut api, "small", args.writes).await?;
        eprintln!("queueing {} runs…", args.runs);
        queue_runs(&cluster, args.runs, 32).await?;
        eprintln!("{} writes on the large state…", args.writes);
        let large = sequential(&mut api, "large", args.writes).await?;
        let pid = cluster.members[0].child.as_ref().context("the node runs")?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        anyhow::Ok((small, large, rss))
    })?;
    let machine = runtime.block_on(Machine::describe())?;
    let row = |name: &str, l: &Latency| {
        format!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.1} | {} |\n",
            millis(l.p50),
            millis(l.p99),
            millis(l.p999),
            millis(l.max),
            l.slow
        )
    };
    let report = format!(
        "{SECTION_HEADING}\n\n\
         Whether a snapshot stalls writes on a running node: one `goferd server` state node (state and api roles, \
         so the runs stay queued in the state), {writes} sequential CreateNamespace writes on a nearly empty state, \
         then {writes} more once {runs} runs are queued; the node snapshots every 5,000 entries, so each \
         measurement spans several snapshots. A snapshot that cloned the whole state under the lock applies wait \
         on would show in the large state's tail (`state-scale`: such a clone took 121 ms at 100,000 runs).\n\n\
         - Date: {date}\n\
         - Machine: {cpus} CPUs ({cpu})\n\
         - goferd: {profile:?} build of {revision}; its resident memory after: {rss_mib} MiB\n\n\
         | state | write p50 ms | p99 ms | p99.9 ms | max ms | writes over 50 ms |\n\
         |---|---:|---:|---:|---:|---:|\n\
         {small}{large}",
        writes = args.writes,
        runs = args.runs,
        date = utc_timestamp(SystemTime::now()),
        cpus = machine.cpus,
        cpu = machine.cpu_model,
        revision = machine.revision,
        rss_mib = rss / 1024,
        small = row("nearly empty", &small),
        large = row(&format!("{} runs queued", args.runs), &large),
    );
    drop(cluster);
    gofer_bench::publish(SECTION_HEADING, &report, !args.debug && !args.no_record)
}
