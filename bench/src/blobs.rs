//! `blobs`: what the blob layer costs, against a bare local fsync of the same bytes in the same run.
//!
//! - The wait of a finished attempt for its log blob. An attempt's log is archived by the two steps a
//!   `PutObject` takes on a state node (the bytes written and fsynced on a majority of the three nodes,
//!   then one Raft commit naming them), so this times sequential `PutObject`s of a typical log's size
//!   through the API of the leader's node: an upper bound of the attempt's wait, by the API hop. The
//!   baseline writes the same bytes to a new file on the same disk, fsyncs it, renames it into place and
//!   fsyncs its directory, which is what one node alone does for a blob.
//! - Object throughput: `PutObject` and `GetObject` of 16 MiB objects through the API, against copying a
//!   16 MiB file (and fsyncing the copy) on the same disk.
//!
//! Samples of both sides alternate, so the machine's noise falls on both alike. It records the
//! `## blobs` section of `bench/RESULTS.md` (release build only).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use gofer_bench::cluster::{GoferCluster, Pki};
use gofer_bench::{Api, Machine, Summary, millis, utc_timestamp};
use gofer_proto::v1;
use gofer_testkit::{BuildProfile, bin_dir_with_profile};

const SECTION_HEADING: &str = "## blobs";
const PIPELINE: &str = "blob-bench";

#[derive(Parser)]
#[command(about = "The blob layer's log-archive wait and object throughput against a local fsync and file copy")]
struct Args {
    /// Sequential log-sized puts per size.
    #[arg(long, default_value_t = 200)]
    puts: usize,
    /// 16 MiB objects put and got.
    #[arg(long, default_value_t = 8)]
    large: usize,
    /// Benchmark a debug goferd (figures are not recorded).
    #[arg(long)]
    debug: bool,
    /// Print the figures only; leave bench/RESULTS.md alone.
    #[arg(long)]
    no_record: bool,
}

/// Bytes that differ per `seed`, so every put is a new blob.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

async fn put(api: &mut Api, key: &str, data: Vec<u8>) -> Result<()> {
    let chunks: Vec<v1::PutObjectRequest> = data
        .chunks(1024 * 1024)
        .enumerate()
        .map(|(i, chunk)| v1::PutObjectRequest {
            pipeline_id: if i == 0 { PIPELINE.to_string() } else { String::new() },
            key: if i == 0 { key.to_string() } else { String::new() },
            data: chunk.to_vec(),
            ..Default::default()
        })
        .collect();
    api.put_object(futures_util::stream::iter(chunks)).await?;
    Ok(())
}

async fn get(api: &mut Api, key: &str) -> Result<usize> {
    let request = v1::GetObjectRequest {
        pipeline_id: PIPELINE.to_string(),
        key: key.to_string(),
        ..Default::default()
    };
    let mut stream = api.get_object(request).await?.into_inner();
    let mut read = 0;
    while let Some(message) = stream.message().await? {
        read += message.data.len();
    }
    Ok(read)
}

/// What one node alone does for a blob: a new file, its bytes, fsync, rename into place, fsync the
/// directory.
fn local_fsync(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let temp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&temp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// A plain file copy, made durable.
fn file_copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)?;
    std::fs::File::open(to)?.sync_all()?;
    Ok(())
}

