//! `purser bench`: a load generator for a running server.
//!
//! Scenarios: charges over N accounts (`uniform`), one `hot` account, the
//! `batch` API, `holds` (hold then capture), and `mixed` (charges and balance
//! reads). Closed loop by default (each worker sends its next request when
//! the last one is answered); with `--rate` it is open loop: request i is due
//! at `start + i / rate`, and its latency counts from then, not from when a
//! busy worker got to it, so a slow server cannot hide its queueing
//! (no coordinated omission). Latencies go into an HDR histogram.
//!
//! It speaks HTTP/1.1 over keep-alive TCP connections by hand: one
//! preformatted request per send, no client library in the loop, so the load
//! generator spends little of the CPU it shares with the server.

// Throughput and latency figures are floats; no amount of credits is.
#![allow(clippy::float_arithmetic)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Charges spread uniformly over `--accounts` accounts.
    Uniform,
    /// Every charge on one account.
    Hot,
    /// `POST /v1/usage/batch` with `--batch-size` charges per request.
    Batch,
    /// A hold, then its capture (two requests per pair).
    Holds,
    /// Nine charges for every balance read.
    Mixed,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "uniform")]
    scenario: Scenario,
    /// Accounts the charges are spread over (`acct-0` …).
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to measure, in seconds (after the warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Stop after this many measured requests instead (the duration is then ignored).
    #[arg(long)]
    count: Option<u64>,
    /// Unmeasured warm-up, in seconds.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Open loop at this many requests per second (default: closed loop).
    #[arg(long)]
    rate: Option<u64>,
    /// Charges per request in the batch scenario.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Credits per charge.
    #[arg(long, default_value = "0.001")]
    credits: String,
    /// Create the accounts first (existing ones are kept).
    #[arg(long)]
    setup: bool,
    /// Tier of the accounts created by `--setup`.
    #[arg(long, default_value = "business")]
    tier: String,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `host:port` of an `http://` URL.
fn authority(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .context("purser bench speaks plain http:// only")?;
    Ok(rest.trim_end_matches('/').to_owned())
}

/// One keep-alive connection and a reusable read buffer.
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(address: &str) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buffer: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends one request and reads its answer; returns the status.
    async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        self.stream.write_all(request).await?;
        self.buffer.clear();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buffer[..end]).context("response head")?;
                let status: u16 = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .context("status line")?;
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while self.buffer.len() < end + 4 + length {
                    let read = self.stream.read(&mut chunk).await?;
                    if read == 0 {
                        bail!("connection closed mid-body");
                    }
                    self.buffer.extend_from_slice(&chunk[..read]);
                }
                let body = self.buffer[end + 4..end + 4 + length].to_vec();
                return Ok((status, body));
            }
            let read = self.stream.read(&mut chunk).await?;
            if read == 0 {
                bail!("connection closed");
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn request(method: &str, path: &str, key: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: purser\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Results gathered by one worker.
struct Tally {
    latency: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    charges: u64,
    transport_errors: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            statuses: BTreeMap::new(),
            charges: 0,
            transport_errors: 0,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency.add(&other.latency).expect("same bounds");
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.charges += other.charges;
        self.transport_errors += other.transport_errors;
    }
}

struct Shared {
    args: BenchArgs,
    key: String,
    address: String,
    /// Requests handed out (the open-loop schedule's index).
    issued: AtomicU64,
    /// Requests answered while measuring (for the progress line).
    done: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
    start: Instant,
    /// Open loop: one permit per request that has come due, released by a
    /// pacer thread (tokio's timers tick in whole milliseconds, which would
    /// add up to a millisecond to every latency counted from the due time).
    due: tokio::sync::Semaphore,
}

/// Releases a permit for each request of the open-loop schedule as it comes
/// due, sleeping with the OS timer's precision in between.
fn pace(shared: &Shared, rate: u64) {
    let rate = u128::from(rate.max(1));
    let mut released: u128 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let elapsed = shared.start.elapsed().as_nanos();
        let due_now = elapsed * rate / 1_000_000_000 + 1;
        if due_now > released {
            let more = usize::try_from(due_now - released).unwrap_or(usize::MAX);
            shared
                .due
                .add_permits(more.min(tokio::sync::Semaphore::MAX_PERMITS / 2));
            released = due_now;
        }
        let next = Duration::from_nanos(
            u64::try_from(released * 1_000_000_000 / rate).unwrap_or(u64::MAX),
        );
        if let Some(wait) = next.checked_sub(shared.start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    shared.due.close();
}

pub fn run(
    url: &str,
    api_key: Option<String>,
    args: BenchArgs,
) -> anyhow::Result<std::process::ExitCode> {
    let key = api_key.context("purser bench needs an API key (--api-key or PURSER_API_KEY)")?;
    let address = authority(url)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        if args.setup {
            setup(&address, &key, &args).await?;
        }
        let shared = Arc::new(Shared {
            key,
            address,
            issued: AtomicU64::new(0),
            done: AtomicU64::new(0),
            measuring: AtomicBool::new(args.warmup == 0),
            stop: AtomicBool::new(false),
            start: Instant::now(),
            due: tokio::sync::Semaphore::new(0),
            args,
        });
        let pacer = shared.args.rate.map(|rate| {
            let shared = shared.clone();
            std::thread::spawn(move || pace(&shared, rate))
        });
        let mut workers = Vec::new();
        for worker in 0..shared.args.concurrency.max(1) {
            let shared = shared.clone();
            workers.push(tokio::spawn(
                async move { work(shared, worker as u64).await },
            ));
        }
        let warmup = Duration::from_secs(shared.args.warmup);
        tokio::time::sleep(warmup).await;
        shared.done.store(0, Ordering::Relaxed);
        shared.measuring.store(true, Ordering::Relaxed);
        let measured_from = Instant::now();
        // `--count` replaces the duration.
        let limit = match shared.args.count {
            Some(_) => Duration::MAX,
            None => Duration::from_secs(shared.args.duration.max(1)),
        };
        let mut last = 0;
        while measured_from.elapsed() < limit
            && shared
                .args
                .count
                .is_none_or(|count| shared.done.load(Ordering::Relaxed) < count)
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let done = shared.done.load(Ordering::Relaxed);
            if !shared.args.json && measured_from.elapsed().as_millis() / 1000 != last {
                last = measured_from.elapsed().as_millis() / 1000;
                let seconds = measured_from.elapsed().as_secs_f64().max(0.001);
                eprint!(
                    "\r{:>5}s  {done:>10} requests  {:>9.0}/s   ",
                    last,
                    done as f64 / seconds
                );
                let _ = std::io::stderr().flush();
            }
        }
        let elapsed = measured_from.elapsed();
        shared.stop.store(true, Ordering::Relaxed);
        if let Some(pacer) = pacer {
            // It closes the schedule, so workers waiting for a due request stop.
            let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
        }
        let mut total = Tally::new();
        for worker in workers {
            total.merge(worker.await??);
        }
        if !shared.args.json {
            eprintln!();
        }
        report(&shared.args, &total, elapsed);
        Ok(std::process::ExitCode::SUCCESS)
    })
}

