//! `fire-skew`: how late Gofer's cron trigger makes runs. For 1, 100 and 1,000 cron subscriptions firing
//! every few seconds, the skew of each fire is the time from its scheduled instant to the run being
//! created (the `created_unix_millis` the state machine records, stamped when the fire's batch is
//! proposed to the replicated log, which commits about a millisecond later). The baseline, measured in
//! this process over the same window, is how late a bare tokio timer wakes for the same instants with as
//! many timers: the floor any in-process scheduler stands on.
//!
//! The pipeline has `parallelism: 1` and one long task, so only the first run starts a container and the
//! others wait PENDING: the benchmark measures the trigger path, not Docker. It also counts the fires it
//! expected against the runs made, since a missing fire would be a worse bug than a late one. It records
//! its figures in the `## fire-skew` section of `bench/RESULTS.md` (release build only).

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use gofer_bench::{Api, ClientConfig, Machine, Summary, connect, millis, now_millis, percentile, utc_timestamp};
use gofer_proto::v1;
use gofer_testkit::{BuildProfile, DEFAULT_LOG_FILTER, GoferDev, bin_dir_with_profile, task_image};

const SECTION_HEADING: &str = "## fire-skew";
const GOAL_P99_MS: f64 = 1000.0;

#[derive(Parser)]
#[command(about = "Gofer's cron fire skew (scheduled instant to run created) at 1, 100 and 1,000 subscriptions")]
struct Args {
    /// Subscription counts to measure, one goferd each.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    subscriptions: Vec<usize>,
    /// Seconds between fires of each subscription (a cron `*/N` seconds field).
    #[arg(long, default_value_t = 3)]
    every: u64,
    /// How many scheduled instants to measure per count.
    #[arg(long, default_value_t = 7)]
    instants: u64,
    /// Benchmark a debug goferd (figures are not recorded).
    #[arg(long)]
    debug: bool,
    /// Print the figures only; leave bench/RESULTS.md alone.
    #[arg(long)]
    no_record: bool,
}

/// One count's figures.
struct Scenario {
    subscriptions: usize,
    expected: usize,
    seen: usize,
    duplicates: usize,
    skew: Summary,
    p99: Duration,
    max: Duration,
    baseline: Summary,
    baseline_p99: Duration,
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    ensure!(
        args.every >= 1 && args.every <= 30 && 60 % args.every == 0,
        "--every must divide 60 (1-30)"
    );
    ensure!(args.instants >= 1 && args.instants <= 60, "--instants must be 1-60");
    let profile = if args.debug {
        BuildProfile::Debug
    } else {
        BuildProfile::Release
    };
    eprintln!("building goferd and goferctl ({profile:?}) and the task image…");
    let bins = bin_dir_with_profile(profile)?;
    let image = task_image()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut scenarios = Vec::new();
    for &count in &args.subscriptions {
        ensure!((1..=5000).contains(&count), "subscription counts must be 1-5000");
        eprintln!("measuring {count} subscription(s)…");
        let mut dev = GoferDev::start_with(bins.clone(), DEFAULT_LOG_FILTER)?;
        let pipeline = format!(
            r#"{{"id": "skew", "parallelism": 1, "tasks": [{{"id": "hold", "image": "{image}", "command": ["sleep", "3600"]}}]}}"#
        );
        dev.register(&pipeline)?;
        let config = ClientConfig::read(&dev.config_path())?;
        let measured = runtime.block_on(measure(&args, &config, count));
        let stopped = dev.stop();
        scenarios.push(measured?);
        stopped?;
    }
    let machine = runtime.block_on(Machine::describe())?;
    let text = report(&args, profile, &scenarios, &machine);
    gofer_bench::publish(
        SECTION_HEADING,
        &text,
        !args.no_record && profile == BuildProfile::Release,
    )
}

