//! `dispatch-latency`: how long Gofer takes from `StartRun` to the run finished for a one-task pipeline
//! whose task runs `true`, against a raw bollard create+start+wait+remove of the same image and command
//! measured in the same process, interleaved pair by pair so that the machine's noise hits both alike.
//!
//! The raw side is the least Gofer's executor must do for the same work (no log fetch, default network),
//! so the ratio of the two is the cost of Gofer itself: the API, four Raft commits, the scheduler, the
//! dispatch stream and the executor's extra Engine calls. It prints the figures and a per-phase breakdown
//! and rewrites the `## dispatch-latency` section of `bench/RESULTS.md`.
//!
//! It benchmarks a release `goferd` unless `--debug` is given, measures for at most `--budget-secs`, and
//! always removes its raw containers and stops goferd, also on error or Ctrl-C. It refuses to record
//! figures from a debug build or a non-default log level in RESULTS.md, since those are not the product's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, WaitContainerOptions,
};
use clap::Parser;
use futures_util::StreamExt;
use gofer_bench::{Api, ClientConfig, Machine, Summary, connect, millis, utc_timestamp};
use gofer_proto::v1;
use gofer_testkit::{BuildProfile, DEFAULT_LOG_FILTER, GoferDev, bin_dir_with_profile, task_image};

/// The pipeline every Gofer iteration runs.
const PIPELINE_ID: &str = "bench";
const TASK_ID: &str = "t";
const COMMAND: &str = "true";

/// The label on every raw container, valued with this process's id, so that a sweep finds them all.
const RAW_LABEL: &str = "dev.gofer.bench.dispatch-latency.pid";

/// The section this benchmark owns in RESULTS.md.
const SECTION_HEADING: &str = "## dispatch-latency";

/// What the Gofer side must stay under now, and what the product aims for, as multiples of the raw median.
const TARGET_RATIO: f64 = 1.5;
const GOAL_RATIO: f64 = 1.1;

#[derive(Parser)]
#[command(about = "Gofer's StartRun-to-finished latency against a raw Docker create+start+wait+remove")]
struct Args {
    /// Measured pairs (one Gofer run and one raw container each).
    #[arg(long, default_value_t = 30)]
    iterations: usize,
    /// Pairs run first and discarded.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Benchmark goferd built in the debug profile instead of release (figures are not recorded).
    #[arg(long)]
    debug: bool,
    /// Stop measuring after this many seconds even if pairs remain (the build is not counted).
    #[arg(long, default_value_t = 600)]
    budget_secs: u64,
    /// goferd's GOFER_LOG filter; anything but the default is for profiling and is not recorded.
    #[arg(long, default_value = DEFAULT_LOG_FILTER)]
    gofer_log: String,
    /// Copy goferd's log to this file before it is deleted with its temp dir.
    #[arg(long)]
    server_log: Option<PathBuf>,
    /// Print the figures only; leave bench/RESULTS.md alone.
    #[arg(long)]
    no_record: bool,
}

/// One Gofer run: the client-side latency and, from the server's millisecond timestamps, where it went.
struct GoferSample {
    total: Duration,
    phases: [f64; GOFER_PHASES.len()],
}

/// The Gofer phases, each from one timestamp to the next. The server stamps them with the wall clock in
/// whole milliseconds on the same machine as this client, so each phase is good to about ±1 ms.
const GOFER_PHASES: [&str; 5] = [
    "client sends StartRun -> api stamps the run (created)",
    "run created -> scheduler stamps the assignment (StartRun commit, wake, plan)",
    "assigned -> executor reports container started (assign commit, dispatch, list, inspect, create, start)",
    "container started -> executor reports attempt ended (wait, logs follow + fsync, remove)",
    "attempt ended -> client sees SUCCEEDED (AttemptFinished commit, WatchRun)",
];

/// One raw container: the whole and each Engine call.
struct RawSample {
    total: Duration,
    phases: [Duration; RAW_PHASES.len()],
}

const RAW_PHASES: [&str; 4] = ["create", "start", "wait", "remove"];

