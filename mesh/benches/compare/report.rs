//! Turns the comparison bench's measurements into its Markdown report.

use std::fmt::Write as _;

use super::machine::Machine;
use super::roles::ArmyResult;
use super::{LocalResult, RunResult, Settings, ARMY_WORKERS, PAYLOAD_BYTES};

/// The figures of one run of one system.
#[derive(Debug)]
struct Run {
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    per_second: f64,
}

/// One system's runs.
#[derive(Debug)]
pub(crate) struct System {
    name: &'static str,
    runs: Vec<Run>,
}

/// The value at quantile `q` of sorted `values`.
fn quantile(sorted: &[u64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or(0) as f64
}

impl System {
    pub(crate) fn new(name: &'static str) -> System {
        System {
            name,
            runs: Vec::new(),
        }
    }

    /// Adds a run; fails if one-way messages were lost.
    pub(crate) fn add(&mut self, mut result: RunResult) -> anyhow::Result<()> {
        if result.counted != result.casts as u64 {
            anyhow::bail!(
                "{}: {} one-way messages sent, {} counted",
                self.name,
                result.casts,
                result.counted
            );
        }
        result.samples_ns.sort_unstable();
        let s = &result.samples_ns;
        self.runs.push(Run {
            p50_us: quantile(s, 0.5) / 1e3,
            p99_us: quantile(s, 0.99) / 1e3,
            p999_us: quantile(s, 0.999) / 1e3,
            per_second: result.casts as f64 / (result.cast_ns as f64 / 1e9),
        });
        Ok(())
    }

    fn stat(&self, f: impl Fn(&Run) -> f64) -> Stat {
        Stat::of(self.runs.iter().map(f).collect())
    }
}

/// The median and range of one figure over runs.
#[derive(Debug, Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(mut values: Vec<f64>) -> Stat {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => values[n / 2],
            _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        };
        Stat {
            median,
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// `median (min–max)` with `digits` decimals.
    fn show(&self, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median, self.min, self.max
        )
    }
}

/// The local runs of one kind of actor at one size.
#[derive(Debug)]
pub(crate) struct Local {
    what: &'static str,
    n: usize,
    runs: Vec<LocalResult>,
}

impl Local {
    pub(crate) fn new(what: &'static str, n: usize) -> Local {
        Local {
            what,
            n,
            runs: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, result: LocalResult) {
        self.runs.push(result);
    }

    fn rate(&self) -> Stat {
        Stat::of(self.runs.iter().map(|r| r.n as f64 / r.seconds).collect())
    }

    fn heap(&self) -> Stat {
        Stat::of(
            self.runs
                .iter()
                .map(|r| r.heap_bytes as f64 / r.n as f64)
                .collect(),
        )
    }

    fn rss(&self) -> Stat {
        Stat::of(
            self.runs
                .iter()
                .map(|r| r.rss_bytes as f64 / r.n as f64)
                .collect(),
        )
    }
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "not met"
    }
}

