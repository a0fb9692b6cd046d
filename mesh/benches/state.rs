//! Benchmarks of agent state: durable writes through the store's group
//! commit, and snapshots to object storage.
//!
//! One run measures, each figure after a warm-up and over several
//! repetitions:
//! 1. acknowledged durable updates per second through [`Store::write`] with
//!    1, 100 and 10,000 concurrent writers, against a plain loop of sled
//!    `insert` + `flush` on a fresh database;
//! 2. taking a snapshot of a filled store, against raw puts of the same data
//!    objects to the same object store; restoring every record; loading the
//!    catalog; and restoring one agent with a ranged read.
//!
//! It prints a Markdown report and writes it to `bench/results/state.md`.
//! Run it with `cargo bench -p mesh --bench state`; `bench/README.md` lists
//! the environment variables that change what it does.

#[path = "support/machine.rs"]
mod machine;

use machine::output_of;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::AgentId;
use anyhow::Context as _;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use mesh::snapshot::{Catalog, Manifest, Snapshots};
use mesh::storage::{Record, Store};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use tokio::sync::watch;

/// How many measured repetitions each figure gets, unless `BENCH_REPS` says.
const DEFAULT_REPS: usize = 5;
/// The writer counts of the group commit benchmark.
const WRITER_COUNTS: [usize; 3] = [1, 100, 10_000];
/// How long each write repetition runs.
const WRITE_WINDOW: Duration = Duration::from_secs(2);
/// How long each write repetition runs with `BENCH_QUICK`.
const QUICK_WRITE_WINDOW: Duration = Duration::from_millis(300);
/// The size of an agent's state in the write benchmark.
const WRITE_STATE_BYTES: usize = 64;
/// How many agents the snapshot benchmark stores.
const SNAPSHOT_AGENTS: usize = 100_000;
/// How many agents the snapshot benchmark stores with `BENCH_QUICK`.
const QUICK_SNAPSHOT_AGENTS: usize = 10_000;
/// The size of an agent's state in the snapshot benchmark.
const SNAPSHOT_STATE_BYTES: usize = 1024;
/// How many writes are in flight while the snapshot store is filled.
const FILL_CONCURRENCY: usize = 4096;
/// How many single-agent restores each snapshot repetition times.
const LOOKUPS_PER_REP: usize = 20;
/// The epoch of every benchmark write; fencing never refuses them.
const EPOCH: u64 = 1;
/// The state version of every benchmark record.
const STATE_VERSION: u16 = 1;
/// The seed of the pseudo-random states, so runs store the same bytes.
const SEED: u64 = 0x5EED_5EED_5EED_5EED;
/// The cluster name of local snapshots.
const CLUSTER: &str = "bench";
/// The node name snapshots are taken as.
const NODE: &str = "node-a";
/// Bytes in a megabyte, as reported (decimal, like disk vendors).
const MEGABYTE: f64 = 1e6;
/// The share of raw put throughput a snapshot should reach, in percent.
const SNAPSHOT_TARGET_PERCENT: f64 = 80.0;
/// Turns a fraction into a percentage.
const PERCENT: f64 = 100.0;
/// The region given to S3-compatible stores, which ignore it.
const S3_REGION: &str = "us-east-1";

/// What this run measures, from the environment.
#[derive(Debug, Clone)]
struct Settings {
    quick: bool,
    reps: usize,
    window: Duration,
    agents: usize,
    s3: Option<S3Settings>,
}

/// Where the optional S3 target is.
#[derive(Debug, Clone)]
struct S3Settings {
    endpoint: String,
    bucket: String,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let reps = match std::env::var("BENCH_REPS") {
            Ok(v) => v.parse().context("BENCH_REPS must be a whole number")?,
            Err(_) => DEFAULT_REPS,
        };
        anyhow::ensure!(reps > 0, "BENCH_REPS must be at least 1");
        let s3 = match std::env::var("BENCH_S3_ENDPOINT") {
            Ok(endpoint) => Some(S3Settings {
                endpoint,
                bucket: std::env::var("BENCH_S3_BUCKET")
                    .context("BENCH_S3_ENDPOINT is set, so BENCH_S3_BUCKET must be too")?,
            }),
            Err(_) => None,
        };
        Ok(Settings {
            quick,
            reps,
            window: if quick {
                QUICK_WRITE_WINDOW
            } else {
                WRITE_WINDOW
            },
            agents: if quick {
                QUICK_SNAPSHOT_AGENTS
            } else {
                SNAPSHOT_AGENTS
            },
            s3,
        })
    }

    /// The command that repeats this run.
    fn command(&self) -> String {
        let mut command = String::new();
        if self.quick {
            command.push_str("BENCH_QUICK=1 ");
        }
        if self.reps != DEFAULT_REPS {
            let _ = write!(command, "BENCH_REPS={} ", self.reps);
        }
        if let Some(s3) = &self.s3 {
            let _ = write!(
                command,
                "BENCH_S3_ENDPOINT={} BENCH_S3_BUCKET={} \
                 AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… ",
                s3.endpoint, s3.bucket
            );
        }
        if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
            let _ = write!(command, "CARGO_TARGET_DIR={dir} ");
        }
        command.push_str("cargo bench -p mesh --bench state");
        command
    }
}