/// Everything measured, in order.
struct Measurements {
    gofer: Vec<GoferSample>,
    raw: Vec<RawSample>,
    /// Why measuring stopped before `--iterations` pairs, if it did.
    cut_short: Option<String>,
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    ensure!(args.iterations > 0, "--iterations must be at least 1");
    let profile = if args.debug {
        BuildProfile::Debug
    } else {
        BuildProfile::Release
    };

    eprintln!("building goferd and goferctl ({profile:?}) and the task image…");
    let bins = bin_dir_with_profile(profile)?;
    let image = task_image()?;
    let mut dev = GoferDev::start_with(bins, &args.gofer_log)?;
    let pipeline = format!(
        r#"{{"id": "{PIPELINE_ID}", "tasks": [{{"id": "{TASK_ID}", "image": "{image}", "command": ["{COMMAND}"]}}]}}"#
    );
    dev.register(&pipeline).context("registering the benchmark pipeline")?;
    let config = ClientConfig::read(&dev.config_path())?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let measured = runtime.block_on(measure_all(&args, &config, image));

    if let Some(path) = &args.server_log {
        std::fs::copy(dev.log_path(), path).with_context(|| format!("copying goferd's log to {}", path.display()))?;
    }
    let stopped = dev.stop();
    let measured = measured?;
    stopped?;
    if let Some(reason) = &measured.cut_short {
        eprintln!("measuring stopped early: {reason}");
    }

    let machine = runtime.block_on(Machine::describe())?;
    let report = Report::new(&args, profile, &measured, &machine)?;
    print!("{}", report.text());

    let recordable = profile == BuildProfile::Release && args.gofer_log == DEFAULT_LOG_FILTER;
    if args.no_record {
        eprintln!("not recorded (--no-record)");
    } else if !recordable {
        eprintln!("not recorded in bench/RESULTS.md: only a release goferd at the default log level is");
    } else {
        let path = gofer_bench::record(SECTION_HEADING, &report.markdown())?;
        eprintln!("recorded in {}", path.display());
    }
    Ok(())
}

/// Connects, measures the warm-up and measured pairs, and removes every raw container whatever happened.
async fn measure_all(args: &Args, config: &ClientConfig, image: &str) -> Result<Measurements> {
    let docker = Docker::connect_with_local_defaults().context("connecting to the Docker Engine")?;
    docker.ping().await.context("the Docker Engine does not answer")?;
    let raw = Raw {
        docker,
        image: image.to_string(),
        pid: std::process::id().to_string(),
    };
    let mut api = connect(config).await?;
    let measured = tokio::select! {
        measured = measure_pairs(args, &mut api, &config.namespace, &raw) => measured,
        interrupted = tokio::signal::ctrl_c() => {
            interrupted.context("listening for Ctrl-C")?;
            Err(anyhow!("interrupted"))
        }
    };
    raw.sweep().await;
    measured
}

/// Runs pairs, one Gofer run then one raw container, until `--iterations` measured pairs or the budget.
async fn measure_pairs(args: &Args, api: &mut Api, namespace: &str, raw: &Raw) -> Result<Measurements> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.budget_secs);
    let mut measured = Measurements {
        gofer: Vec::with_capacity(args.iterations),
        raw: Vec::with_capacity(args.iterations),
        cut_short: None,
    };
    let pairs = args.warmup + args.iterations;
    for index in 0..pairs {
        let warmup = index < args.warmup;
        // A pair cut by the deadline is dropped whole, so that both sides keep the same count.
        let pair = tokio::time::timeout_at(deadline, async {
            let gofer = gofer_once(api, namespace)
                .await
                .with_context(|| format!("Gofer run of pair {index}"))?;
            let raw = raw
                .once(index)
                .await
                .with_context(|| format!("raw container of pair {index}"))?;
            anyhow::Ok((gofer, raw))
        })
        .await;
        let Ok(pair) = pair else {
            measured.cut_short = Some(format!(
                "the {} s budget ran out after {} measured pairs",
                args.budget_secs,
                measured.gofer.len()
            ));
            break;
        };
        let (gofer, raw) = pair?;
        eprintln!(
            "{} {:>3}/{pairs}: gofer {:7.1} ms  raw {:7.1} ms",
            if warmup { "warm-up " } else { "measured" },
            index + 1,
            millis(gofer.total),
            millis(raw.total)
        );
        if !warmup {
            measured.gofer.push(gofer);
            measured.raw.push(raw);
        }
    }
    ensure!(!measured.gofer.is_empty(), "no pair was measured within the budget");
    Ok(measured)
}

