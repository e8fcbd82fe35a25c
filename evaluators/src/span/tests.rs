//! The canonical view, convention by convention, on spans shaped like each instrumentation's.

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, KeyValueList, any_value::Value,
};
use opentelemetry_proto::tonic::trace::v1::span::Event;

use super::*;
use crate::scorers::testing::{attr, i, s, span, view};

fn kvlist(pairs: Vec<(&str, Value)>) -> Value {
    Value::KvlistValue(KeyValueList {
        values: pairs.into_iter().map(|(k, v)| attr(k, v)).collect(),
    })
}

fn array(values: Vec<Value>) -> Value {
    Value::ArrayValue(ArrayValue {
        values: values
            .into_iter()
            .map(|v| AnyValue { value: Some(v) })
            .collect(),
    })
}

fn text(v: &str) -> Value {
    Value::StringValue(v.into())
}

#[test]
fn openinference_flattened_messages_contents_and_tool_calls() {
    let sp = span(vec![
        s("openinference.span.kind", "LLM"),
        s("llm.model_name", "gpt-4o-mini-2024-07-18"),
        s("llm.provider", "openai"),
        s("llm.input_messages.0.message.role", "system"),
        s("llm.input_messages.0.message.content", "Be brief."),
        s("llm.input_messages.1.message.role", "user"),
        s(
            "llm.input_messages.1.message.contents.0.message_content.type",
            "text",
        ),
        s(
            "llm.input_messages.1.message.contents.0.message_content.text",
            "What is this?",
        ),
        s(
            "llm.input_messages.1.message.contents.1.message_content.type",
            "image",
        ),
        s("llm.output_messages.0.message.role", "assistant"),
        s(
            "llm.output_messages.0.message.tool_calls.0.tool_call.id",
            "c1",
        ),
        s(
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.name",
            "lookup",
        ),
        s(
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments",
            "{\"q\":1}",
        ),
        s(
            "llm.output_messages.0.message.tool_calls.1.tool_call.function.name",
            "second",
        ),
        i("llm.token_count.prompt", 100),
        s("llm.token_count.completion", "20"),
        i("llm.token_count.prompt_details.cache_write", 30),
        s(
            "llm.tools.0.tool.json_schema",
            r#"{"type":"function","function":{"name":"lookup","parameters":{"type":"object"}}}"#,
        ),
        s("llm.prompt_template.version", "v7"),
        s("session.id", "s1"),
        s("user.id", "u1"),
        s("metadata", r#"{"tenant":"acme"}"#),
        attr("tag.tags", array(vec![text("beta"), text("eu")])),
    ]);
    let v = view(&sp);
    assert_eq!(v.kind(), OperationKind::Chat);
    assert_eq!(v.model(), Some("gpt-4o-mini-2024-07-18"));
    assert_eq!(v.provider(), Some("openai"));
    assert_eq!(v.system_instructions(), ["Be brief."]);
    assert_eq!(v.last_user_text().as_deref(), Some("What is this?"));
    assert_eq!(v.input_messages()[1].parts[1], Part::Other("image".into()));
    let calls: Vec<_> = v.tool_calls().collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[0].name.as_ref(), calls[0].id.as_deref()),
        ("lookup", Some("c1"))
    );
    assert_eq!(calls[0].arguments.as_deref(), Some("{\"q\":1}"));
    assert_eq!(v.output_text().as_deref(), Some(""));
    let usage = v.usage();
    assert_eq!(
        (usage.input, usage.output, usage.cache_write),
        (Some(100), Some(20), Some(30))
    );
    assert_eq!(v.tool_definitions()[0].name, "lookup");
    assert_eq!(
        v.tool_definitions()[0].parameters,
        Some(serde_json::json!({"type": "object"}))
    );
    assert_eq!(
        (v.prompt_version(), v.session_id(), v.user_id()),
        (Some("v7"), Some("s1"), Some("u1"))
    );
    assert_eq!(v.metadata().as_deref(), Some(r#"{"tenant":"acme"}"#));
    assert_eq!(v.tags(), ["beta", "eu"]);
}

#[test]
fn otel_current_json_strings_and_structured_values_agree() {
    let json = r#"[{"role":"user","parts":[{"type":"text","content":"Hi \"there\""}]},
                   {"role":"tool","parts":[{"type":"tool_call_response","id":"c1","response":{"t":21}}]}]"#;
    let out = r#"[{"role":"assistant","parts":[{"type":"reasoning","content":"hmm"},{"type":"text","content":"Hello"},
                   {"type":"tool_call","id":"c2","name":"f","arguments":{"a":[1,2]}}],"finish_reason":"tool_call"}]"#;
    let as_json = span(vec![
        s("gen_ai.operation.name", "chat"),
        s("gen_ai.provider.name", "anthropic"),
        s("gen_ai.input.messages", json),
        s("gen_ai.output.messages", out),
        s(
            "gen_ai.system_instructions",
            r#"[{"type":"text","content":"Be kind."}]"#,
        ),
        s(
            "gen_ai.tool.definitions",
            r#"[{"type":"function","name":"f","parameters":{"type":"object","required":["a"]}}]"#,
        ),
        i("gen_ai.usage.cache_read.input_tokens", 5),
        i("gen_ai.usage.reasoning.output_tokens", 3),
    ]);
    let structured_input = array(vec![
        kvlist(vec![
            ("role", text("user")),
            (
                "parts",
                array(vec![kvlist(vec![
                    ("type", text("text")),
                    ("content", text("Hi \"there\"")),
                ])]),
            ),
        ]),
        kvlist(vec![
            ("role", text("tool")),
            (
                "parts",
                array(vec![kvlist(vec![
                    ("type", text("tool_call_response")),
                    ("id", text("c1")),
                    ("response", kvlist(vec![("t", Value::IntValue(21))])),
                ])]),
            ),
        ]),
    ]);
    let structured_output = array(vec![kvlist(vec![
        ("role", text("assistant")),
        (
            "parts",
            array(vec![
                kvlist(vec![("type", text("reasoning")), ("content", text("hmm"))]),
                kvlist(vec![("type", text("text")), ("content", text("Hello"))]),
                kvlist(vec![
                    ("type", text("tool_call")),
                    ("id", text("c2")),
                    ("name", text("f")),
                    (
                        "arguments",
                        kvlist(vec![(
                            "a",
                            array(vec![Value::IntValue(1), Value::IntValue(2)]),
                        )]),
                    ),
                ]),
            ]),
        ),
        ("finish_reason", text("tool_call")),
    ])]);
    let structured = span(vec![
        s("gen_ai.operation.name", "chat"),
        attr("gen_ai.input.messages", structured_input),
        attr("gen_ai.output.messages", structured_output),
        attr(
            "gen_ai.system_instructions",
            array(vec![kvlist(vec![
                ("type", text("text")),
                ("content", text("Be kind.")),
            ])]),
        ),
    ]);
    for sp in [&as_json, &structured] {
        let v = view(sp);
        assert_eq!(v.input_messages().len(), 2);
        assert_eq!(v.last_user_text().as_deref(), Some("Hi \"there\""));
        assert_eq!(
            v.input_messages()[1].parts[0],
            Part::ToolResult {
                id: Some("c1".into()),
                response: r#"{"t":21}"#.into()
            }
        );
        assert_eq!(v.output_text().as_deref(), Some("Hello"));
        assert_eq!(
            v.output_messages()[0].parts[0],
            Part::Reasoning("hmm".into())
        );
        let call = v.tool_calls().next().unwrap();
        assert_eq!(
            (call.name.as_ref(), call.arguments.as_deref()),
            ("f", Some(r#"{"a":[1,2]}"#))
        );
        assert_eq!(v.finish_reasons(), [FinishReason::ToolCall]);
        assert_eq!(v.system_instructions(), ["Be kind."]);
    }
    let v = view(&as_json);
    assert_eq!(
        v.tool_definitions()[0].parameters.as_ref().unwrap()["required"][0],
        "a"
    );
    assert_eq!(
        (v.usage().cache_read, v.usage().reasoning),
        (Some(5), Some(3))
    );
    assert_eq!(v.provider(), Some("anthropic"));
}

#[test]
fn older_otel_flattened_prompts_and_completions() {
    let sp = span(vec![
        s("llm.request.type", "chat"),
        s("gen_ai.system", "openai"),
        i("gen_ai.usage.prompt_tokens", 9),
        i("gen_ai.usage.completion_tokens", 4),
        s("gen_ai.prompt.0.role", "user"),
        s("gen_ai.prompt.0.content", "Weather?"),
        s("gen_ai.completion.0.role", "assistant"),
        s("gen_ai.completion.0.content", "Sunny."),
        s("gen_ai.completion.0.finish_reason", "stop"),
        s("gen_ai.completion.1.role", "assistant"),
        s("gen_ai.completion.1.tool_calls.0.name", "get_weather"),
        s("gen_ai.completion.1.tool_calls.0.arguments", "{}"),
        s("gen_ai.prompt.version", "2"),
    ]);
    let v = view(&sp);
    assert_eq!(v.kind(), OperationKind::Chat);
    assert_eq!(v.provider(), Some("openai"));
    assert_eq!((v.usage().input, v.usage().output), (Some(9), Some(4)));
    assert_eq!(v.input_text().as_deref(), Some("Weather?"));
    assert_eq!(v.output_text().as_deref(), Some("Sunny."));
    assert_eq!(v.finish_reasons(), [FinishReason::Stop]);
    assert_eq!(v.tool_calls().next().unwrap().name, "get_weather");
    assert_eq!(v.prompt_version(), Some("2"));
}

#[test]
fn deprecated_events_carry_messages_and_choices() {
    let mut sp = span(vec![s("gen_ai.operation.name", "chat")]);
    let event = |name: &str, attributes| Event {
        name: name.into(),
        attributes,
        ..Default::default()
    };
    sp.events = vec![
        event("gen_ai.system.message", vec![s("content", "Rules.")]),
        event("gen_ai.user.message", vec![s("content", "Hello?")]),
        event(
            "gen_ai.choice",
            vec![
                i("index", 0),
                s("finish_reason", "length"),
                attr(
                    "message",
                    kvlist(vec![
                        ("role", text("assistant")),
                        ("content", text("Hi, I am")),
                    ]),
                ),
            ],
        ),
    ];
    let v = view(&sp);
    assert_eq!(v.system_instructions(), ["Rules."]);
    assert_eq!(v.last_user_text().as_deref(), Some("Hello?"));
    assert_eq!(v.output_text().as_deref(), Some("Hi, I am"));
    assert_eq!(v.finish_reasons(), [FinishReason::Length]);
}

#[test]
fn traceai_shape_under_gen_ai_with_null_definitions() {
    let sp = span(vec![
        s("gen_ai.span.kind", "LLM"),
        s("gen_ai.tool.definitions", "null"),
        s(
            "gen_ai.tool.definitions.0.tool.json_schema",
            r#"{"type":"function","function":{"name":"w","parameters":{"type":"object"}}}"#,
        ),
        s("gen_ai.input.messages.0.message.role", "user"),
        s("gen_ai.input.messages.0.message.content", "hi"),
        s("gen_ai.output.messages.0.message.role", "assistant"),
        s("gen_ai.output.messages.0.message.content", "hello"),
        s(
            "gen_ai.request.parameters",
            r#"{"response_format":{"type":"json_schema","json_schema":{"schema":{"type":"object"}}}}"#,
        ),
    ]);
    let v = view(&sp);
    assert_eq!(v.kind(), OperationKind::Chat);
    assert_eq!(v.tool_definitions()[0].name, "w");
    assert_eq!(v.output_text().as_deref(), Some("hello"));
    assert_eq!(
        v.json_request(),
        JsonRequest::Schema(r#"{"type":"object"}"#.into())
    );
}

#[test]
fn io_values_are_used_only_when_no_messages_exist() {
    let plain = span(vec![
        s("openinference.span.kind", "LLM"),
        s("input.value", "Q?"),
        s("output.value", "A."),
    ]);
    let v = view(&plain);
    assert_eq!(
        (v.input_text().as_deref(), v.output_text().as_deref()),
        (Some("Q?"), Some("A."))
    );

    let body = span(vec![
        s("openinference.span.kind", "LLM"),
        s("input.mime_type", "application/json"),
        s(
            "input.value",
            r#"{"model":"m","messages":[{"role":"user","content":"Q?"}],"response_format":{"type":"json_object"}}"#,
        ),
        s("output.mime_type", "application/json"),
        s(
            "output.value",
            r#"{"choices":[{"finish_reason":"length","message":{"role":"assistant","content":"A"}}]}"#,
        ),
    ]);
    let v = view(&body);
    assert_eq!(v.last_user_text().as_deref(), Some("Q?"));
    assert_eq!(v.output_text().as_deref(), Some("A"));
    assert_eq!(v.finish_reasons(), [FinishReason::Length]);
    assert_eq!(v.json_request(), JsonRequest::Requested);

    let unparseable = span(vec![
        s("openinference.span.kind", "LLM"),
        s("output.mime_type", "application/json"),
        s("output.value", "{oops"),
    ]);
    assert!(!view(&unparseable).output_captured());

    let tool = span(vec![
        s("openinference.span.kind", "TOOL"),
        s("tool.name", "get_weather"),
        s("input.value", r#"{"city":"Paris"}"#),
        s("output.value", "21C"),
        s("tool.parameters", r#"{"type":"object"}"#),
    ]);
    let v = view(&tool);
    assert_eq!(v.kind(), OperationKind::Tool);
    assert!(!v.output_captured(), "a tool's result is not model output");
    assert_eq!(v.tool_arguments().as_deref(), Some(r#"{"city":"Paris"}"#));
    assert_eq!(v.tool_result().as_deref(), Some("21C"));
    assert_eq!(v.tool_schema().as_deref(), Some(r#"{"type":"object"}"#));
}

#[test]
fn retrieval_documents_from_flattened_and_json_forms() {
    let flat = span(vec![
        s("openinference.span.kind", "RETRIEVER"),
        s("input.value", "tower height"),
        s("retrieval.documents.1.document.id", "b"),
        s("retrieval.documents.0.document.id", "a"),
        s("retrieval.documents.0.document.content", "330 m"),
        attr(
            "retrieval.documents.0.document.score",
            Value::DoubleValue(0.9),
        ),
    ]);
    let v = view(&flat);
    assert_eq!(v.kind(), OperationKind::Retrieval);
    assert_eq!(v.retrieval_query(), Some("tower height"));
    let docs = v.documents();
    assert_eq!(docs.len(), 2);
    assert_eq!(
        (
            docs[0].id.as_deref(),
            docs[0].content.as_deref(),
            docs[0].score
        ),
        (Some("a"), Some("330 m"), Some(0.9))
    );
    assert_eq!(docs[1].id.as_deref(), Some("b"));

    let json = span(vec![
        s("gen_ai.operation.name", "retrieval"),
        s(
            "gen_ai.retrieval.documents",
            r#"[{"id":"d1","score":"0.5"},{"id":7,"content":"text"}]"#,
        ),
    ]);
    let v = view(&json);
    assert_eq!(v.documents()[0].score, Some(0.5));
    assert_eq!(v.documents()[1].id.as_deref(), Some("7"));
}

#[test]
fn langchain_document_ids_are_read_from_the_retrievers_output() {
    // As `openinference-instrumentation-langchain` 0.1.80 records a retriever: content and
    // metadata per document, the ids only in the output.
    let retriever = |output: &str| {
        span(vec![
            s("openinference.span.kind", "RETRIEVER"),
            s("retrieval.documents.0.document.content", "330 m"),
            s(
                "retrieval.documents.0.document.metadata",
                r#"{"source": "a"}"#,
            ),
            s("retrieval.documents.1.document.content", "1889"),
            s("output.value", output),
            s("output.mime_type", "application/json"),
        ])
    };
    let ids = |output: &str| -> Vec<Option<String>> {
        view(&retriever(output))
            .documents()
            .iter()
            .map(|d| d.id.as_deref().map(str::to_owned))
            .collect()
    };
    let both = r#"{"documents": [{"id": "doc-a", "metadata": {"source": "a"}, "page_content": "330 m", "type": "Document"}, {"id": null, "metadata": {}, "page_content": "1889", "type": "Document"}]}"#;
    assert_eq!(ids(both), [Some("doc-a".to_owned()), None]);
    // Another list, or other documents, name none.
    for output in [
        r#"{"documents": [{"id": "doc-a", "page_content": "330 m"}]}"#,
        r#"{"documents": [{"id": "doc-a", "page_content": "331 m"}, {"id": "doc-b", "page_content": "1889"}]}"#,
        "not json",
    ] {
        assert_eq!(ids(output), [None, None], "{output}");
    }
    // An id the instrumentation recorded is kept.
    let mut flat = retriever(both);
    flat.attributes
        .push(s("retrieval.documents.0.document.id", "recorded"));
    assert_eq!(view(&flat).documents()[0].id.as_deref(), Some("recorded"));
}

#[test]
fn kind_precedence_unknown_values_and_fallbacks() {
    let both = span(vec![
        s("openinference.span.kind", "CHAIN"),
        s("gen_ai.operation.name", "execute_tool"),
    ]);
    assert_eq!(view(&both).kind(), OperationKind::Tool);
    let unknown_first = span(vec![
        s("gen_ai.operation.name", "frobnicate"),
        s("openinference.span.kind", "EMBEDDING"),
    ]);
    assert_eq!(view(&unknown_first).kind(), OperationKind::Embeddings);
    let model_only = span(vec![s("gen_ai.request.model", "m")]);
    assert_eq!(view(&model_only).kind(), OperationKind::Chat);
    assert_eq!(
        view(&span(vec![s("http.method", "GET")])).kind(),
        OperationKind::Other
    );
    let agent = span(vec![s("traceloop.span.kind", "workflow")]);
    assert_eq!(view(&agent).kind(), OperationKind::Agent);
}

#[test]
fn malformed_content_counts_as_absent_not_as_a_panic() {
    let sp = span(vec![
        s("gen_ai.operation.name", "chat"),
        s(
            "gen_ai.input.messages",
            "[{\"role\": \"user\", \"parts\": [",
        ),
        s("gen_ai.output.messages", "42"),
        s("gen_ai.tool.definitions", "{\"not\":\"a list\"}"),
        s("llm.output_messages.4294967295.message.content", "far"),
        attr("gen_ai.response.finish_reasons", Value::IntValue(3)),
        attr("gen_ai.usage.input_tokens", Value::IntValue(-5)),
    ]);
    let v = view(&sp);
    assert!(v.input_messages().is_empty());
    assert_eq!(v.output_text().as_deref(), Some("far"));
    assert!(v.tool_definitions().is_empty());
    assert_eq!(v.usage().input, None);
    assert!(v.finish_reasons().is_empty());
}

#[test]
fn resource_view_reads_service_and_environment_once() {
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let resource = Resource {
        attributes: vec![
            s("service.name", "shop"),
            s("service.version", "1.2"),
            s("deployment.environment", "prod"),
        ],
        ..Default::default()
    };
    let r = ResourceView::new(Some(&resource));
    assert_eq!(
        (r.service_name, r.service_version, r.environment),
        (Some("shop"), Some("1.2"), Some("prod"))
    );
    assert!(ResourceView::new(None).service_name.is_none());
}

#[test]
fn a_response_id_is_read_only_from_a_model_calls_response_body() {
    let body = |output: &str, kind: &str| {
        span(vec![
            s("openinference.span.kind", kind),
            s("output.value", output),
            s("output.mime_type", "application/json"),
        ])
    };
    let completion = body(
        r#"{"choices":[],"id":"chatcmpl-9","object":"chat.completion","model":"m"}"#,
        "LLM",
    );
    assert_eq!(view(&completion).response_id(), Some("chatcmpl-9"));
    let message = body(r#"{"type":"message","id":"msg_01","content":[]}"#, "LLM");
    assert_eq!(view(&message).response_id(), Some("msg_01"));
    // OpenInference's LangChain instrumentation records LangChain's `LLMResult`, which carries
    // the provider's id in `llm_output` (as `openinference-instrumentation-langchain` 0.1.80
    // writes it; abridged).
    let llm_result = body(
        r#"{"generations": [[{"text": "Hi.", "generation_info": {"finish_reason": "stop"}, "type": "ChatGeneration", "message": {"kwargs": {"id": "lc_run--01", "response_metadata": {"id": "chatcmpl-7"}}}}]], "llm_output": {"token_usage": {"prompt_tokens": 12}, "model_name": "gpt-4o-mini-2024-07-18", "id": "chatcmpl-7"}, "run": null, "type": "LLMResult"}"#,
        "LLM",
    );
    assert_eq!(view(&llm_result).response_id(), Some("chatcmpl-7"));
    // `gen_ai.response.id` wins when both are there.
    let mut both = completion.clone();
    both.attributes
        .push(s("gen_ai.response.id", "from-attribute"));
    assert_eq!(view(&both).response_id(), Some("from-attribute"));
    // An id in a JSON output that is not a response body, or not on a model call, is not one.
    for (output, kind) in [
        (r#"{"id":"order-1","status":"shipped"}"#, "LLM"),
        (r#"{"id":"x","object":"chat.completion"}"#, "CHAIN"),
        (r#"{"id":"x","object":"list"}"#, "LLM"),
        (r#"{"id":"x","type":"LLMResult","llm_output":null}"#, "LLM"),
        (r#"{"type":"LLMResult","llm_output":{"id":"x"}}"#, "CHAIN"),
        (r#"["id","chat.completion"]"#, "LLM"),
        (r#"{"id":7,"object":"chat.completion"}"#, "LLM"),
        ("not json", "LLM"),
    ] {
        assert_eq!(
            view(&body(output, kind)).response_id(),
            None,
            "{output} on {kind}"
        );
    }
}

#[test]
fn the_request_model_falls_back_to_the_request_parameters() {
    let streamed = span(vec![
        s("gen_ai.span.kind", "LLM"),
        s(
            "gen_ai.request.parameters",
            r#"{"stream": true, "stream_options": {"model": "nested"}, "model": "gpt-4o-mini"}"#,
        ),
    ]);
    assert_eq!(view(&streamed).model(), Some("gpt-4o-mini"));
    let named = span(vec![
        s("gen_ai.request.model", "gpt-4o"),
        s("gen_ai.request.parameters", r#"{"model": "other"}"#),
    ]);
    assert_eq!(view(&named).request_model(), Some("gpt-4o"));
    let unparsable = span(vec![s("gen_ai.request.parameters", "{model: x")]);
    assert_eq!(view(&unparsable).request_model(), None);
}