/// Creates the accounts the scenario uses, `concurrency` at a time.
async fn setup(address: &str, key: &str, args: &BenchArgs) -> anyhow::Result<()> {
    let accounts = if args.scenario == Scenario::Hot {
        1
    } else {
        args.accounts.max(1)
    };
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.clamp(1, 32) {
        let (next, address, key, tier) = (
            next.clone(),
            address.to_owned(),
            key.to_owned(),
            args.tier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(&address).await?;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= accounts {
                    return anyhow::Ok(());
                }
                let body = format!(r#"{{"id":"acct-{index}","tier":"{tier}"}}"#);
                let (status, answer) = connection
                    .exchange(&request("POST", "/v1/accounts", &key, &body))
                    .await?;
                if status != 201 && status != 409 {
                    bail!(
                        "creating acct-{index}: HTTP {status}: {}",
                        String::from_utf8_lossy(&answer)
                    );
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    eprintln!("{accounts} accounts ready");
    Ok(())
}

/// A small, fast, seeded generator (splitmix64) for account choice.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn work(shared: Arc<Shared>, worker: u64) -> anyhow::Result<Tally> {
    let args = &shared.args;
    let mut connection = Connection::open(&shared.address).await?;
    let mut tally = Tally::new();
    let mut random = worker.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x1234_5678;
    let charge_body = format!(r#"{{"credits":"{}"}}"#, args.credits);
    let accounts = if args.scenario == Scenario::Hot {
        1
    } else {
        args.accounts.max(1)
    };
    let mut sequence = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        if args.rate.is_some() {
            match shared.due.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
        }
        let ticket = shared.issued.fetch_add(1, Ordering::Relaxed);
        let due = match args.rate {
            Some(rate) => {
                shared.start
                    + Duration::from_nanos(ticket.saturating_mul(1_000_000_000) / rate.max(1))
            }
            None => Instant::now(),
        };
        let account = next_random(&mut random) % accounts;
        sequence += 1;
        let (charges, result) = match args.scenario {
            Scenario::Uniform | Scenario::Hot => {
                let path = format!("/v1/accounts/acct-{account}/usage");
                (
                    1,
                    connection
                        .exchange(&request("POST", &path, &shared.key, &charge_body))
                        .await,
                )
            }
            Scenario::Mixed if sequence.is_multiple_of(10) => {
                let path = format!("/v1/accounts/acct-{account}/balance");
                (
                    0,
                    connection
                        .exchange(&request("GET", &path, &shared.key, ""))
                        .await,
                )
            }
            Scenario::Mixed => {
                let path = format!("/v1/accounts/acct-{account}/usage");
                (
                    1,
                    connection
                        .exchange(&request("POST", &path, &shared.key, &charge_body))
                        .await,
                )
            }
            Scenario::Batch => {
                let items: Vec<String> = (0..args.batch_size)
                    .map(|item| {
                        let account = next_random(&mut random) % accounts;
                        format!(
                            r#"{{"account":"acct-{account}","idempotency_key":"bench-{worker}-{ticket}-{item}","credits":"{}"}}"#,
                            args.credits
                        )
                    })
                    .collect();
                let body = format!(r#"{{"items":[{}]}}"#, items.join(","));
                (
                    args.batch_size as u64,
                    connection
                        .exchange(&request("POST", "/v1/usage/batch", &shared.key, &body))
                        .await,
                )
            }
            Scenario::Holds => hold_and_capture(&mut connection, &shared, account).await,
        };
        let measuring = shared.measuring.load(Ordering::Relaxed);
        match result {
            Ok((status, _)) if measuring => {
                let micros = due.elapsed().as_micros().max(1) as u64;
                tally.latency.saturating_record(micros);
                *tally.statuses.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    tally.charges += charges;
                }
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => {
                if measuring {
                    tally.transport_errors += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                connection = Connection::open(&shared.address).await?;
            }
        }
    }
    Ok(tally)
}

/// A hold of twice the charge, captured at the charge: one pair, one "request".
async fn hold_and_capture(
    connection: &mut Connection,
    shared: &Shared,
    account: u64,
) -> (u64, anyhow::Result<(u16, Vec<u8>)>) {
    let credits = &shared.args.credits;
    let path = format!("/v1/accounts/acct-{account}/holds");
    let body = format!(r#"{{"credits":"{credits}","ttl_seconds":60}}"#);
    let held = match connection
        .exchange(&request("POST", &path, &shared.key, &body))
        .await
    {
        Ok((201, answer)) => answer,
        other => return (0, other),
    };
    let id = serde_json::from_slice::<serde_json::Value>(&held)
        .ok()
        .and_then(|value| value["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let path = format!("/v1/holds/{id}/capture");
    (
        1,
        connection
            .exchange(&request("POST", &path, &shared.key, "{}"))
            .await,
    )
}

fn report(args: &BenchArgs, total: &Tally, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64().max(0.001);
    let requests: u64 = total.statuses.values().sum();
    let percentile = |q: f64| total.latency.value_at_quantile(q) as f64 / 1000.0;
    let errors: BTreeMap<String, u64> = total
        .statuses
        .iter()
        .filter(|(status, _)| !(200..300).contains(*status))
        .map(|(status, count)| (status.to_string(), *count))
        .chain(
            (total.transport_errors > 0).then(|| ("transport".to_string(), total.transport_errors)),
        )
        .collect();
    let result = serde_json::json!({
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "concurrency": args.concurrency,
        "rate": args.rate,
        "seconds": seconds,
        "requests": requests,
        "requests_per_second": requests as f64 / seconds,
        "charges_per_second": total.charges as f64 / seconds,
        "errors": errors,
        "latency_ms": {
            "p50": percentile(0.5), "p90": percentile(0.9), "p99": percentile(0.99),
            "p999": percentile(0.999), "max": total.latency.max() as f64 / 1000.0,
        },
    });
    if args.json {
        println!("{result}");
        return;
    }
    println!(
        "{:?}: {requests} requests in {seconds:.1} s: {:.0} requests/s, {:.0} charges/s",
        args.scenario,
        requests as f64 / seconds,
        total.charges as f64 / seconds
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        percentile(0.5),
        percentile(0.9),
        percentile(0.99),
        percentile(0.999),
        total.latency.max() as f64 / 1000.0
    );
    if errors.is_empty() {
        println!("errors: none");
    } else {
        println!("errors: {errors:?}");
    }
}
