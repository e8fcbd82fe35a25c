//! The spans of one trace, for evaluators that judge a span in its context.
//!
//! A RAG answer is judged against the documents retrieved for it, which live in the retriever
//! spans of the same trace; a tool call's parameter schema may be on another LLM span of the
//! trace. A [`TraceView`] holds the views of the trace's spans that are at hand, in start-time
//! order, and says whether the trace is known to be complete (every span arrived) or partial.

use std::collections::HashMap;

use crate::span::{Document, GenAiSpan, OperationKind, ToolDefinition};

/// The spans of one trace.
#[derive(Debug)]
pub struct TraceView<'a> {
    spans: Vec<GenAiSpan<'a>>,
    complete: bool,
}

impl<'a> TraceView<'a> {
    /// A trace from its spans (any order; all of one trace id). `complete` says whether every
    /// span is known to be there.
    pub fn new(mut spans: Vec<GenAiSpan<'a>>, complete: bool) -> TraceView<'a> {
        spans.sort_by_key(|s| s.raw().start_time_unix_nano);
        TraceView { spans, complete }
    }

    /// Groups spans by trace id, in order of each trace's first appearance.
    pub fn group(
        spans: impl IntoIterator<Item = GenAiSpan<'a>>,
        complete: bool,
    ) -> Vec<TraceView<'a>> {
        let mut index: HashMap<&'a [u8], usize> = HashMap::new();
        let mut groups: Vec<Vec<GenAiSpan<'a>>> = Vec::new();
        for span in spans {
            let i = *index.entry(span.trace_id()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[i].push(span);
        }
        groups
            .into_iter()
            .map(|spans| TraceView::new(spans, complete))
            .collect()
    }

    /// Every span of `traces` with its trace, trace by trace.
    pub fn each_span<'t>(
        traces: &'t [TraceView<'a>],
    ) -> impl Iterator<Item = (&'t TraceView<'a>, &'t GenAiSpan<'a>)> {
        traces
            .iter()
            .flat_map(|t| t.spans.iter().map(move |s| (t, s)))
    }

    /// The spans, by start time.
    pub fn spans(&self) -> &[GenAiSpan<'a>] {
        &self.spans
    }

    /// Whether every span of the trace is known to be here.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The trace id.
    pub fn trace_id(&self) -> &'a [u8] {
        self.spans.first().map_or(&[], |s| s.trace_id())
    }

    /// The documents retrieved in the trace: every retrieval span's documents, retrievers in
    /// start-time order, each retriever's documents in their order. Citations by position count
    /// in this list from 1.
    pub fn documents(&self) -> Vec<&Document<'a>> {
        self.spans
            .iter()
            .filter(|s| s.kind() == OperationKind::Retrieval)
            .flat_map(|s| s.documents())
            .collect()
    }

    /// The documents retrieved before `span` started (those its answer can draw on), or every
    /// document of the trace when the clocks say none was.
    pub fn documents_before(&self, span: &GenAiSpan<'_>) -> Vec<&Document<'a>> {
        let start = span.raw().start_time_unix_nano;
        let before: Vec<&Document<'a>> = self
            .spans
            .iter()
            .filter(|s| {
                s.kind() == OperationKind::Retrieval && s.raw().start_time_unix_nano <= start
            })
            .flat_map(|s| s.documents())
            .collect();
        if before.is_empty() {
            self.documents()
        } else {
            before
        }
    }

    /// The span that stands for the whole trace: the root (no parent) when it is in view, else
    /// the earliest span. Trace-level scorers judge the trace once, on this span.
    pub fn root(&self) -> Option<&GenAiSpan<'a>> {
        self.spans
            .iter()
            .find(|s| s.parent_span_id().iter().all(|&b| b == 0))
            .or_else(|| self.spans.first())
    }

    /// Whether `span` is the trace's [`root`](TraceView::root).
    pub fn is_root(&self, span: &GenAiSpan<'_>) -> bool {
        self.root().is_some_and(|r| r.span_id() == span.span_id())
    }

    /// A tool definition of that name from any span of the trace.
    pub fn tool_definition(&self, name: &str) -> Option<&ToolDefinition<'a>> {
        self.spans
            .iter()
            .flat_map(|s| s.tool_definitions())
            .find(|d| d.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::kv_str;
    use crate::span::ResourceView;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn span(trace: u8, id: u8, start: u64, attributes: Vec<(&str, &str)>) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            start_time_unix_nano: start,
            attributes: attributes.into_iter().map(|(k, v)| kv_str(k, v)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn spans_group_by_trace_and_documents_follow_retriever_order() {
        let retriever = |id, start, doc: &str| {
            span(
                1,
                id,
                start,
                vec![
                    ("openinference.span.kind", "RETRIEVER"),
                    ("retrieval.documents.0.document.id", doc),
                    ("retrieval.documents.0.document.content", "text"),
                ],
            )
        };
        let spans = [
            span(1, 9, 50, vec![("gen_ai.operation.name", "chat")]),
            span(2, 1, 10, vec![("gen_ai.operation.name", "chat")]),
            retriever(3, 20, "later"),
            retriever(4, 10, "earlier"),
            retriever(5, 60, "after the answer"),
        ];
        let views: Vec<GenAiSpan<'_>> = spans
            .iter()
            .map(|s| GenAiSpan::new(s, ResourceView::default(), None))
            .collect();
        let traces = TraceView::group(views, true);
        assert_eq!(traces.len(), 2);
        assert_eq!(traces[0].trace_id(), &[1; 16]);
        assert_eq!(traces[0].spans().len(), 4);
        let ids = |docs: Vec<&Document<'_>>| -> Vec<String> {
            docs.iter()
                .map(|d| d.id.clone().unwrap_or_default().into_owned())
                .collect()
        };
        assert_eq!(
            ids(traces[0].documents()),
            ["earlier", "later", "after the answer"]
        );
        let answer = traces[0]
            .spans()
            .iter()
            .find(|s| s.kind() == OperationKind::Chat)
            .unwrap();
        assert_eq!(
            ids(traces[0].documents_before(answer)),
            ["earlier", "later"]
        );
        assert!(traces[1].documents().is_empty());
    }

    #[test]
    fn the_root_is_the_parentless_span_else_the_earliest() {
        let mut child = span(1, 2, 10, vec![]);
        child.parent_span_id = vec![1; 8];
        let root = span(1, 1, 20, vec![]);
        let mut orphan = span(1, 3, 30, vec![]);
        orphan.parent_span_id = vec![9; 8];
        let spans = [child, root, orphan];
        fn views(s: &[Span]) -> Vec<GenAiSpan<'_>> {
            s.iter()
                .map(|s| GenAiSpan::new(s, ResourceView::default(), None))
                .collect()
        }
        let whole = TraceView::new(views(&spans), true);
        assert_eq!(whole.root().unwrap().span_id(), &[1; 8]);
        assert!(whole.is_root(&whole.spans()[1]) && !whole.is_root(&whole.spans()[0]));
        // Without its root, the earliest span stands for the trace.
        let rest = [spans[2].clone(), spans[0].clone()];
        let partial = TraceView::new(views(&rest), false);
        assert_eq!(partial.root().unwrap().span_id(), &[2; 8]);
        assert!(TraceView::new(Vec::new(), true).root().is_none());
    }
}
