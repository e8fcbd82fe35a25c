"""Sends OTLP trace files through the OpenTelemetry Python SDK's own OTLP span exporters, for
tests/otlp.rs: what `evalstream run` receives is then exactly what an instrumented Python
application would send, encoded by the SDK rather than by the test.

Each file holds one protobuf `ExportTraceServiceRequest` (the corpus, tests/fixtures/corpus/*.pb).
Every span becomes an SDK `ReadableSpan`, as a finished span of a real tracer is: its trace,
span and parent ids, name, kind, start and end times, attributes (through the SDK's own
`BoundedAttributes`, which keeps or drops values as it does for an application's), events,
links, status, resource and instrumentation scope. The spans are cut into batches and exported
with `OTLPSpanExporter` from `opentelemetry.exporter.otlp.proto.grpc.trace_exporter` or
`...proto.http.trace_exporter`, by THREADS threads, each with its own exporter, exporting its
batches one after the other (as a BatchSpanProcessor's worker does) and calling `shutdown()`.
The exporters retry what the receiver asks them to retry (see tests/otlp.rs).

Standard output: one JSON document, {"spans": N, "exports": N, "failed": N, "reencoded": [...]}:
spans read, exports that succeeded and that failed, and the spans whose SDK encoding differs
from the file's (the fields that differ); the test expects none.

Exits 1 when an export did not succeed.

Usage: send_corpus.py --protocol grpc|http --endpoint URL [--batch-size N] [--threads N]
                      [--timeout SECONDS] FILE...
  grpc: URL is http://HOST:PORT; http: URL is the base, http://HOST:PORT (spans go to /v1/traces).
"""

import argparse
import json
import sys
import threading

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

# OTLP's SpanKind numbers; SPAN_KIND_UNSPECIFIED (0) has no SDK counterpart: a tracer makes
# INTERNAL spans by default.
KINDS = {
    0: SpanKind.INTERNAL,
    1: SpanKind.INTERNAL,
    2: SpanKind.SERVER,
    3: SpanKind.CLIENT,
    4: SpanKind.PRODUCER,
    5: SpanKind.CONSUMER,
}
# Span.flags: the low byte is the W3C trace flags; then "has is_remote" and "is_remote".
TRACE_FLAGS_MASK = 0xFF
IS_REMOTE = 0x200


def value(any_value):
    """An OTLP AnyValue as the Python value an application would set."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(value(v) for v in any_value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind)


def attributes(key_values):
    """Attributes as a span of the SDK holds them: BoundedAttributes, cleaned by the SDK's rules."""
    return BoundedAttributes(
        attributes={kv.key: value(kv.value) for kv in key_values},
        immutable=True,
        max_value_len=None,
    )


def context(trace_id, span_id, flags, trace_state=""):
    return SpanContext(
        trace_id=int.from_bytes(trace_id, "big"),
        span_id=int.from_bytes(span_id, "big"),
        is_remote=bool(flags & IS_REMOTE),
        trace_flags=TraceFlags(flags & TRACE_FLAGS_MASK),
        trace_state=TraceState.from_header([trace_state]) if trace_state else None,
    )


def readable_spans(path):
    """The spans of one file, as (ReadableSpan, the file's Span message)."""
    request = ExportTraceServiceRequest()
    with open(path, "rb") as f:
        request.ParseFromString(f.read())
    spans = []
    for resource_spans in request.resource_spans:
        resource = Resource(
            attributes(resource_spans.resource.attributes), resource_spans.schema_url
        )
        for scope_spans in resource_spans.scope_spans:
            scope = InstrumentationScope(
                scope_spans.scope.name,
                scope_spans.scope.version or None,
                scope_spans.schema_url or None,
                attributes(scope_spans.scope.attributes),
            )
            for s in scope_spans.spans:
                parent = None
                if s.parent_span_id:
                    # The parent's flags are not on the wire; is_remote is.
                    parent = context(s.trace_id, s.parent_span_id, s.flags & IS_REMOTE)
                span = ReadableSpan(
                    name=s.name,
                    context=context(s.trace_id, s.span_id, s.flags, s.trace_state),
                    parent=parent,
                    resource=resource,
                    attributes=attributes(s.attributes),
                    events=tuple(
                        Event(e.name, attributes(e.attributes), e.time_unix_nano) for e in s.events
                    ),
                    links=tuple(
                        Link(
                            context(link.trace_id, link.span_id, link.flags, link.trace_state),
                            attributes(link.attributes),
                        )
                        for link in s.links
                    ),
                    kind=KINDS[s.kind],
                    status=Status(StatusCode(s.status.code), s.status.message or None),
                    start_time=s.start_time_unix_nano,
                    end_time=s.end_time_unix_nano,
                    instrumentation_scope=scope,
                )
                spans.append((span, s))
    return spans


def reencoded_differently(path, span, original):
    """The fields in which the SDK's encoding of `span` differs from the file's, if any."""
    encoded = encode_spans([span]).resource_spans[0].scope_spans[0].spans[0]
    if encoded == original:
        return None
    fields = sorted(
        f.name
        for f in original.DESCRIPTOR.fields
        if getattr(encoded, f.name) != getattr(original, f.name)
    )
    return f"{path}: span {original.name!r}: {', '.join(fields)}"


def exporter(protocol, endpoint, timeout):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces", timeout=timeout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=["grpc", "http"], required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--batch-size", type=int, default=512, help="spans per export (512)")
    parser.add_argument("--threads", type=int, default=1, help="exporters at once (1)")
    parser.add_argument("--timeout", type=float, default=30, help="per export, retries included")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    spans, reencoded = [], []
    for path in args.files:
        for span, original in readable_spans(path):
            spans.append(span)
            difference = reencoded_differently(path, span, original)
            if difference:
                reencoded.append(difference)
    batches = [spans[i:i + args.batch_size] for i in range(0, len(spans), args.batch_size)]

    results = []
    lock = threading.Lock()

    def send(mine):
        span_exporter = exporter(args.protocol, args.endpoint, args.timeout)
        try:
            for batch in mine:
                result = span_exporter.export(batch)
                with lock:
                    results.append(result)
        finally:
            span_exporter.shutdown()

    threads = [
        threading.Thread(target=send, args=(batches[t::args.threads],))
        for t in range(min(args.threads, len(batches)))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    exported = sum(1 for r in results if r == SpanExportResult.SUCCESS)
    failed = len(batches) - exported
    json.dump(
        {"spans": len(spans), "exports": exported, "failed": failed, "reencoded": reencoded},
        sys.stdout,
    )
    print()
    if failed:
        sys.exit(f"send_corpus.py: {failed} of {len(batches)} exports did not succeed")


if __name__ == "__main__":
    main()
