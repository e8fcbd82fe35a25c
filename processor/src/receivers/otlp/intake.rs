//! The OTLP receiver's side of the pipeline: a taken request becomes an [`Input`] for the
//! workers, with a token whose origin ([`PendingRequest`]) answers the RPC once every
//! evaluation made from it was accepted by the exporters.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;

use super::{Answer, Busy, Intake, Request};
use crate::pipeline::ack::{Origin, Rejection, Status, Token};
use crate::pipeline::admission::{Admission, Permit};
use crate::pipeline::worker::{Body, Input};

/// Hands requests to the workers, within the admission limits.
pub struct PipelineIntake {
    /// The workers' queue, until [`PipelineIntake::close`]: a server task that outlives its
    /// shutdown grace must not keep the workers from finishing.
    work: Mutex<Option<Sender<Vec<Input>>>>,
    admission: Arc<Admission>,
    /// Answer as soon as a request is taken, not once its evaluations are exported.
    answer_on_receipt: bool,
    /// Pass the original spans on to the exporters.
    forward: bool,
}

/// How long a client is told to wait when the pipeline is full: long enough for in-flight work
/// to finish (evaluating a request takes milliseconds; exporting, a backend round trip).
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl PipelineIntake {
    /// An intake feeding `work` within `admission`'s limits.
    pub fn new(
        work: Sender<Vec<Input>>,
        admission: Arc<Admission>,
        answer_on_receipt: bool,
        forward: bool,
    ) -> PipelineIntake {
        PipelineIntake {
            work: Mutex::new(Some(work)),
            admission,
            answer_on_receipt,
            forward,
        }
    }
}

impl PipelineIntake {
    /// Stops taking requests (they get "unavailable") and lets go of the workers' queue.
    pub fn close(&self) {
        self.work.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Intake for PipelineIntake {
    fn submit(&self, request: Request, bytes: usize) -> Result<oneshot::Receiver<Answer>, Busy> {
        let busy = Busy {
            retry_after: RETRY_AFTER,
        };
        let permit = self.admission.try_admit(bytes).ok_or(busy)?;
        let (tx, rx) = oneshot::channel();
        let (answer, early) = if self.answer_on_receipt {
            (None, Some(tx))
        } else {
            (Some(tx), None)
        };
        let token = Token::new(PendingRequest {
            answer: Mutex::new(answer),
            rejection: Mutex::new(None),
            _permit: permit,
        });
        let body = match request {
            Request::Traces(request) if self.forward => Body::Forwarded(request),
            Request::Traces(request) => Body::Decoded(request),
            Request::Logs(request) => Body::Logs(request),
        };
        let input = Input { body, token };
        let sent = match &*self.work.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(work) => work.try_send(vec![input]),
            None => Err(TrySendError::Disconnected(Vec::new())),
        };
        match sent {
            Ok(()) => {
                if let Some(early) = early {
                    let _ = early.send(Answer::Accepted {
                        rejected_spans: 0,
                        message: String::new(),
                    });
                }
                Ok(rx)
            }
            // The workers' queue is full: nothing was taken (the token's answer goes nowhere).
            Err(TrySendError::Full(_)) => Err(Busy {
                retry_after: RETRY_AFTER,
            }),
            Err(TrySendError::Disconnected(_)) => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Answer::Unavailable {
                    message: "evalstream is stopping".into(),
                    retry_after: Some(RETRY_AFTER),
                });
                Ok(rx)
            }
        }
    }
}

/// The origin of an OTLP request's token: the RPC waiting for its answer.
struct PendingRequest {
    answer: Mutex<Option<oneshot::Sender<Answer>>>,
    /// The first rejection, which the answer reports.
    rejection: Mutex<Option<Rejection>>,
    /// Counts the request in flight until it is answered.
    _permit: Permit,
}

impl Origin for PendingRequest {
    fn finished(&self, status: Status) {
        let Some(answer) = self.answer.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let rejection = self
            .rejection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let reply = match (status, rejection) {
            (Status::Delivered, _) | (Status::Rejected, None) => Answer::Accepted {
                rejected_spans: 0,
                message: String::new(),
            },
            // The request itself is at fault: sending it again would fail again.
            (Status::Rejected, Some(r)) if r.error_type != "delivery" => Answer::Invalid {
                message: format!("{}: {}", r.error_type, r.message),
            },
            // An exporter could not deliver the evaluations: the client sends the request again
            // and it is evaluated again (scores have deterministic ids, so a backend can tell).
            (Status::Rejected, Some(r)) => Answer::Unavailable {
                message: r.message,
                retry_after: Some(RETRY_AFTER),
            },
        };
        // The client may have gone (a timeout); then nobody needs the answer.
        let _ = answer.send(reply);
    }

    fn rejected(&self, _token: Token, rejection: Rejection) {
        let mut first = self.rejection.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(rejection);
        }
    }
}
