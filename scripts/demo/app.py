"""The demo's application (scripts/demo.sh): a support assistant that asks a chat model each
question given on the command line, one trace per question, with the OpenAI client instrumented
by the official OpenTelemetry GenAI instrumentation (opentelemetry-instrumentation-openai-v2) and
its spans exported by the SDK's OTLP/HTTP exporter to OTEL_EXPORTER_OTLP_ENDPOINT: evalstream.

The model is the OpenAI-compatible server at OPENAI_BASE_URL (in the demo, the local stand-in
`evalstream judge-server --reply ...`, which answers as scripted). A question that mentions JSON
asks for a JSON object (`response_format`), as an app that parses the answer would.

Prints each trace id, question and answer. Exits non-zero when a call or the export fails.

Usage: app.py QUESTION...   (installed by scripts/install-python-app.sh into
                             target/python-app/venv, with tests/collector/app.py)
"""

import os
import sys

# Prompts and answers on the spans (gen_ai.input.messages / gen_ai.output.messages), where
# evalstream reads them: the latest GenAI conventions, content captured on spans only.
os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
os.environ.setdefault("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "span_only")

import openai  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)


class Checked(SpanExporter):
    """The OTLP exporter, remembering whether an export failed."""

    def __init__(self, inner):
        self.inner = inner
        self.failed = 0

    def export(self, spans):
        result = self.inner.export(spans)
        if result != SpanExportResult.SUCCESS:
            self.failed += len(spans)
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)


def main():
    questions = sys.argv[1:]
    if not questions or "OTEL_EXPORTER_OTLP_ENDPOINT" not in os.environ:
        sys.exit("usage: OTEL_EXPORTER_OTLP_ENDPOINT=... OPENAI_BASE_URL=... app.py QUESTION...")

    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    exporter = Checked(OTLPSpanExporter())
    provider.add_span_processor(BatchSpanProcessor(exporter))
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    tracer = provider.get_tracer("support-bot")
    client = openai.OpenAI(api_key="not-a-real-key", max_retries=0, timeout=10)

    for question in questions:
        with tracer.start_as_current_span("answer question") as root:
            json_wanted = "JSON" in question
            response = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[
                    {"role": "system", "content": "You are the support assistant of a web shop."},
                    {"role": "user", "content": question},
                ],
                temperature=0,
                **({"response_format": {"type": "json_object"}} if json_wanted else {}),
            )
            trace_id = format(root.get_span_context().trace_id, "032x")
            print(f"{trace_id[:8]}  {question}\n          -> {response.choices[0].message.content}")

    # Shutting down flushes the spans; evalstream answers once their evaluations are written.
    provider.shutdown()
    if exporter.failed:
        sys.exit(f"app.py: {exporter.failed} spans were not exported (is evalstream running?)")


if __name__ == "__main__":
    main()