/// The whole report.
pub(crate) fn render(
    settings: &Settings,
    machine: &Machine,
    systems: &[System],
    locals: &[Local],
    passivated: &LocalResult,
    army: &ArmyResult,
) -> String {
    let mut out = String::new();
    let o = &mut out;
    let _ = writeln!(
        o,
        "# Side by side: mesh, ractor_cluster, NATS, Erlang/OTP\n"
    );
    let _ = writeln!(
        o,
        "Measured by `cargo bench -p mesh --bench compare` ({}), all systems in one run \
         on loopback, {} runs taken in turn; each cell is the median over runs with the \
         range in brackets. Ratios divide medians of the same run.\n",
        if settings.quick {
            "BENCH_QUICK"
        } else {
            "full"
        },
        settings.runs,
    );
    let _ = writeln!(
        o,
        "- machine: {} × {}, {} memory, kernel {}, {}; revision {}",
        machine.cpus, machine.cpu, machine.memory, machine.kernel, machine.rustc, machine.revision
    );
    let _ = writeln!(
        o,
        "- per run and system: {} unrecorded calls, then {} timed sequential calls, then {} \
         one-way messages; payload {PAYLOAD_BYTES} bytes",
        (settings.calls / 10).max(1),
        settings.calls,
        settings.casts
    );
    let _ = writeln!(
        o,
        "- the machine is shared with other builds: compare ratios, not absolute figures\n"
    );

    let mesh = &systems[0];
    let _ = writeln!(o, "## Cross-node call round trip (µs)\n");
    let _ = writeln!(o, "| system | p50 | p99 | p99.9 | mesh p50 ÷ system p50 |");
    let _ = writeln!(o, "| --- | --- | --- | --- | --- |");
    for s in systems {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            s.name,
            s.stat(|r| r.p50_us).show(1),
            s.stat(|r| r.p99_us).show(1),
            s.stat(|r| r.p999_us).show(1),
            ratio(mesh.stat(|r| r.p50_us).median, s.stat(|r| r.p50_us).median),
        );
    }
    let _ = writeln!(o, "\n## One-way throughput (messages per second)\n");
    let _ = writeln!(o, "| system | messages/s | mesh ÷ system |");
    let _ = writeln!(o, "| --- | --- | --- |");
    for s in systems {
        let _ = writeln!(
            o,
            "| {} | {} | {} |",
            s.name,
            s.stat(|r| r.per_second).show(0),
            ratio(
                mesh.stat(|r| r.per_second).median,
                s.stat(|r| r.per_second).median
            ),
        );
    }

    let by_name = |name: &str| systems.iter().find(|s| s.name == name);
    if let Some(unbatched) = by_name(super::UNBATCHED) {
        let _ = writeln!(
            o,
            "\nThe mesh batches one-way messages on links of frame version 3; `{}` is \
             the same build speaking versions 1-2 only, measured in the same run: batching \
             changes one-way throughput by {} and the call round trip (p50) by {}.",
            unbatched.name,
            ratio(
                mesh.stat(|r| r.per_second).median,
                unbatched.stat(|r| r.per_second).median
            ),
            ratio(
                mesh.stat(|r| r.p50_us).median,
                unbatched.stat(|r| r.p50_us).median
            ),
        );
    }

    let _ = writeln!(o, "\n## Local: activation rate and memory per live actor\n");
    let _ = writeln!(
        o,
        "Fresh process per run; `heap` is what this binary's allocator counts (Erlang: \
         `erlang:memory(processes)`), `RSS` how much the resident set grew, both divided \
         by N. A mesh activation includes its claim in the ownership bucket (a JetStream \
         write) and the directory and ownership-cache entries.\n"
    );
    let _ = writeln!(
        o,
        "| N | what | started per second | heap B each | RSS B each | heap ÷ Erlang |"
    );
    let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- |");
    for l in locals {
        let erlang = locals
            .iter()
            .find(|e| e.n == l.n && e.what.starts_with("Erlang"))
            .map_or(f64::NAN, |e| e.heap().median);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            l.n,
            l.what,
            l.rate().show(0),
            l.heap().show(0),
            l.rss().show(0),
            ratio(l.heap().median, erlang),
        );
    }
    let per = |bytes: usize| bytes as f64 / passivated.n as f64;
    let left = passivated.passivated_heap_bytes.unwrap_or(0);
    let _ = writeln!(
        o,
        "\nPassivation: {} durable agents activated ({:.0} heap bytes each while live), \
         then left idle with `passivate_after = 2s`: once all were passivated, {:.0} heap \
         bytes each remained (the ownership cache entry and allocator slack).\n",
        passivated.n,
        per(passivated.heap_bytes),
        per(left),
    );

    render_army(o, army);

    let _ = writeln!(o, "## Targets\n");
    if let (Some(ractor), Some(erlang)) = (by_name("ractor_cluster"), by_name("Erlang/OTP")) {
        let rtt = mesh.stat(|r| r.p50_us).median / ractor.stat(|r| r.p50_us).median;
        let _ = writeln!(
            o,
            "- mesh call round trip ≤ 1.2 × raw ractor_cluster (p50): {rtt:.2}× — {}",
            verdict(rtt <= 1.2)
        );
        let tput = mesh.stat(|r| r.per_second).median / erlang.stat(|r| r.per_second).median;
        let _ = writeln!(
            o,
            "- mesh one-way throughput ≥ 2 × Erlang: {tput:.2}× — {}",
            verdict(tput >= 2.0)
        );
    }
    for l in locals.iter().filter(|l| l.what == "mesh agent") {
        let erlang = locals
            .iter()
            .find(|e| e.n == l.n && e.what.starts_with("Erlang"))
            .map_or(f64::NAN, |e| e.heap().median);
        let _ = writeln!(
            o,
            "- memory per live agent ≤ an Erlang process at {}: {:.0} B vs {:.0} B — {}",
            l.n,
            l.heap().median,
            erlang,
            verdict(l.heap().median <= erlang)
        );
    }
    let _ = writeln!(
        o,
        "- idle agents passivated to no memory: {:.0} B left per passivated agent — {}",
        per(left),
        verdict(per(left) < 0.1 * per(passivated.heap_bytes))
    );
    out
}

/// The army's section: tasks through the board.
fn render_army(o: &mut String, army: &ArmyResult) {
    let us = |samples: &[u64], q: f64| {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        quantile(&sorted, q) / 1000.0
    };
    let direct = us(&army.direct_ns, 0.5);
    let via = us(&army.board_ns, 0.5);
    let rate = army.tasks as f64 / (army.tasks_ns as f64 / 1e9);
    let _ = writeln!(o, "## The army: `sleep 0` tasks through the board\n");
    let _ = writeln!(
        o,
        "Two mesh nodes: one hosts {ARMY_WORKERS} workers (`workers = {ARMY_WORKERS}`; the \
         board saw {}), the other submits; `board/main` (replicated: every change is a \
         JetStream write) ran on `{}`. Direct: the submitting node calls a worker with \
         `run sleep 0`. Through the board: submit, then ask `show` again as soon as it \
         answers until the task is done (so up to one `show` round trip of the figure \
         is the polling). \
         Throughput: {} tasks submitted with {} submissions in flight, until the board \
         counts them all done. One run.\n",
        army.workers,
        army.board_node,
        army.tasks,
        super::roles::SUBMITS_IN_FLIGHT,
    );
    let _ = writeln!(o, "| figure | p50 | p99 | note |");
    let _ = writeln!(o, "| --- | --- | --- | --- |");
    let _ = writeln!(
        o,
        "| one task, calling a worker directly (µs) | {direct:.0} | {:.0} | {} calls |",
        us(&army.direct_ns, 0.99),
        army.direct_ns.len()
    );
    let _ = writeln!(
        o,
        "| one task through the board, submit to done (µs) | {via:.0} | {:.0} | {} tasks, \
         one at a time |",
        us(&army.board_ns, 0.99),
        army.board_ns.len()
    );
    let _ = writeln!(
        o,
        "| the board's added latency per task (µs) | {:.0} | | p50 difference |",
        via - direct
    );
    let _ = writeln!(
        o,
        "\nThroughput: **{rate:.0} tasks per second** through the board with \
         {ARMY_WORKERS} workers ({} tasks in {:.2} s).\n",
        army.tasks,
        army.tasks_ns as f64 / 1e9
    );
}
