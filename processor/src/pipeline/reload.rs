//! Hot reload of Rhai scorers: a thread looks at each script's file every few seconds and swaps
//! in a changed version that compiles ([`Evaluator::reload`]). One that does not compile is
//! logged and counted once per distinct error, and the old version keeps running.
//!
//! Polling the file's text, rather than filesystem events, also sees the atomic symlink swaps
//! with which Kubernetes updates a mounted ConfigMap, and costs one small read per script every
//! [`INTERVAL`].
//!
//! [`Evaluator::reload`]: evalstream_evaluators::evaluator::Evaluator::reload

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use evalstream_evaluators::evaluator::{EvaluatorSet, Reload};
use tracing::{info, warn};

use crate::telemetry::metrics::Metrics;

/// How often script files are read again.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Starts the reload thread when some evaluator can reload (a script read from a file); it stops
/// once `done` is set.
pub fn start(
    evaluators: &Arc<EvaluatorSet>,
    metrics: &Arc<Metrics>,
    done: &Arc<AtomicBool>,
) -> std::io::Result<Option<JoinHandle<()>>> {
    if !evaluators
        .evaluators()
        .iter()
        .any(|e| e.evaluator.reloads())
    {
        return Ok(None);
    }
    let (evaluators, metrics, done) = (evaluators.clone(), metrics.clone(), done.clone());
    // Compiling parses recursively, as deep as the scripts' limits allow.
    crate::evaluation_thread("evalstream-reload".into())
        .spawn(move || {
            let mut last_failure: HashMap<String, String> = HashMap::new();
            let mut next = Instant::now() + INTERVAL;
            while !done.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(100));
                if Instant::now() < next {
                    continue;
                }
                next = Instant::now() + INTERVAL;
                for e in evaluators.evaluators() {
                    match e.evaluator.reload() {
                        Reload::Unchanged => {}
                        Reload::Reloaded => {
                            last_failure.remove(&e.name);
                            info!(evaluator = %e.name, version = %e.current_version(), "script reloaded");
                            metrics
                                .script_reloads
                                .with_label_values(&[e.name.as_str(), "reloaded"])
                                .inc();
                        }
                        Reload::Failed(error) => {
                            if last_failure.get(&e.name) != Some(&error) {
                                warn!(evaluator = %e.name, %error, "script not reloaded; the previous version keeps running");
                                metrics
                                    .script_reloads
                                    .with_label_values(&[e.name.as_str(), "failed"])
                                    .inc();
                                last_failure.insert(e.name.clone(), error);
                            }
                        }
                    }
                }
            }
        })
        .map(Some)
}