/// `time` in whole milliseconds since the epoch, truncated as the server truncates its stamps, so that
/// client and server stamps compare on the same footing.
fn unix_millis(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_millis() as f64)
}

/// Starts one run and follows it to its end; the timed window is StartRun's send to the final update.
async fn gofer_once(api: &mut Api, namespace: &str) -> Result<GoferSample> {
    let sent_at = SystemTime::now();
    let start = Instant::now();
    let run = api
        .start_run(v1::StartRunRequest {
            namespace_id: namespace.to_string(),
            pipeline_id: PIPELINE_ID.to_string(),
            request_id: String::new(),
            parameters: Default::default(),
        })
        .await
        .context("StartRun")?
        .into_inner()
        .run
        .context("StartRun returned no run")?;
    let mut updates = api
        .watch_run(v1::WatchRunRequest {
            namespace_id: namespace.to_string(),
            pipeline_id: PIPELINE_ID.to_string(),
            run_id: run.id,
        })
        .await
        .context("WatchRun")?
        .into_inner();
    let mut last = None;
    let mut ended = None;
    while let Some(update) = updates.message().await.context("WatchRun stream")? {
        let Some(current) = update.run else { continue };
        if current.state().is_terminal() {
            ended = Some((start.elapsed(), SystemTime::now()));
            last = Some(current);
            break;
        }
        last = Some(current);
    }
    let (Some((total, seen_at)), Some(run)) = (ended, last.as_ref()) else {
        bail!(
            "the watch of run {} ended while it was {}",
            run.id,
            last.map_or("unseen", |r| gofer_proto::run_state_name(r.state))
        );
    };
    if run.state() != gofer_proto::v1::RunState::Succeeded {
        bail!(
            "run {} ended {}: {}",
            run.id,
            gofer_proto::run_state_name(run.state),
            run.state_reason
        );
    }

    // Outside the timed window: the task's own timestamps, for the breakdown.
    let tasks = api
        .list_task_executions(v1::ListTaskExecutionsRequest {
            namespace_id: namespace.to_string(),
            pipeline_id: PIPELINE_ID.to_string(),
            run_id: run.id,
            ..Default::default()
        })
        .await
        .context("ListTaskExecutions")?
        .into_inner()
        .task_executions;
    let task = tasks
        .iter()
        .find(|t| t.task_id == TASK_ID)
        .context("the run has no task execution")?;
    let stamps = [
        unix_millis(sent_at),
        run.created_unix_millis as f64,
        run.started_unix_millis as f64,
        task.started_unix_millis as f64,
        task.ended_unix_millis as f64,
        unix_millis(seen_at),
    ];
    let phases = std::array::from_fn(|i| stamps[i + 1] - stamps[i]);
    Ok(GoferSample { total, phases })
}

/// The raw baseline: the Engine calls Gofer's executor cannot avoid for the same work.
struct Raw {
    docker: Docker,
    image: String,
    pid: String,
}

