//! `evalstream guard-bench` (hidden): the guard API's bench client. It drives `Check` over gRPC
//! with a rotation of answers (clean, a refusal, one with an email address) in two phases and
//! prints what it measured:
//!
//! After a warm-up of 4,000 checks (not counted):
//!
//! 1. **Fixed rate** (`--rate` requests per second for `--seconds`): each request is sent at its
//!    scheduled time whether or not earlier ones have returned (open loop), and its latency is
//!    counted from that time, so a stall shows in the percentiles instead of slowing the sender
//!    down (no coordinated omission). p50, p99, p99.9 and the maximum, from an HdrHistogram.
//!    Beside it, the latency counted from each request's send (when its task started on this
//!    client's runtime): the difference is this client's own dispatch delay, which on a machine
//!    whose cores the server shares is most of the tail from the schedule (docs/performance.md).
//! 2. **Most throughput** (`--concurrency` callers each sending as soon as its last answer came,
//!    for `--seconds`): answers per second.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::transport::Channel;

use crate::guard::attributes;
use crate::guard::proto::guard_client::GuardClient;
use crate::guard::proto::{CheckRequest, Message};

/// What `guard-bench` was asked to do.
#[derive(Debug, Clone, clap::Args)]
pub struct GuardBenchOptions {
    /// The guard API's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:4319")]
    pub endpoint: String,
    /// The guard set to check with.
    #[arg(long, default_value = "default")]
    pub guard: String,
    /// Requests per second in the fixed-rate phase.
    #[arg(long, default_value_t = 5000)]
    pub rate: u32,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Callers in the throughput phase.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

/// The answers checked, in turn.
const ANSWERS: [&str; 3] = [
    "The Eiffel Tower is 330 metres tall and stands on the Champ de Mars in Paris.",
    "I'm sorry, but I can't help with that request.",
    "Sure: write to jane.doe@example.com and she will send you the invoice.",
];

fn request(guard: &str, i: u64) -> CheckRequest {
    CheckRequest {
        guard: guard.to_owned(),
        input_messages: vec![Message {
            role: "user".into(),
            content: "Tell me about the Eiffel Tower.".into(),
        }],
        output_text: ANSWERS[(i % ANSWERS.len() as u64) as usize].into(),
        attributes: attributes(&[
            ("user.id", "bench"),
            ("gen_ai.request.model", "gpt-4o-mini"),
        ]),
        ..Default::default()
    }
}

/// Latencies in microseconds, with the errors.
struct Tally {
    latencies: Histogram<u64>,
    errors: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latencies: Histogram::new(3).expect("3 significant digits are valid"),
            errors: 0,
        }
    }

    /// Counts one answer that took `micros` (from its scheduled or actual send).
    fn note<T>(&mut self, answered: &Result<T, tonic::Status>, micros: u64) {
        match answered {
            Ok(_) => {
                let _ = self.latencies.record(micros.max(1));
            }
            Err(_) => self.errors += 1,
        }
    }

    fn print(&self, what: &str, took: Duration) {
        let h = &self.latencies;
        let at = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{what}: {} answered ({:.0}/s), {} errors; latency ms p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            h.len(),
            h.len() as f64 / took.as_secs_f64(),
            self.errors,
            at(0.5),
            at(0.99),
            at(0.999),
            h.max() as f64 / 1000.0,
        );
    }
}

/// Runs both phases and prints their figures.
pub async fn run(options: &GuardBenchOptions) -> anyhow::Result<()> {
    let channel = Channel::from_shared(options.endpoint.clone())?
        .connect()
        .await?;
    let client = GuardClient::new(channel);
    // A first call: the connection is up and the guard set exists.
    client
        .clone()
        .check(request(&options.guard, 0))
        .await
        .map_err(|e| anyhow::anyhow!("the first check failed: {}", e.message()))?;
    let phase = Duration::from_secs_f64(options.seconds);
    // Warm-up, not counted: connections, lazily built matchers, allocator pages, thread wake-ups.
    let warm_up: Vec<_> = (0..8u64)
        .map(|c| {
            let (mut client, guard) = (client.clone(), options.guard.clone());
            tokio::spawn(async move {
                for n in 0..500 {
                    let _ = client.check(request(&guard, c * 500 + n)).await;
                }
            })
        })
        .collect();
    for task in warm_up {
        let _ = task.await;
    }

    let paced = client.clone();
    // From each request's schedule, and from its send.
    let tallies = Arc::new(Mutex::new([Tally::new(), Tally::new()]));
    let interval = Duration::from_secs_f64(1.0 / f64::from(options.rate.max(1)));
    let started = Instant::now();
    // The sends are paced by an OS thread: tokio's timer ticks in milliseconds, which would send
    // in bursts and add up to a millisecond to every latency measured from its scheduled time.
    let pacer = {
        let (runtime, tallies, guard) = (
            tokio::runtime::Handle::current(),
            tallies.clone(),
            options.guard.clone(),
        );
        std::thread::spawn(move || {
            let mut tasks = Vec::new();
            let mut i = 0u64;
            loop {
                let scheduled = started + interval.mul_f64(i as f64);
                if scheduled >= started + phase {
                    return tasks;
                }
                std::thread::sleep(scheduled.saturating_duration_since(Instant::now()));
                let (mut client, tallies, request) =
                    (paced.clone(), tallies.clone(), request(&guard, i));
                tasks.push(runtime.spawn(async move {
                    let sent = Instant::now();
                    let answered = client.check(request).await;
                    let [from_schedule, from_send] =
                        [scheduled, sent].map(|since| since.elapsed().as_micros() as u64);
                    let mut tallies = tallies.lock().unwrap_or_else(|e| e.into_inner());
                    tallies[0].note(&answered, from_schedule);
                    tallies[1].note(&answered, from_send);
                }));
                i += 1;
            }
        })
    };
    let tasks = tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the pacing thread panicked"))?;
    for task in tasks {
        let _ = task.await;
    }
    let took = started.elapsed();
    println!(
        "fixed rate {}/s for {:.0} s (latency from each request's scheduled send time)",
        options.rate, options.seconds
    );
    {
        let tallies = tallies.lock().unwrap_or_else(|e| e.into_inner());
        tallies[0].print("  check", took);
        tallies[1].print("  from send", took);
    }

    let tally = Arc::new(Mutex::new(Tally::new()));
    let started = Instant::now();
    let callers: Vec<_> = (0..options.concurrency.max(1))
        .map(|c| {
            let (mut client, tally, guard) = (client.clone(), tally.clone(), options.guard.clone());
            tokio::spawn(async move {
                let mut n = c as u64;
                while started.elapsed() < phase {
                    let sent = Instant::now();
                    let answered = client.check(request(&guard, n)).await;
                    let micros = sent.elapsed().as_micros() as u64;
                    tally
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .note(&answered, micros);
                    n += 1;
                }
            })
        })
        .collect();
    for caller in callers {
        let _ = caller.await;
    }
    let took = started.elapsed();
    println!(
        "most throughput: {} callers for {:.0} s",
        options.concurrency, options.seconds
    );
    tally
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .print("  check", took);
    Ok(())
}