/// The timings of one figure, one per repetition.
#[derive(Debug, Default, Clone)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut values = self.0.clone();
        values.sort_by(f64::total_cmp);
        values
    }

    fn median(&self) -> f64 {
        let values = self.sorted();
        let middle = values.len() / 2;
        if values.len() % 2 == 1 {
            values[middle]
        } else {
            (values[middle - 1] + values[middle]) / 2.0
        }
    }

    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    fn runs(&self) -> usize {
        self.0.len()
    }
}

/// A deterministic generator of incompressible bytes (SplitMix64), so a
/// snapshot's compression cannot make it look faster than real states would.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

fn agent_id(kind: &str, number: usize) -> AgentId {
    format!("{kind}/a{number:06}")
        .parse()
        .expect("benchmark names are valid agent ids")
}

fn record(seq: u64, state: Vec<u8>) -> Record {
    Record {
        epoch: EPOCH,
        seq,
        state_version: STATE_VERSION,
        state,
    }
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let report = runtime.block_on(run(&settings))?;

    print!("{report}");
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    std::fs::create_dir_all(&results)
        .with_context(|| format!("cannot create {}", results.display()))?;
    let file = results.join("state.md");
    std::fs::write(&file, &report).with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!("report written to {}", file.display());
    Ok(())
}

async fn run(settings: &Settings) -> anyhow::Result<String> {
    let mut report = header(settings);

    eprintln!("measuring durable writes…");
    let writes = write_section(settings).await?;
    report.push_str(&writes);

    eprintln!("filling a store with {} agents…", settings.agents);
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let store = Store::open(&dir.path().join("node"))?;
    let filled = Instant::now();
    fill(&store, settings.agents).await?;
    anyhow::ensure!(
        store.len() == settings.agents,
        "the store holds {} agents, {} were written",
        store.len(),
        settings.agents
    );
    let fill_secs = filled.elapsed().as_secs_f64();

    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&objects)?;
    let local: Arc<dyn ObjectStore> = Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(&objects)?,
    );
    eprintln!("measuring snapshots to the local file system…");
    let target = format!("local file system ({})", objects.display());
    let figures = snapshot_figures(settings, &store, local, CLUSTER, &target).await?;
    report.push_str(&snapshot_section(settings, &target, fill_secs, &figures));

    if let Some(s3) = &settings.s3 {
        eprintln!("measuring snapshots to S3 at {}…", s3.endpoint);
        let remote = s3_store(s3)?;
        // A cluster name of its own keeps this run clear of earlier ones.
        let cluster = format!("{CLUSTER}-{}", std::process::id());
        let target = format!("S3 ({}, bucket {})", s3.endpoint, s3.bucket);
        let figures = snapshot_figures(settings, &store, remote, &cluster, &target).await?;
        report.push_str(&snapshot_section(settings, &target, fill_secs, &figures));
    }
    Ok(report)
}

fn s3_store(s3: &S3Settings) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(&s3.bucket)
        .with_endpoint(&s3.endpoint)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region(S3_REGION)
        .build()
        .context("cannot configure the S3 store")?;
    Ok(Arc::new(store))
}

// The machine, and how to repeat the run.