struct LogFigures {
    size: usize,
    gofer: Vec<Duration>,
    local: Vec<Duration>,
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    ensure!(args.puts > 0 && args.large > 0, "counts must be positive");
    let profile = if args.debug {
        BuildProfile::Debug
    } else {
        BuildProfile::Release
    };
    let bins = bin_dir_with_profile(profile)?;
    let dir = tempfile::Builder::new().prefix("gofer-blob-bench-").tempdir()?;
    let names: Vec<String> = (1..=3).map(|id| format!("node{id}")).collect();
    let pki = Pki::make(&bins.join("goferd"), dir.path(), &names)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Room for the large objects, and enough of them that the count does not evict during a round.
    let cluster = GoferCluster::start(
        &bins,
        &pki,
        dir.path(),
        3,
        &["--object-max-size", "32MiB", "--object-max-count", "1000"],
    )?;
    let baseline_dir = dir.path().join("baseline");
    std::fs::create_dir_all(&baseline_dir)?;
    let (logs, large_put, large_get, large_copy) = runtime.block_on(async {
        let leader = cluster.leader(Duration::from_secs(60)).await?;
        let mut api = cluster.client(leader).await?;
        let config = v1::PipelineConfig {
            id: PIPELINE.to_string(),
            name: PIPELINE.to_string(),
            tasks: vec![v1::Task {
                id: "a".into(),
                image: "gofer/toolbox:1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        // The limits are set by the nodes once the cluster is initialized; wait until a put of the large
        // size is taken.
        api.register_pipeline(v1::RegisterPipelineRequest {
            config: Some(config),
            ..Default::default()
        })
        .await?;
        let start = Instant::now();
        while put(&mut api, "warm-up", bytes(20 * 1024 * 1024, 0)).await.is_err() {
            ensure!(
                start.elapsed() < Duration::from_secs(60),
                "the object limits were never set"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut logs = Vec::new();
        for size in [4 * 1024, 64 * 1024, 1024 * 1024] {
            eprintln!(
                "{} puts of {} KiB, alternating with local fsyncs…",
                args.puts,
                size / 1024
            );
            let mut figures = LogFigures {
                size,
                gofer: Vec::new(),
                local: Vec::new(),
            };
            for i in 0..args.puts {
                let data = bytes(size, (size + i) as u64);
                let began = Instant::now();
                put(&mut api, &format!("log-{size}-{i}"), data.clone()).await?;
                figures.gofer.push(began.elapsed());
                let began = Instant::now();
                local_fsync(&baseline_dir, &format!("log-{size}-{i}"), &data)?;
                figures.local.push(began.elapsed());
            }
            logs.push(figures);
        }
        eprintln!("{} objects of 16 MiB…", args.large);
        let source = baseline_dir.join("source.bin");
        let (mut puts, mut gets, mut copies) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..args.large {
            let data = bytes(16 * 1024 * 1024, 1_000_000 + i as u64);
            std::fs::write(&source, &data)?;
            let began = Instant::now();
            put(&mut api, &format!("large-{i}"), data).await?;
            puts.push(began.elapsed());
            let began = Instant::now();
            let read = get(&mut api, &format!("large-{i}")).await?;
            gets.push(began.elapsed());
            ensure!(read == 16 * 1024 * 1024, "got {read} bytes back");
            let began = Instant::now();
            file_copy(&source, &baseline_dir.join(format!("copy-{i}.bin")))?;
            copies.push(began.elapsed());
        }
        anyhow::Ok((logs, puts, gets, copies))
    })?;
    let machine = runtime.block_on(Machine::describe())?;
    let report = report(&args, &machine, &logs, (&large_put, &large_get, &large_copy))?;
    gofer_bench::publish(SECTION_HEADING, &report, !args.debug && !args.no_record)
}

fn p99(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted[(sorted.len() * 99).div_ceil(100).max(1) - 1]
}

fn report(
    args: &Args,
    machine: &Machine,
    logs: &[LogFigures],
    (puts, gets, copies): (&[Duration], &[Duration], &[Duration]),
) -> Result<String> {
    let mut rows = String::new();
    for figures in logs {
        let gofer = Summary::of(&figures.gofer).context("samples")?;
        let local = Summary::of(&figures.local).context("samples")?;
        rows.push_str(&format!(
            "| {} KiB | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× | {:.2}× |\n",
            figures.size / 1024,
            millis(gofer.median),
            millis(p99(&figures.gofer)),
            millis(local.median),
            millis(p99(&figures.local)),
            millis(gofer.median) / millis(local.median).max(0.001),
            millis(p99(&figures.gofer)) / millis(p99(&figures.local)).max(0.001),
        ));
    }
    let rate = |samples: &[Duration]| -> Result<f64> {
        let median = Summary::of(samples).context("samples")?.median;
        Ok(16.0 / median.as_secs_f64())
    };
    let (put_rate, get_rate, copy_rate) = (rate(puts)?, rate(gets)?, rate(copies)?);
    Ok(format!(
        "{SECTION_HEADING}\n\n\
         The blob layer on a three-node `goferd server` cluster on loopback (TLS, mutual TLS between nodes), every \
         blob fsynced on a majority of the nodes before it is named through Raft, against what one disk alone does, \
         measured alternately in the same run on the same disk. A finished attempt's log is archived by the same two \
         steps as a `PutObject` on its node (write on a majority, one Raft commit), so the first table times {puts} \
         sequential `PutObject`s per size through the leader's API: an upper bound of an attempt's wait, by the API \
         hop. Baseline: a new file of the same bytes, fsync, rename into place, fsync of the directory. The second \
         times {large} objects of 16 MiB put and got through the API (1 MiB messages) against a file copy of 16 MiB \
         with an fsync. All three nodes share this host's one disk and two CPUs: a blob's fsyncs (the writer's, two \
         followers', then the Raft commit's) queue on one device, and every byte of a large object is encrypted, \
         hashed and written three times on the same cores, so the ratios here are those of the worst placement.\n\n\
         - Date: {date}\n\
         - Machine: {cpus} CPUs ({cpu})\n\
         - goferd: {profile} build of {revision}\n\n\
         | log size | blob p50 ms | blob p99 ms | local fsync p50 ms | local fsync p99 ms | p50 ratio | p99 ratio |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n\
         {rows}\n\
         | 16 MiB objects | MiB/s (median) | against a file copy |\n\
         |---|---:|---:|\n\
         | put through the API | {put_rate:.0} | {put_ratio:.2}× |\n\
         | get through the API | {get_rate:.0} | {get_ratio:.2}× |\n\
         | file copy + fsync | {copy_rate:.0} | 1.00× |\n",
        puts = args.puts,
        large = args.large,
        date = utc_timestamp(SystemTime::now()),
        cpus = machine.cpus,
        cpu = machine.cpu_model,
        profile = if args.debug { "Debug" } else { "Release" },
        revision = machine.revision,
        put_ratio = put_rate / copy_rate.max(0.001),
        get_ratio = get_rate / copy_rate.max(0.001),
    ))
}
