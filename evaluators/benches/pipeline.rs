//! Decode + canonical view + the default heuristic evaluators, on corpus-shaped input.
//!
//! The input is the five real-instrumentation corpus exports (24 spans each, 10 of them LLM
//! calls), one Kafka message each, as the collector's `otlp_proto` and `otlp_json` encodings
//! write them. Throughput is reported per span and per byte, on one thread. Run with
//! `cargo bench -p evalstream-evaluators`; docs/performance.md quotes the figures.

#![allow(clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use evalstream_evaluators::otlp::{self, Encoding};
use evalstream_evaluators::span;
use evalstream_evaluators::spec;
use std::hint::black_box;

const FILES: [&str; 5] = [
    "openinference",
    "openllmetry",
    "otel_v2",
    "otel_v2_latest",
    "traceai",
];

fn messages(encoding: Encoding) -> Vec<Vec<u8>> {
    FILES
        .iter()
        .map(|f| {
            let name = match encoding {
                Encoding::OtlpProto => format!("{f}.pb"),
                Encoding::OtlpJson => format!("{f}.otlp.json"),
            };
            let path = format!(
                "{}/../tests/fixtures/corpus/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
        })
        .collect()
}

fn pipeline(c: &mut Criterion) {
    let set = spec::build_set(&spec::default_specs()).expect("default set");
    for encoding in [Encoding::OtlpProto, Encoding::OtlpJson] {
        let msgs = messages(encoding);
        let bytes: u64 = msgs.iter().map(|m| m.len() as u64).sum();
        let spans: u64 = msgs
            .iter()
            .map(|m| span::spans(&otlp::decode(m, encoding).expect("decodes")).count() as u64)
            .sum();

        for (unit, throughput) in [
            ("spans", Throughput::Elements(spans)),
            ("bytes", Throughput::Bytes(bytes)),
        ] {
            let mut group = c.benchmark_group(format!("{encoding}/{unit}"));
            group.throughput(throughput);
            group.bench_function("decode", |b| {
                b.iter(|| {
                    for m in &msgs {
                        black_box(otlp::decode(black_box(m), encoding).expect("decodes"));
                    }
                })
            });
            group.bench_function("decode+view", |b| {
                b.iter(|| {
                    for m in &msgs {
                        let request = otlp::decode(black_box(m), encoding).expect("decodes");
                        for s in span::spans(&request) {
                            black_box((s.kind(), s.model(), s.output_text().map(|t| t.len())));
                        }
                    }
                })
            });
            group.bench_function("decode+view+default_evaluators", |b| {
                let mut evaluations = Vec::new();
                b.iter(|| {
                    for m in &msgs {
                        let request = otlp::decode(black_box(m), encoding).expect("decodes");
                        for s in span::spans(&request) {
                            evaluations.clear();
                            set.evaluate(&s, &mut evaluations);
                            black_box(&evaluations);
                        }
                    }
                })
            });
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = pipeline
}
criterion_main!(benches);
