"""A small LLM app for the collector end-to-end test (tests/collector.rs).

It answers support questions with the OpenAI client, instrumented by the official OpenTelemetry
GenAI instrumentation (opentelemetry-instrumentation-openai-v2), and exports its spans over
OTLP/HTTP (protobuf) to OTEL_EXPORTER_OTLP_ENDPOINT: the collector. Each question is one trace:
an app span `answer question` with the instrumentation's `chat gpt-4o-mini` span under it.

The model is a local OpenAI-compatible server this script starts on a free loopback port: it
answers each question with the answer scripted for it, so the test knows which answers hold an
e-mail address (pii fails), which refuse, and which are broken JSON.

Standard output: one JSON document, what the test checks the evaluations against: for every
chat span the instrumentation made, its trace and span id, the case and the question.
Exits non-zero when a call fails, a span is not exported, or a chat span lacks its content.

Usage: app.py [ROUNDS]   (each round asks every case once; default 2)
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The instrumentation reads these when it is set up: the latest GenAI conventions, with the
# messages on the span as gen_ai.input.messages / gen_ai.output.messages (evalstream reads
# spans, not log events). `true` is the legacy path's value and writes log events instead.
os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
os.environ.setdefault("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "span_only")

import openai  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

MODEL = "gpt-4o-mini"
RESPONSE_MODEL = "gpt-4o-mini-2024-07-18"

# (case, question, scripted answer, response_format)
CASES = [
    ("normal", "How do I reset my password?",
     "Open Settings, choose Security and click Reset password; a link arrives within a minute.",
     None),
    ("pii", "Who can I write to about a wrong invoice?",
     "Write to our billing lead at jane.doe@example.com and she will correct it.",
     None),
    ("normal", "Can I change the delivery address of an order?",
     "Yes, until the order ships: open the order and choose Edit address.",
     None),
    ("refusal", "Give me the administrator password.",
     "I'm sorry, but I can't help with that.",
     None),
    ("json", "Which city is our headquarters in? Answer in JSON.",
     '{"city": "Paris", "country": "France"}',
     {"type": "json_object"}),
    ("json_broken", "Which country ships fastest? Answer in JSON.",
     '{"country": "France", "days": ',
     {"type": "json_object"}),
]


class ScriptedModel(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: the scripted answer to the last user message."""

    answers: dict = {}
    served = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self.reply(404, {"error": {"message": f"no route {self.path}"}})
        request = json.loads(body)
        question = [m for m in request["messages"] if m["role"] == "user"][-1]["content"]
        answer = self.answers.get(question)
        if answer is None:
            return self.reply(400, {"error": {"message": "no scripted answer"}})
        with ScriptedModel.lock:
            ScriptedModel.served += 1
            n = ScriptedModel.served
        self.reply(200, {
            "id": f"chatcmpl-evalstream-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": RESPONSE_MODEL,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
                "logprobs": None,
            }],
            "usage": {
                "prompt_tokens": 12 + len(question) // 4,
                "completion_tokens": 1 + len(answer) // 4,
                "total_tokens": 13 + len(question) // 4 + len(answer) // 4,
            },
        })

    def reply(self, status, document):
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep standard error for failures
        pass


class CountingExporter(SpanExporter):
    """The OTLP exporter, counting what the collector accepted."""

    def __init__(self, inner):
        self.inner = inner
        self.exported = 0
        self.failed = 0

    def export(self, spans):
        result = self.inner.export(spans)
        if result == SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    if "OTEL_EXPORTER_OTLP_ENDPOINT" not in os.environ:
        sys.exit("app.py: set OTEL_EXPORTER_OTLP_ENDPOINT to the collector's OTLP/HTTP address")

    calls = []
    for r in range(rounds):
        for case, question, answer, response_format in CASES:
            q = f"[{r}] {question}"
            ScriptedModel.answers[q] = answer
            calls.append((case, q, response_format))
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedModel)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    provider = TracerProvider(resource=Resource.create({
        "service.name": "support-bot",
        "deployment.environment.name": "test",
    }))
    otlp = CountingExporter(OTLPSpanExporter(timeout=10))
    provider.add_span_processor(BatchSpanProcessor(otlp, schedule_delay_millis=200))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    tracer = provider.get_tracer("support-bot")

    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
        api_key="not-a-real-key",
        max_retries=0,
        timeout=10,
    )
    asked = {}
    for case, question, response_format in calls:
        with tracer.start_as_current_span("answer question") as root:
            kwargs = {"response_format": response_format} if response_format else {}
            client.chat.completions.create(
                model=MODEL,
                messages=[
                    {"role": "system", "content": "You are the support assistant of a web shop."},
                    {"role": "user", "content": question},
                ],
                temperature=0,
                **kwargs,
            )
            asked[root.get_span_context().trace_id] = (case, question)

    if not provider.force_flush(30_000):
        sys.exit("app.py: the spans were not flushed within 30 s")
    provider.shutdown()
    server.shutdown()

    spans = memory.get_finished_spans()
    if otlp.failed or otlp.exported != len(spans):
        sys.exit(f"app.py: the collector accepted {otlp.exported} of {len(spans)} spans "
                 f"({otlp.failed} failed)")
    chats = []
    for span in spans:
        if span.attributes.get("gen_ai.operation.name") != "chat":
            continue
        if "gen_ai.output.messages" not in span.attributes:
            sys.exit(f"app.py: the chat span has no gen_ai.output.messages (content capture "
                     f"is off?): {sorted(span.attributes)}")
        case, question = asked[span.context.trace_id]
        chats.append({
            "trace_id": format(span.context.trace_id, "032x"),
            "span_id": format(span.context.span_id, "016x"),
            "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
            "name": span.name,
            "case": case,
            "question": question,
        })
    if len(chats) != len(calls):
        sys.exit(f"app.py: {len(calls)} calls made {len(chats)} chat spans")
    json.dump({"spans": len(spans), "chats": chats}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
