//! The `stdout` exporter: one JSON line per evaluation, the lines `evalstream eval` prints, so a
//! one-machine user sees scores as they happen and can pipe them on (`| jq`).
//!
//! Lines are written and flushed before the inputs are let go: what was acknowledged was printed.
//! A closed stdout (the reader went away) rejects the inputs rather than dropping their
//! evaluations silently.

use std::io::Write as _;
use std::time::Duration;

use crate::pipeline::ack::{Rejection, Token};
use crate::pipeline::export::{Exporter, Outputs, Shapes};

/// Writes evaluations to the process's standard output.
pub struct StdoutExporter {
    id: String,
}

impl StdoutExporter {
    /// An exporter with id `id`.
    pub fn new(id: &str) -> StdoutExporter {
        StdoutExporter { id: id.to_owned() }
    }
}

impl Exporter for StdoutExporter {
    fn id(&self) -> &str {
        &self.id
    }

    fn shapes(&self) -> Shapes {
        Shapes {
            lines: true,
            ..Shapes::default()
        }
    }

    fn export(&self, batch: &Outputs, tokens: &[Token]) {
        if batch.lines.is_empty() {
            return;
        }
        let mut out = std::io::stdout().lock();
        let written = batch
            .lines
            .iter()
            .try_for_each(|line| writeln!(out, "{line}"))
            .and_then(|()| out.flush());
        if let Err(e) = written {
            for token in tokens {
                token.reject(Rejection {
                    error_type: "delivery",
                    message: format!("cannot write to stdout: {e}"),
                    output: None,
                });
            }
        }
    }

    fn flush(&self, _timeout: Duration) -> bool {
        std::io::stdout().flush().is_ok()
    }
}