impl Raw {
    /// Creates, starts, waits for and removes one container running `true`; removes it on error too.
    async fn once(&self, index: usize) -> Result<RawSample> {
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(vec![COMMAND.to_string()]),
            labels: Some(HashMap::from([(RAW_LABEL.to_string(), self.pid.clone())])),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(format!("gofer-bench-raw-{}-{index}", self.pid)),
            ..Default::default()
        };
        let start = Instant::now();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .context("creating the container")?;
        let created_after = start.elapsed();
        let rest = self.start_wait_remove(&created.id, start).await;
        if rest.is_err() {
            let _ = self.remove(&created.id).await;
        }
        let [started_after, exited_after, removed_after] = rest?;
        Ok(RawSample {
            total: removed_after,
            phases: [
                created_after,
                started_after - created_after,
                exited_after - started_after,
                removed_after - exited_after,
            ],
        })
    }

    /// Returns the elapsed times since `start` after the start, the exit and the removal.
    async fn start_wait_remove(&self, id: &str, start: Instant) -> Result<[Duration; 3]> {
        self.docker
            .start_container(id, None)
            .await
            .context("starting the container")?;
        let started = start.elapsed();
        let options = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        match self.docker.wait_container(id, Some(options)).next().await {
            Some(Ok(response)) if response.status_code == 0 => {}
            Some(Ok(response)) => bail!("`{COMMAND}` exited {}", response.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                bail!("`{COMMAND}` exited {code}")
            }
            Some(Err(err)) => return Err(err).context("waiting for the container"),
            None => bail!("the Engine closed the wait stream without an exit"),
        }
        let exited = start.elapsed();
        self.remove(id).await?;
        Ok([started, exited, start.elapsed()])
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        self.docker
            .remove_container(id, Some(options))
            .await
            .context("removing the container")
    }

    /// Removes every raw container this process made that is still there (after an error or Ctrl-C).
    async fn sweep(&self) {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{RAW_LABEL}={}", self.pid)],
            )])),
            ..Default::default()
        };
        let left = match self.docker.list_containers(Some(options)).await {
            Ok(left) => left,
            Err(err) => {
                eprintln!(
                    "could not list leftover raw containers (label {RAW_LABEL}={}): {err}",
                    self.pid
                );
                return;
            }
        };
        for id in left.into_iter().filter_map(|c| c.id) {
            if let Err(err) = self.remove(&id).await {
                eprintln!("could not remove leftover raw container {id}: {err:#}");
            }
        }
    }
}

/// The figures of one run of the benchmark, ready to print or record.
struct Report<'a> {
    args: &'a Args,
    profile: BuildProfile,
    measured: &'a Measurements,
    machine: &'a Machine,
    date: String,
    gofer: Summary,
    raw: Summary,
    gofer_phases: Vec<f64>,
    raw_phases: Vec<f64>,
}

impl<'a> Report<'a> {
    fn new(args: &'a Args, profile: BuildProfile, measured: &'a Measurements, machine: &'a Machine) -> Result<Self> {
        let totals = |samples: Vec<Duration>| Summary::of(&samples).context("no samples");
        let gofer = totals(measured.gofer.iter().map(|s| s.total).collect())?;
        let raw = totals(measured.raw.iter().map(|s| s.total).collect())?;
        let gofer_phases = (0..GOFER_PHASES.len())
            .map(|i| median_f64(measured.gofer.iter().map(|s| s.phases[i]).collect()))
            .collect();
        let raw_phases = (0..RAW_PHASES.len())
            .map(|i| median_f64(measured.raw.iter().map(|s| millis(s.phases[i])).collect()))
            .collect();
        Ok(Report {
            args,
            profile,
            measured,
            machine,
            date: utc_timestamp(SystemTime::now()),
            gofer,
            raw,
            gofer_phases,
            raw_phases,
        })
    }

    fn median_ratio(&self) -> f64 {
        self.gofer.median.as_secs_f64() / self.raw.median.as_secs_f64()
    }

    fn p95_ratio(&self) -> f64 {
        self.gofer.p95.as_secs_f64() / self.raw.p95.as_secs_f64()
    }

    /// What Gofer adds to the raw median, in milliseconds.
    fn overhead_ms(&self) -> f64 {
        millis(self.gofer.median) - millis(self.raw.median)
    }

    fn verdict(&self) -> String {
        let ratio = self.median_ratio();
        let target = if ratio <= TARGET_RATIO { "meets" } else { "misses" };
        let goal = if ratio <= GOAL_RATIO { "meets" } else { "misses" };
        format!("{target} the {TARGET_RATIO}× target; {goal} the {GOAL_RATIO}× goal")
    }

