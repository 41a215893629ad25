//! `dispatch-throughput`: how many task executions Gofer's control plane dispatches and completes per
//! second with many runs queued, on one node and on three, with executors on the **benchmark-noop
//! backend** (`goferd executor --executor-backend benchmark-noop`: every attempt reports started and
//! exited 0 at once, no container, no log), so that only the control plane is measured: the scheduler's
//! assignments, the Start on the dispatch stream, the executor's reports and their commits.
//!
//! For each cluster size it queues `--runs` one-task runs before any executor connects, then starts
//! `--executors` executor processes and waits until every run ended. Throughput is runs per second from
//! the first assignment (as the scheduler stamped it) to when the benchmark saw every run ended. Dispatch latency
//! is, per sampled task, the assignment's commit time (scheduler clock) to the executor's started report
//! (executor clock; same machine). The baseline in the same run is the same cluster's raw replicated write
//! throughput (CreateNamespace from 64 concurrent clients for 3 s). It records its figures in the
//! `## dispatch-throughput` section of `bench/RESULTS.md` (release build only).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use gofer_bench::cluster::{GoferCluster, Member, Pki};
use gofer_bench::{Api, Machine, millis, utc_timestamp};
use gofer_proto::v1;
use gofer_testkit::{BuildProfile, bin_dir_with_profile};

const SECTION_HEADING: &str = "## dispatch-throughput";
const PIPELINE_ID: &str = "throughput";

#[derive(Parser)]
#[command(about = "Gofer's control-plane dispatch throughput on one and three nodes, benchmark-noop executors")]
struct Args {
    /// One-task runs queued per cluster size.
    #[arg(long, default_value_t = 20000)]
    runs: usize,
    /// Executor processes.
    #[arg(long, default_value_t = 4)]
    executors: usize,
    /// Concurrent clients queueing the runs.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Tasks sampled for the dispatch latency.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Benchmark a debug goferd (figures are not recorded).
    #[arg(long)]
    debug: bool,
    /// Print the figures only; leave bench/RESULTS.md alone.
    #[arg(long)]
    no_record: bool,
}

/// One cluster size's figures.
struct Figures {
    nodes: u64,
    runs: usize,
    seconds: f64,
    dispatches_per_second: f64,
    latency_p50: Duration,
    latency_p99: Duration,
    raw_writes_per_second: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let profile = if args.debug {
        BuildProfile::Debug
    } else {
        BuildProfile::Release
    };
    let bins = bin_dir_with_profile(profile)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut figures = Vec::new();
    for nodes in [1u64, 3] {
        let dir = tempfile::Builder::new().prefix("gofer-throughput-bench-").tempdir()?;
        eprintln!("{nodes} node(s): queueing {} runs…", args.runs);
        figures.push(runtime.block_on(measure(&args, &bins, dir.path(), nodes))?);
    }
    let machine = runtime.block_on(Machine::describe())?;
    let text = report(&args, profile, &figures, &machine);
    gofer_bench::publish(
        SECTION_HEADING,
        &text,
        !args.no_record && profile == BuildProfile::Release,
    )
}

