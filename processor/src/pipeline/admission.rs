//! Admission: how much a receiver may have in flight — inputs taken and not yet finished, and
//! their bytes. A receiver that pushes (OTLP) asks before taking a request and answers "busy"
//! when the limits are reached, so the client retries later instead of the worker's memory
//! growing; a receiver that pulls (Kafka) keeps its own limits by reading less.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The limits and what is in flight now.
#[derive(Debug)]
pub struct Admission {
    max_inputs: usize,
    max_bytes: usize,
    inputs: AtomicUsize,
    bytes: AtomicUsize,
}

/// One admitted input: counted in flight until dropped (its token's origin holds it).
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    bytes: usize,
}

impl Admission {
    /// At most `max_inputs` inputs and `max_bytes` bytes in flight (at least one input is
    /// always admitted when nothing is in flight, however large).
    pub fn new(max_inputs: usize, max_bytes: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_inputs: max_inputs.max(1),
            max_bytes: max_bytes.max(1),
            inputs: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        })
    }

    /// Admits an input of `bytes`, or `None` when the limits are reached.
    pub fn try_admit(self: &Arc<Self>, bytes: usize) -> Option<Permit> {
        let inputs = self.inputs.fetch_add(1, Ordering::AcqRel);
        let before = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        let alone = inputs == 0;
        if !alone && (inputs >= self.max_inputs || before + bytes > self.max_bytes) {
            self.inputs.fetch_sub(1, Ordering::AcqRel);
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            return None;
        }
        Some(Permit {
            admission: self.clone(),
            bytes,
        })
    }

    /// Inputs in flight.
    pub fn inputs(&self) -> usize {
        self.inputs.load(Ordering::Acquire)
    }

    /// Bytes in flight.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.inputs.fetch_sub(1, Ordering::AcqRel);
        self.admission.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_stops_at_either_limit_and_reopens_as_permits_drop() {
        let a = Admission::new(2, 100);
        let one = a.try_admit(10).unwrap();
        let two = a.try_admit(10).unwrap();
        assert!(a.try_admit(1).is_none(), "two inputs in flight");
        drop(one);
        assert!(a.try_admit(91).is_none(), "101 bytes would pass 100");
        let three = a.try_admit(80).unwrap();
        assert_eq!((a.inputs(), a.bytes()), (2, 90));
        drop((two, three));
        assert_eq!((a.inputs(), a.bytes()), (0, 0));
        // One input larger than the byte limit still goes when it is alone.
        let big = a.try_admit(1000).unwrap();
        assert!(a.try_admit(1).is_none());
        drop(big);
    }
}
