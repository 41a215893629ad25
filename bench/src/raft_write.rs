//! `raft-write`: Gofer's replicated writes against a three-member etcd 3.4 cluster measured the same way in
//! the same run, both on loopback with TLS (and mutual TLS between members) and fsync on commit:
//!
//! - write latency with one client (p50, p99), each write sent to the leader: Gofer creates a namespace,
//!   etcd puts a key; and the p50 of writes sent to a follower, which passes them to the leader;
//! - throughput with 64 concurrent clients for a fixed time;
//! - failover: SIGKILL the leader, then the time until a surviving member acknowledges the next write
//!   (the client cuts each attempt off after the same short deadline for both systems, 100 ms by
//!   default, and tries again 20 ms later), five times, restarting the killed member in between.
//!
//! It records its figures in the `## raft-write` section of `bench/RESULTS.md` (release build only). Every
//! process it starts is killed when it ends, also on error.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use gofer_bench::cluster::{GoferCluster, Member, Pki, free_port};
use gofer_bench::{Api, Machine, Summary, millis, percentile, utc_timestamp};
use gofer_proto::v1;
use gofer_testkit::{BuildProfile, bin_dir_with_profile};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

mod etcd {
    //! The generated client of etcd's Put.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("etcdserverpb");
}

const SECTION_HEADING: &str = "## raft-write";

#[derive(Parser)]
#[command(about = "Gofer's replicated write latency, throughput and failover against a three-member etcd cluster")]
struct Args {
    /// Sequential writes measured per system (after the warm-up).
    #[arg(long, default_value_t = 300)]
    writes: usize,
    /// Sequential writes made first and discarded.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Concurrent clients for the throughput figure.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of the throughput run per system.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Leader kills per system.
    #[arg(long, default_value_t = 5)]
    failovers: usize,
    /// How long one write attempt may take during a failover before the client gives up on it and tries
    /// again, for both systems.
    #[arg(long, default_value_t = 100)]
    attempt_deadline_ms: u64,
    /// Benchmark a debug goferd (figures are not recorded).
    #[arg(long)]
    debug: bool,
    /// Print the figures only; leave bench/RESULTS.md alone.
    #[arg(long)]
    no_record: bool,
}

fn tls_channel(pki: &Pki, url: &str) -> Result<Channel> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem));
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tls_config(tls)?
        .connect_lazy())
}

/// Three etcd members.
struct EtcdCluster {
    members: Vec<Member>,
    clients: BTreeMap<u64, String>,
}