fn header(settings: &Settings) -> String {
    let unknown = || "unknown".to_owned();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let machine = machine::describe(&root);
    let date = output_of("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]).unwrap_or_else(unknown);
    let temp = std::env::temp_dir();
    let temp_fs = output_of(
        "findmnt",
        &["-no", "SOURCE,FSTYPE", "-T", &temp.to_string_lossy()],
    )
    .unwrap_or_else(unknown);

    let mut out = String::new();
    let _ = writeln!(out, "# agent-mesh state benchmark\n");
    let _ = writeln!(out, "- date: {date}");
    let _ = writeln!(
        out,
        "- machine: {} CPUs ({}), {} memory",
        machine.cpus, machine.cpu, machine.memory
    );
    let _ = writeln!(out, "- kernel: Linux {}; {}", machine.kernel, machine.rustc);
    let _ = writeln!(out, "- temp dir: {} on {temp_fs}", temp.display());
    let _ = writeln!(out, "- revision: {}", machine.revision);
    let _ = writeln!(
        out,
        "- sizes: {}; each figure is the median of {} runs after a warm-up run",
        if settings.quick { "quick" } else { "default" },
        settings.reps
    );
    let _ = writeln!(out, "- command: `{}`\n", settings.command());
    out
}

// Durable writes.

async fn write_section(settings: &Settings) -> anyhow::Result<String> {
    let plain = plain_loop_samples(settings)?;
    let mut rows = vec![(
        "plain sled `insert` + `flush`, 1 agent".to_owned(),
        plain.clone(),
    )];
    for writers in WRITER_COUNTS {
        eprintln!("  {writers} writers");
        let samples = group_commit_samples(settings, writers).await?;
        let plural = if writers == 1 { "" } else { "s" };
        let name = format!("group commit, {} writer{plural}", thousands(writers as u64));
        rows.push((name, samples));
    }

    let mut out = String::new();
    let _ = writeln!(out, "## Acknowledged durable updates\n");
    let _ = writeln!(
        out,
        "Each writer is one agent doing awaited writes of a {WRITE_STATE_BYTES}-byte \
         state one after another for {} per run; updates/s is every acknowledged \
         write over the wall time until the last writer finished.\n",
        seconds(settings.window.as_secs_f64())
    );
    let _ = writeln!(
        out,
        "| figure | updates/s (median) | min–max | runs | vs plain loop |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: |");
    let baseline = plain.median();
    for (name, samples) in &rows {
        let _ = writeln!(
            out,
            "| {name} | {} | {}–{} | {} | {:.2}x |",
            thousands(samples.median() as u64),
            thousands(samples.min() as u64),
            thousands(samples.max() as u64),
            samples.runs(),
            samples.median() / baseline
        );
    }
    out.push('\n');
    Ok(out)
}

/// Updates per second of sequential sled `insert` + `flush` on a fresh
/// database: what one agent gets without group commit.
fn plain_loop_samples(settings: &Settings) -> anyhow::Result<Samples> {
    let dir = tempfile::tempdir()?;
    let db = sled::open(dir.path().join("plain"))?;
    let key = agent_id("counter", 0).to_string().into_bytes();
    let state = SplitMix(SEED).bytes(WRITE_STATE_BYTES);
    let mut seq = 0;
    let mut run = |window: Duration| -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut done = 0u64;
        while started.elapsed() < window {
            seq += 1;
            db.insert(&key, record(seq, state.clone()).encode())?;
            db.flush()?;
            done += 1;
        }
        Ok(done as f64 / started.elapsed().as_secs_f64())
    };

    run(settings.window)?;
    let mut samples = Samples::default();
    for _ in 0..settings.reps {
        samples.push(run(settings.window)?);
    }
    Ok(samples)
}

/// Updates per second through the store's group commit, `writers` agents at
/// once, on a fresh store.
async fn group_commit_samples(settings: &Settings, writers: usize) -> anyhow::Result<Samples> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let mut rng = SplitMix(SEED);
    let states: Vec<Vec<u8>> = (0..writers).map(|_| rng.bytes(WRITE_STATE_BYTES)).collect();

    group_commit_run(&store, &states, settings.window).await?;
    let mut samples = Samples::default();
    for _ in 0..settings.reps {
        samples.push(group_commit_run(&store, &states, settings.window).await?);
    }
    Ok(samples)
}