async fn measure(args: &Args, config: &ClientConfig, count: usize) -> Result<Scenario> {
    let mut api: Api = connect(config).await?.max_decoding_message_size(256 * 1024 * 1024);
    let every_ms = args.every as i64 * 1000;
    let expression = format!("*/{} * * * * *", args.every);
    for i in 0..count {
        let request = v1::CreateSubscriptionRequest {
            namespace_id: config.namespace.clone(),
            pipeline_id: "skew".into(),
            extension: "cron".into(),
            label: format!("s{i}"),
            settings: [("expression".to_string(), expression.clone())].into(),
        };
        api.create_subscription(request)
            .await
            .with_context(|| format!("creating subscription {i}"))?;
    }
    // Measure whole instants that start after every subscription exists.
    let first = (now_millis() / every_ms + 2) * every_ms;
    let last = first + (args.instants as i64 - 1) * every_ms;
    let baseline = tokio::spawn(baseline(count, first, last, every_ms));
    let settle_until = last + 3_000;
    tokio::time::sleep(Duration::from_millis((settle_until - now_millis()).max(0) as u64)).await;
    for i in 0..count {
        let request = v1::DeleteSubscriptionRequest {
            namespace_id: config.namespace.clone(),
            pipeline_id: "skew".into(),
            label: format!("s{i}"),
        };
        api.delete_subscription(request)
            .await
            .with_context(|| format!("deleting subscription {i}"))?;
    }
    let runs = gofer_bench::all_runs(&mut api, &config.namespace, "skew").await?;
    let (per_fire, mut skews) = gofer_bench::fire_skews(&runs, first, last);
    let baseline = baseline.await.context("the baseline timers")?;
    skews.sort_unstable();
    let mut base = baseline;
    base.sort_unstable();
    ensure!(!skews.is_empty(), "no run was made for the measured instants");
    Ok(Scenario {
        subscriptions: count,
        expected: count * args.instants as usize,
        seen: per_fire.len(),
        duplicates: per_fire.values().filter(|n| **n > 1).count(),
        skew: Summary::of(&skews).expect("not empty"),
        p99: percentile(&skews, 99),
        max: *skews.last().expect("not empty"),
        baseline: Summary::of(&base).context("no baseline samples")?,
        baseline_p99: percentile(&base, 99),
    })
}

/// `count` bare tokio timers, each sleeping until every instant from `first` to `last`; returns how late
/// each woke.
async fn baseline(count: usize, first: i64, last: i64, every_ms: i64) -> Vec<Duration> {
    let timers: Vec<_> = (0..count)
        .map(|_| {
            tokio::spawn(async move {
                let mut late = Vec::new();
                let mut instant = first;
                while instant <= last {
                    let wait = (instant - now_millis()).max(0) as u64;
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    late.push(Duration::from_millis((now_millis() - instant).max(0) as u64));
                    instant += every_ms;
                }
                late
            })
        })
        .collect();
    let mut all = Vec::new();
    for timer in timers {
        all.extend(timer.await.unwrap_or_default());
    }
    all
}

fn report(args: &Args, profile: BuildProfile, scenarios: &[Scenario], machine: &Machine) -> String {
    let mut text = format!(
        "{SECTION_HEADING}\n\n\
         Skew of cron fires: from the scheduled instant to the run created (`created_unix_millis`, stamped when the fire's \
         batch is proposed to the log), for cron subscriptions `*/{every} * * * * *` on one pipeline over {instants} instants; \
         the baseline is how late bare tokio timers, as many as subscriptions, wake for the same instants in the \
         benchmark's own process. Goal: p99 under 1 s at 1,000 subscriptions.\n\n\
         - Date: {date}\n\
         - Machine: {cpus} CPUs ({cpu}), Docker Engine {docker}\n\
         - goferd: {profile:?} build of {revision}, `GOFER_LOG={log}`\n\n\
         | subscriptions | fires expected | fires made | duplicates | p50 ms | p99 ms | max ms | baseline p50 ms | baseline p99 ms |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        every = args.every,
        instants = args.instants,
        date = utc_timestamp(SystemTime::now()),
        cpus = machine.cpus,
        cpu = machine.cpu_model,
        docker = machine.docker_version,
        revision = machine.revision,
        log = DEFAULT_LOG_FILTER,
    );
    for s in scenarios {
        text.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            s.subscriptions,
            s.expected,
            s.seen,
            s.duplicates,
            millis(s.skew.median),
            millis(s.p99),
            millis(s.max),
            millis(s.baseline.median),
            millis(s.baseline_p99),
        ));
    }
    if let Some(largest) = scenarios.iter().max_by_key(|s| s.subscriptions) {
        let verdict = if millis(largest.p99) < GOAL_P99_MS {
            "meets"
        } else {
            "misses"
        };
        text.push_str(&format!(
            "\nAt {} subscriptions p99 is {:.1} ms: {verdict} the 1 s goal.\n",
            largest.subscriptions,
            millis(largest.p99)
        ));
    }
    text
}