impl EtcdCluster {
    fn start(pki: &Pki, dir: &Path) -> Result<EtcdCluster> {
        let mut ports = Vec::new();
        for id in 1..=3u64 {
            ports.push((id, free_port()?, free_port()?));
        }
        let initial: Vec<String> = ports
            .iter()
            .map(|(id, _, peer)| format!("e{id}=https://127.0.0.1:{peer}"))
            .collect();
        let (mut members, mut clients) = (Vec::new(), BTreeMap::new());
        for (id, client, peer) in ports {
            let (cert, key) = (pki.file(&format!("node{id}.pem")), pki.file(&format!("node{id}.key")));
            let command: Vec<String> = [
                "etcd".to_string(),
                format!("--name=e{id}"),
                format!("--data-dir={}", dir.join(format!("etcd{id}")).display()),
                format!("--listen-client-urls=https://127.0.0.1:{client}"),
                format!("--advertise-client-urls=https://127.0.0.1:{client}"),
                format!("--listen-peer-urls=https://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=https://127.0.0.1:{peer}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=gofer-bench".into(),
                format!("--cert-file={cert}"),
                format!("--key-file={key}"),
                format!("--peer-cert-file={cert}"),
                format!("--peer-key-file={key}"),
                format!("--peer-trusted-ca-file={}", pki.file("ca.pem")),
                "--peer-client-cert-auth".into(),
                "--log-level=warn".into(),
            ]
            .to_vec();
            let mut member = Member {
                id,
                command,
                log: dir.join(format!("etcd{id}.log")),
                child: None,
            };
            member.start()?;
            members.push(member);
            clients.insert(id, format!("https://127.0.0.1:{client}"));
        }
        Ok(EtcdCluster { members, clients })
    }

    /// The leader, from `etcdctl endpoint status` on the live members.
    fn leader(&self, pki: &Pki, deadline: Duration) -> Result<u64> {
        let start = Instant::now();
        loop {
            for member in self.members.iter().filter(|m| m.child.is_some()) {
                let out = Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args([
                        "--endpoints",
                        &self.clients[&member.id],
                        "--cacert",
                        &pki.file("ca.pem"),
                    ])
                    .args(["endpoint", "status", "-w", "json", "--command-timeout=1s"])
                    .output()?;
                if out.status.success()
                    && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                {
                    let status = &value[0]["Status"];
                    if status["leader"]
                        .as_u64()
                        .is_some_and(|l| l != 0 && Some(l) == status["header"]["member_id"].as_u64())
                    {
                        return Ok(member.id);
                    }
                }
            }
            ensure!(start.elapsed() < deadline, "no etcd leader within {deadline:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One write through a client of either system.
#[derive(Clone)]
enum Writer {
    Gofer(Api),
    Etcd(etcd::kv_client::KvClient<Channel>),
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl Writer {
    async fn write(&mut self) -> Result<()> {
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        match self {
            Writer::Gofer(api) => {
                let request = v1::CreateNamespaceRequest { id: format!("w{n}") };
                api.create_namespace(tonic::Request::new(request)).await?;
            }
            Writer::Etcd(kv) => {
                let request = etcd::PutRequest {
                    key: format!("w{n}").into_bytes(),
                    value: vec![b'x'; 64],
                    ..Default::default()
                };
                kv.put(request).await?;
            }
        }
        Ok(())
    }
}

async fn sequential(writer: &mut Writer, warmup: usize, writes: usize) -> Result<Vec<Duration>> {
    for _ in 0..warmup {
        writer.write().await?;
    }
    let mut samples = Vec::with_capacity(writes);
    for _ in 0..writes {
        let start = Instant::now();
        writer.write().await?;
        samples.push(start.elapsed());
    }
    samples.sort_unstable();
    Ok(samples)
}

async fn throughput(writer: &Writer, clients: usize, seconds: u64) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let mut writer = writer.clone();
            let done = done.clone();
            tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    if writer.write().await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / seconds as f64)
}

/// Retries a write every 20 ms, each attempt cut off after `deadline`, until one is acknowledged; returns
/// how long that took.
async fn until_acknowledged(writer: &mut Writer, since: Instant, deadline: Duration) -> Result<Duration> {
    loop {
        if tokio::time::timeout(deadline, writer.write())
            .await
            .is_ok_and(|r| r.is_ok())
        {
            return Ok(since.elapsed());
        }
        if since.elapsed() > Duration::from_secs(30) {
            bail!("no write was acknowledged within 30 s of the kill");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Figures {
    latency: Summary,
    forwarded: Summary,
    p99: Duration,
    throughput: f64,
    failovers: Vec<Duration>,
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    ensure!(
        args.writes > 0 && args.clients > 0 && args.seconds > 0,
        "counts must be positive"
    );
    let profile = if args.debug {
        BuildProfile::Debug
    } else {
        BuildProfile::Release
    };
    let bins = bin_dir_with_profile(profile)?;
    ensure!(
        Command::new("etcd").arg("--version").output().is_ok(),
        "etcd is not installed (apt-get install etcd-server etcd-client)"
    );
    let dir = tempfile::Builder::new().prefix("gofer-raft-bench-").tempdir()?;
    let names: Vec<String> = (1..=3).map(|id| format!("node{id}")).collect();
    let pki = Pki::make(&bins.join("goferd"), dir.path(), &names)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut gofer = GoferCluster::start(&bins, &pki, dir.path(), 3, &[])?;
    let mut etcd = EtcdCluster::start(&pki, dir.path())?;
    let (gofer_figures, etcd_figures) = runtime.block_on(async {
        let leader = gofer.leader(Duration::from_secs(60)).await?;
        let mut gofer_writer = Writer::Gofer(gofer.client(leader).await?);
        let etcd_leader = etcd.leader(&pki, Duration::from_secs(60))?;
        let mut etcd_writer = Writer::Etcd(etcd::kv_client::KvClient::new(tls_channel(
            &pki,
            &etcd.clients[&etcd_leader],
        )?));
        eprintln!("sequential writes…");
        let gofer_latency = sequential(&mut gofer_writer, args.warmup, args.writes).await?;
        let etcd_latency = sequential(&mut etcd_writer, args.warmup, args.writes).await?;
        eprintln!("sequential writes through a follower…");
        let follower = gofer.members.iter().find(|m| m.id != leader).context("a follower")?.id;
        let mut writer = Writer::Gofer(gofer.client(follower).await?);
        let gofer_forwarded = sequential(&mut writer, args.warmup, args.writes).await?;
        let follower = etcd
            .members
            .iter()
            .find(|m| m.id != etcd_leader)
            .context("a follower")?
            .id;
        let mut writer = Writer::Etcd(etcd::kv_client::KvClient::new(tls_channel(
            &pki,
            &etcd.clients[&follower],
        )?));
        let etcd_forwarded = sequential(&mut writer, args.warmup, args.writes).await?;
        eprintln!("throughput with {} clients…", args.clients);
        let gofer_throughput = throughput(&gofer_writer, args.clients, args.seconds).await?;
        let etcd_throughput = throughput(&etcd_writer, args.clients, args.seconds).await?;
        let (mut gofer_failovers, mut etcd_failovers) = (Vec::new(), Vec::new());
        for round in 0..args.failovers {
            eprintln!("failover {}/{}…", round + 1, args.failovers);
            let leader = gofer.leader(Duration::from_secs(60)).await?;
            let survivor = gofer
                .members
                .iter()
                .find(|m| m.id != leader)
                .map(|m| m.id)
                .context("a survivor")?;
            let mut writer = Writer::Gofer(gofer.client(survivor).await?);
            writer.write().await?;
            let killed = Instant::now();
            gofer
                .members
                .iter_mut()
                .find(|m| m.id == leader)
                .context("the leader")?
                .kill();
            gofer_failovers
                .push(until_acknowledged(&mut writer, killed, Duration::from_millis(args.attempt_deadline_ms)).await?);
            gofer
                .members
                .iter_mut()
                .find(|m| m.id == leader)
                .context("the leader")?
                .start()?;

            let leader = etcd.leader(&pki, Duration::from_secs(60))?;
            let survivor = etcd
                .members
                .iter()
                .find(|m| m.id != leader)
                .map(|m| m.id)
                .context("a survivor")?;
            let mut writer = Writer::Etcd(etcd::kv_client::KvClient::new(tls_channel(
                &pki,
                &etcd.clients[&survivor],
            )?));
            writer.write().await?;
            let killed = Instant::now();
            etcd.members
                .iter_mut()
                .find(|m| m.id == leader)
                .context("the leader")?
                .kill();
            etcd_failovers
                .push(until_acknowledged(&mut writer, killed, Duration::from_millis(args.attempt_deadline_ms)).await?);
            etcd.members
                .iter_mut()
                .find(|m| m.id == leader)
                .context("the leader")?
                .start()?;
            // Let both restarted members rejoin before the next round.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let figures = |latency: Vec<Duration>, forwarded: Vec<Duration>, throughput: f64, failovers| Figures {
            p99: percentile(&latency, 99),
            latency: Summary::of(&latency).expect("samples"),
            forwarded: Summary::of(&forwarded).expect("samples"),
            throughput,
            failovers,
        };
        anyhow::Ok((
            figures(gofer_latency, gofer_forwarded, gofer_throughput, gofer_failovers),
            figures(etcd_latency, etcd_forwarded, etcd_throughput, etcd_failovers),
        ))
    })?;
    let machine = runtime.block_on(Machine::describe())?;
    let text = report(&args, profile, &gofer_figures, &etcd_figures, &machine);
    drop(gofer);
    drop(etcd);
    gofer_bench::publish(
        SECTION_HEADING,
        &text,
        !args.no_record && profile == BuildProfile::Release,
    )
}

fn list(failovers: &[Duration]) -> String {
    failovers
        .iter()
        .map(|d| format!("{:.0}", millis(*d)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(args: &Args, profile: BuildProfile, gofer: &Figures, etcd: &Figures, machine: &Machine) -> String {
    let median = |d: &[Duration]| {
        let mut v = d.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    format!(
        "{SECTION_HEADING}\n\n\
         Replicated writes on three members each, on loopback, TLS to clients and mutual TLS between members, fsync on \
         commit: Gofer (`goferd server`; a write is CreateNamespace) against etcd 3.4 (a write is a 64-byte Put), measured \
         the same way in the same run. Latency: {writes} sequential writes to the leader after {warmup} warm-up writes, \
         then as many to a follower, which passes each to the leader. \
         Throughput: {clients} concurrent clients for {seconds} s. Failover: SIGKILL the leader, then the time until a \
         surviving member acknowledges a write (each attempt cut off after {attempt} ms and tried again 20 ms later, \
         the same for both), {rounds} times. Goals: write p50 no slower than etcd's; failover under 1 s and no slower \
         than etcd's.\n\n\
         Until 2026-12-05 the failover figure cut each attempt off after 2 s: an etcd follower holds a write until a new \
         leader exists, so every etcd failover read about 2,030 ms, one whole attempt, while Gofer's followers refuse at \
         once and its client tried again every 20 ms. Both now get the same short deadline.\n\n\
         - Date: {date}\n\
         - Machine: {cpus} CPUs ({cpu})\n\
         - goferd: {profile:?} build of {revision}\n\n\
         | | write p50 ms | write p99 ms | via a follower p50 ms | writes/s ({clients} clients) | failover median ms | failovers ms |\n\
         |---|---:|---:|---:|---:|---:|---|\n\
         | gofer | {gp50:.1} | {gp99:.1} | {gf50:.1} | {gtp:.0} | {gfo:.0} | {gfl} |\n\
         | etcd | {ep50:.1} | {ep99:.1} | {ef50:.1} | {etp:.0} | {efo:.0} | {efl} |\n\n\
         Ratios gofer/etcd: write p50 {rp50:.2}×, p99 {rp99:.2}×, via a follower p50 {rf50:.2}×, throughput {rtp:.2}×, \
         failover median {rfo:.2}×.\n",
        writes = args.writes,
        warmup = args.warmup,
        clients = args.clients,
        seconds = args.seconds,
        rounds = args.failovers,
        attempt = args.attempt_deadline_ms,
        date = utc_timestamp(SystemTime::now()),
        cpus = machine.cpus,
        cpu = machine.cpu_model,
        revision = machine.revision,
        gp50 = millis(gofer.latency.median),
        gp99 = millis(gofer.p99),
        gf50 = millis(gofer.forwarded.median),
        gtp = gofer.throughput,
        gfo = millis(median(&gofer.failovers)),
        gfl = list(&gofer.failovers),
        ep50 = millis(etcd.latency.median),
        ep99 = millis(etcd.p99),
        ef50 = millis(etcd.forwarded.median),
        etp = etcd.throughput,
        efo = millis(median(&etcd.failovers)),
        efl = list(&etcd.failovers),
        rp50 = millis(gofer.latency.median) / millis(etcd.latency.median).max(0.001),
        rp99 = millis(gofer.p99) / millis(etcd.p99).max(0.001),
        rf50 = millis(gofer.forwarded.median) / millis(etcd.forwarded.median).max(0.001),
        rtp = gofer.throughput / etcd.throughput.max(0.001),
        rfo = millis(median(&gofer.failovers)) / millis(median(&etcd.failovers)).max(0.001),
    )
}