    fn iterations(&self) -> String {
        let mut text = format!(
            "{} measured pairs after {} warm-up pairs",
            self.gofer.count, self.args.warmup
        );
        if let Some(reason) = &self.measured.cut_short {
            text.push_str(&format!(" ({} asked; {reason})", self.args.iterations));
        }
        text
    }

    /// The terminal table.
    fn text(&self) -> String {
        let mut out = format!(
            "\ndispatch-latency, {}; goferd {:?}; {} CPUs; Docker {}\n\n",
            self.iterations(),
            self.profile,
            self.machine.cpus,
            self.machine.docker_version
        );
        out.push_str(&format!(
            "{:<8}{:>5}{:>12}{:>12}{:>12}\n",
            "", "n", "median ms", "p95 ms", "mean ms"
        ));
        for (name, s) in [("gofer", &self.gofer), ("raw", &self.raw)] {
            out.push_str(&format!(
                "{name:<8}{:>5}{:>12.1}{:>12.1}{:>12.1}\n",
                s.count,
                millis(s.median),
                millis(s.p95),
                millis(s.mean)
            ));
        }
        out.push_str(&format!(
            "\nratio gofer/raw: median {:.2}×, p95 {:.2}× ({}); Gofer adds {:.1} ms to the median\n",
            self.median_ratio(),
            self.p95_ratio(),
            self.verdict(),
            self.overhead_ms()
        ));
        out.push_str("\nwhere the time goes (median of each phase, ms):\n");
        for (name, ms) in GOFER_PHASES.iter().zip(&self.gofer_phases) {
            out.push_str(&format!("  gofer {ms:>7.1}  {name}\n"));
        }
        for (name, ms) in RAW_PHASES.iter().zip(&self.raw_phases) {
            out.push_str(&format!("  raw   {ms:>7.1}  {name}\n"));
        }
        out
    }

    /// The `## dispatch-latency` section of RESULTS.md.
    fn markdown(&self) -> String {
        let mut out = format!(
            "{SECTION_HEADING}\n\n\
             Time from `StartRun` to the run seen finished on `WatchRun`, for a one-task pipeline whose task runs \
             `{COMMAND}` in `gofer/toolbox:1`, against a raw bollard create+start+wait+remove of the same image and \
             command (default network, no log fetch), interleaved pair by pair in the same run.\n\
             Target now: at most {TARGET_RATIO}× the raw median; the product's goal: at most {GOAL_RATIO}×.\n\n\
             - Date: {}\n\
             - Machine: {} CPUs ({}), Docker Engine {}\n\
             - goferd: release build of {}, `GOFER_LOG={DEFAULT_LOG_FILTER}`\n\
             - Iterations: {}\n\n\
             | | n | median ms | p95 ms | mean ms |\n\
             |---|---:|---:|---:|---:|\n",
            self.date,
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.docker_version,
            self.machine.revision,
            self.iterations(),
        );
        for (name, s) in [("gofer", &self.gofer), ("raw", &self.raw)] {
            out.push_str(&format!(
                "| {name} | {} | {:.1} | {:.1} | {:.1} |\n",
                s.count,
                millis(s.median),
                millis(s.p95),
                millis(s.mean)
            ));
        }
        out.push_str(&format!(
            "\nRatio gofer/raw: median **{:.2}×**, p95 {:.2}×: {}. Gofer adds {:.1} ms to the median.\n\n\
             Where the time goes (median of each phase over the measured pairs, ms; the Gofer phases come from \
             the server's whole-millisecond timestamps, and the medians of the parts need not add up to the \
             median of the whole):\n\n\
             | phase | ms |\n|---|---:|\n",
            self.median_ratio(),
            self.p95_ratio(),
            self.verdict(),
            self.overhead_ms()
        ));
        for (name, ms) in GOFER_PHASES.iter().zip(&self.gofer_phases) {
            out.push_str(&format!("| gofer: {name} | {ms:.1} |\n"));
        }
        for (name, ms) in RAW_PHASES.iter().zip(&self.raw_phases) {
            out.push_str(&format!("| raw: {name} | {ms:.1} |\n"));
        }
        out
    }
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