/// One timed run: every writer starts at once, writes until the window
/// closes, and the run ends when the last write is acknowledged.
async fn group_commit_run(
    store: &Store,
    states: &[Vec<u8>],
    window: Duration,
) -> anyhow::Result<f64> {
    // Writers wait at a gate, so spawning 10,000 tasks is not timed.
    let (open, gate) = watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(states.len());
    for (number, state) in states.iter().enumerate() {
        let store = store.clone();
        let mut gate = gate.clone();
        let state = state.clone();
        let id = agent_id("counter", number);
        tasks.push(tokio::spawn(async move {
            let deadline = gate
                .wait_for(Option::is_some)
                .await?
                .expect("the gate opens with a deadline");
            let mut done = 0u64;
            while Instant::now() < deadline {
                store.write(&id, record(done, state.clone())).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }

    let started = Instant::now();
    open.send(Some(started + window))?;
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

// Snapshots.

/// Writes `agents` records of incompressible state, many at once (setup).
async fn fill(store: &Store, agents: usize) -> anyhow::Result<()> {
    let mut rng = SplitMix(SEED);
    let writes = (0..agents).map(|number| {
        let store = store.clone();
        let id = agent_id("bench", number);
        let state = rng.bytes(SNAPSHOT_STATE_BYTES);
        async move { store.write(&id, record(1, state)).await }
    });
    futures::stream::iter(writes)
        .buffer_unordered(FILL_CONCURRENCY)
        .try_for_each(|()| async { Ok(()) })
        .await?;
    Ok(())
}

/// The snapshot timings against one object store, in seconds.
#[derive(Debug, Default)]
struct SnapshotFigures {
    take: Samples,
    raw: Samples,
    /// Raw put time over snapshot time, per repetition.
    ratio: Samples,
    records: Samples,
    catalog: Samples,
    lookup: Samples,
    /// The data objects' total size.
    bytes: u64,
    /// How many data objects a snapshot has.
    objects: usize,
    /// The index and manifest sizes.
    metadata: u64,
}

async fn snapshot_figures(
    settings: &Settings,
    store: &Store,
    objects: Arc<dyn ObjectStore>,
    cluster: &str,
    target: &str,
) -> anyhow::Result<SnapshotFigures> {
    let snapshots = Snapshots::new(objects.clone(), cluster, target);
    let raw_prefix = format!("{cluster}-raw");
    let mut figures = SnapshotFigures::default();
    let mut rng = SplitMix(SEED ^ cluster.len() as u64);

    // The raw puts send one buffer of random bytes, cut to each object's
    // size; building it is not timed.
    let warm_up = snapshot_round(&snapshots, store, settings, &mut rng).await?;
    let largest = warm_up
        .manifest
        .data
        .iter()
        .map(|o| o.size)
        .max()
        .unwrap_or(0);
    let payload = Bytes::from(rng.bytes(largest as usize));
    raw_put(objects.as_ref(), &raw_prefix, &warm_up.manifest, &payload).await?;

    for rep in 0..settings.reps {
        eprintln!("  repetition {} of {}", rep + 1, settings.reps);
        let round = snapshot_round(&snapshots, store, settings, &mut rng).await?;
        let raw = raw_put(objects.as_ref(), &raw_prefix, &round.manifest, &payload).await?;
        figures.take.push(round.take);
        figures.raw.push(raw);
        figures.ratio.push(raw / round.take);
        figures.records.push(round.records);
        figures.catalog.push(round.catalog);
        for lookup in round.lookups {
            figures.lookup.push(lookup);
        }
        figures.bytes = round.manifest.bytes;
        figures.objects = round.manifest.data.len();
        figures.metadata = round.manifest.index.size;
    }

    // Leave nothing behind (a shared bucket outlives the run).
    snapshots.prune(NODE, 0, None, "").await?;
    Ok(figures)
}

/// What one snapshot repetition measured, in seconds.
#[derive(Debug)]
struct SnapshotRound {
    manifest: Manifest,
    take: f64,
    records: f64,
    catalog: f64,
    lookups: Vec<f64>,
}

/// Takes a snapshot, restores it whole, loads the catalog and restores a
/// few single agents; older snapshots are removed, untimed.
async fn snapshot_round(
    snapshots: &Snapshots,
    store: &Store,
    settings: &Settings,
    rng: &mut SplitMix,
) -> anyhow::Result<SnapshotRound> {
    let started = Instant::now();
    let manifest = snapshots.take(NODE, store).await?;
    let take = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        manifest.agents as usize == settings.agents,
        "the snapshot lacks agents"
    );

    // Keeping one snapshot holds storage flat, and the catalog then reads
    // one index, as on a node.
    snapshots.prune(NODE, 1, None, &manifest.id).await?;

    let started = Instant::now();
    let records = snapshots.records(&manifest).await?;
    let records_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(records.len() == settings.agents, "the restore lacks agents");
    drop(records);

    let started = Instant::now();
    let catalog = Catalog::load(snapshots).await?;
    let catalog_secs = started.elapsed().as_secs_f64();

    let mut lookups = Vec::with_capacity(LOOKUPS_PER_REP);
    for _ in 0..LOOKUPS_PER_REP {
        let id = agent_id("bench", (rng.next() % settings.agents as u64) as usize);
        let started = Instant::now();
        let (m, entry) = catalog.find(&id).context("the catalog lacks an agent")?;
        let record = snapshots.record(m, entry).await?;
        lookups.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(m.id == manifest.id, "the catalog found an older snapshot");
        anyhow::ensure!(
            record.state.len() == SNAPSHOT_STATE_BYTES,
            "a restore lost bytes"
        );
    }

    Ok(SnapshotRound {
        manifest,
        take,
        records: records_secs,
        catalog: catalog_secs,
        lookups,
    })
}

/// Puts objects of the same sizes as `manifest`'s data objects, one after
/// another as a snapshot does, and returns the seconds taken; the objects
/// are deleted afterwards, untimed.
async fn raw_put(
    objects: &dyn ObjectStore,
    prefix: &str,
    manifest: &Manifest,
    payload: &Bytes,
) -> anyhow::Result<f64> {
    let paths: Vec<ObjectPath> = (0..manifest.data.len())
        .map(|i| ObjectPath::from(format!("{prefix}/data-{i:05}.bin")))
        .collect();
    let started = Instant::now();
    for (path, info) in paths.iter().zip(&manifest.data) {
        let body = PutPayload::from(payload.slice(..info.size as usize));
        objects.put(path, body).await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for path in &paths {
        objects.delete(path).await?;
    }
    Ok(elapsed)
}

fn snapshot_section(
    settings: &Settings,
    target: &str,
    fill_secs: f64,
    figures: &SnapshotFigures,
) -> String {
    let state_bytes = (settings.agents * SNAPSHOT_STATE_BYTES) as f64;
    let data_mb = figures.bytes as f64 / MEGABYTE;
    let rate = |samples: &Samples| format!("{:.0} MB/s", data_mb / samples.median());
    let mut out = String::new();
    let _ = writeln!(out, "## Snapshots: {target}\n");
    let _ = writeln!(
        out,
        "{} agents of {SNAPSHOT_STATE_BYTES} bytes of random state ({:.1} MB of state; \
         filling the store took {}, untimed). A snapshot is {} data object(s) of {:.1} MB \
         in all, plus an index of {:.1} MB and a manifest. The raw baseline puts the same \
         number of objects with the same sizes, one after another, as a snapshot does. \
         MB/s is data-object bytes (10^6) per second.\n",
        thousands(settings.agents as u64),
        state_bytes / MEGABYTE,
        seconds(fill_secs),
        figures.objects,
        data_mb,
        figures.metadata as f64 / MEGABYTE,
    );
    let _ = writeln!(out, "| figure | median | min–max | runs | throughput |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: |");
    let mut row = |name: &str, samples: &Samples, throughput: String| {
        let _ = writeln!(
            out,
            "| {name} | {} | {}–{} | {} | {throughput} |",
            seconds(samples.median()),
            seconds(samples.min()),
            seconds(samples.max()),
            samples.runs()
        );
    };
    row("`take` a snapshot", &figures.take, rate(&figures.take));
    row(
        "raw `put` of the same data objects",
        &figures.raw,
        rate(&figures.raw),
    );
    row(
        "`records`: restore every agent",
        &figures.records,
        format!(
            "{} agents/s",
            thousands((settings.agents as f64 / figures.records.median()) as u64)
        ),
    );
    row("`Catalog::load`", &figures.catalog, String::new());
    row(
        "one agent: `find` + `record`",
        &figures.lookup,
        String::new(),
    );
    let _ = writeln!(
        out,
        "| snapshot throughput / raw put throughput | {:.0} % | {:.0}–{:.0} % | {} \
         | target ≥ {SNAPSHOT_TARGET_PERCENT:.0} % |",
        figures.ratio.median() * PERCENT,
        figures.ratio.min() * PERCENT,
        figures.ratio.max() * PERCENT,
        figures.ratio.runs()
    );
    out.push('\n');
    out
}

// Formatting.

/// A whole number with thin separators between thousands: `12,345`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration in the unit that keeps it readable.
fn seconds(secs: f64) -> String {
    const MICROS: f64 = 1e-6;
    const MILLIS: f64 = 1e-3;
    if secs < MILLIS {
        format!("{:.0} µs", secs / MICROS)
    } else if secs < 1.0 {
        format!("{:.1} ms", secs / MILLIS)
    } else {
        format!("{secs:.2} s")
    }
}