async fn measure(args: &Args, bins: &Path, dir: &Path, nodes: u64) -> Result<Figures> {
    let names: Vec<String> = (1..=nodes)
        .map(|id| format!("node{id}"))
        .chain((1..=args.executors).map(|i| format!("exec{i}")))
        .collect();
    let goferd = bins.join("goferd");
    let pki = Pki::make(&goferd, dir, &names)?;
    // The nodes run no executor of their own: the benchmark executors are the only ones.
    let cluster = GoferCluster::start(
        bins,
        &pki,
        dir,
        nodes,
        &["--roles", "state,api,scheduler,extension-host"],
    )?;
    let leader = cluster.leader(Duration::from_secs(60)).await?;
    let mut api = cluster.client(leader).await?;
    let task = v1::Task {
        id: "a".into(),
        image: "benchmark/none:1".into(),
        ..Default::default()
    };
    api.register_pipeline(v1::RegisterPipelineRequest {
        namespace_id: String::new(),
        config: Some(v1::PipelineConfig {
            id: PIPELINE_ID.into(),
            name: PIPELINE_ID.into(),
            // Every run is kept, so that the benchmark can count them.
            keep_runs: u32::try_from(args.runs).unwrap_or(u32::MAX),
            tasks: vec![task],
            ..Default::default()
        }),
    })
    .await
    .context("registering the pipeline")?;
    queue_runs(&cluster, args.runs, args.clients, nodes).await?;

    let schedulers: Vec<String> = cluster.configs.values().map(|c| c.host.clone()).collect();
    let mut executors = Vec::new();
    for i in 1..=args.executors {
        let name = format!("exec{i}");
        let mut member = Member {
            id: 100 + i as u64,
            command: vec![
                goferd.display().to_string(),
                "executor".into(),
                "--name".into(),
                name.clone(),
                "--executor-backend".into(),
                "benchmark-noop".into(),
                "--schedulers".into(),
                schedulers.join(","),
                "--ca".into(),
                pki.file("ca.pem"),
                "--cert".into(),
                pki.file(&format!("{name}.pem")),
                "--key".into(),
                pki.file(&format!("{name}.key")),
                "--admin-token-file".into(),
                pki.file("admin.token"),
            ],
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        member.start()?;
        executors.push(member);
    }
    let (runs, seen_all_ended) = wait_for_all(&mut api, args.runs, Duration::from_secs(300)).await?;
    drop(executors);

    // From the first assignment (stamped by the scheduler) to the moment this process saw every run
    // ended (the runs' own end times are the executor's clock at its report, before the commit).
    let first_assignment = runs
        .iter()
        .map(|r| r.started_unix_millis)
        .filter(|t| *t > 0)
        .min()
        .unwrap_or(0);
    let seconds = ((seen_all_ended - first_assignment) as f64 / 1000.0).max(0.001);
    let failed = runs
        .iter()
        .filter(|r| r.state() != gofer_proto::v1::RunState::Succeeded)
        .count();
    ensure!(failed == 0, "{failed} runs did not succeed");

    let mut latencies = Vec::new();
    let step = (runs.len() / args.samples.max(1)).max(1);
    for run in runs.iter().step_by(step) {
        let tasks = api
            .list_task_executions(v1::ListTaskExecutionsRequest {
                namespace_id: String::new(),
                pipeline_id: PIPELINE_ID.into(),
                run_id: run.id,
                ..Default::default()
            })
            .await?
            .into_inner()
            .task_executions;
        for attempt in tasks.iter().flat_map(|t| t.attempts.first()) {
            let ms = (attempt.started_unix_millis - attempt.assigned_unix_millis).max(0);
            latencies.push(Duration::from_millis(ms as u64));
        }
    }
    latencies.sort_unstable();
    ensure!(!latencies.is_empty(), "no dispatch latency sampled");
    let pick = |percent: usize| latencies[(latencies.len() * percent).div_ceil(100).max(1) - 1];
    let raw_writes_per_second = raw_writes(&cluster, leader, 64, Duration::from_secs(3)).await?;
    drop(cluster);
    Ok(Figures {
        nodes,
        runs: runs.len(),
        seconds,
        dispatches_per_second: runs.len() as f64 / seconds,
        latency_p50: pick(50),
        latency_p99: pick(99),
        raw_writes_per_second,
    })
}

/// Starts `count` runs from `clients` concurrent clients spread over the nodes.
async fn queue_runs(cluster: &GoferCluster, count: usize, clients: usize, nodes: u64) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut api = cluster.client(c as u64 % nodes + 1).await?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count as u64 {
                    return anyhow::Ok(());
                }
                api.start_run(v1::StartRunRequest {
                    namespace_id: String::new(),
                    pipeline_id: PIPELINE_ID.into(),
                    request_id: format!("throughput-{n}"),
                    parameters: Default::default(),
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

/// Waits until `count` runs have ended, looking every 100 ms; returns them and when (Unix milliseconds)
/// it first saw them all ended.
async fn wait_for_all(api: &mut Api, count: usize, limit: Duration) -> Result<(Vec<v1::Run>, i64)> {
    let start = Instant::now();
    loop {
        let asked_at = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let runs = gofer_bench::all_runs(api, "", PIPELINE_ID).await?;
        let ended = runs.iter().filter(|r| r.ended_unix_millis > 0).count();
        if runs.len() >= count && ended == runs.len() {
            return Ok((runs, asked_at));
        }
        ensure!(
            start.elapsed() < limit,
            "only {ended} of {count} runs ended within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The cluster's raw replicated write throughput: CreateNamespace from `clients` clients for `time`.
async fn raw_writes(cluster: &GoferCluster, leader: u64, clients: usize, time: Duration) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut api = cluster.client(leader).await?;
        let (done, counter) = (done.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < time {
                let id = format!("raw-{}", counter.fetch_add(1, Ordering::Relaxed));
                if api.create_namespace(v1::CreateNamespaceRequest { id }).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

fn report(args: &Args, profile: BuildProfile, figures: &[Figures], machine: &Machine) -> String {
    let rows: String = figures
        .iter()
        .map(|f| {
            format!(
                "| {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}× |\n",
                f.nodes,
                f.runs,
                f.seconds,
                f.dispatches_per_second,
                millis(f.latency_p50),
                millis(f.latency_p99),
                f.raw_writes_per_second,
                f.dispatches_per_second / f.raw_writes_per_second.max(0.001),
            )
        })
        .collect();
    format!(
        "{SECTION_HEADING}\n\n\
         Control-plane dispatch: {runs} one-task runs queued, then {executors} executor processes on the \
         benchmark-noop backend (no containers: each attempt reports started and exited 0 at once) connect; \
         dispatches/s is runs per second from the first assignment (as the scheduler stamped it) to the \
         first time the benchmark, asking every 100 ms, saw every run ended. Dispatch latency: assignment committed → executor's started report, over {samples} \
         sampled tasks. Baseline in the same run: the same cluster's raw replicated writes (CreateNamespace, 64 \
         clients, 3 s). Nodes run state, api, scheduler and extension-host; TLS and mutual TLS as deployed. \
         Goal: at least 1,500 dispatches/s on three nodes.\n\n\
         - Date: {date}\n\
         - Machine: {cpus} CPUs ({cpu})\n\
         - goferd: {profile:?} build of {revision}\n\n\
         | nodes | runs | seconds | dispatches/s | latency p50 ms | latency p99 ms | raw writes/s | dispatches / raw write |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n\
         {rows}",
        runs = args.runs,
        executors = args.executors,
        samples = args.samples,
        date = utc_timestamp(SystemTime::now()),
        cpus = machine.cpus,
        cpu = machine.cpu_model,
        revision = machine.revision,
    )
}
