//! `grounding`: is each claim of the answer supported by a document the model was given?
//!
//! No model is asked: the check is lexical, so it is cheap enough to run on every RAG answer of a
//! stream and explainable claim by claim. It catches the hallucinations that matter most in
//! support answers (a wrong number, date or name; a statement no document makes) and misses
//! subtler ones (a negation, facts combined wrongly). Use an LLM judge for those.
//!
//! **Documents** are those of the trace's retriever spans that started before the answer (see
//! [`TraceView::documents_before`]); when none has text, context blocks found in the prompt
//! (see the `context` module; turned off by `use_prompt_context: false`). No documents at all is
//! `skipped: not_applicable`; documents whose text was not captured, `skipped: no_content`.
//!
//! **Claims** are the answer's sentences (list items and lines are sentences of their own), with
//! citation markers (`[1]`, `【1】`, `(Source: …)`, as `citations` finds them) cut out but
//! remembered. Questions, pleasantries (`I hope this helps`) and sentences with fewer than three
//! content words (two when one is a number or a name) are not claims.
//!
//! **Support**: a claim is supported by a document (or a set of them) when
//! 1. every *key term* of the claim is in it: numbers after normalisation (`1,000` = `1000`,
//!    `3.50` = `3.5`, so `331` never matches `330`) and proper nouns (capitalised words past the
//!    first; the first too when a capitalised word follows, as in `Gustave Eiffel`), and
//! 2. its content words are: the IDF-weighted share of the claim's content words (stopwords
//!    removed, lightly stemmed) found in it is at least `min_overlap`. IDF is computed over the
//!    documents at hand, so words every document has weigh little; a word no document has weighs
//!    as one document's would, so a paraphrase is not sunk by its own vocabulary.
//!
//! The documents a claim cites are checked first, together (a sentence citing `[1]` and `[2]` may
//! draw on both). Failing that, each document alone, then the two that cover most of the claim
//! together: a claim supported only by a document it does not cite is still grounded (whether
//! citations point at the right document is what `citations` judges), and the explanation counts
//! those claims. A citation that names no document is ignored.
//!
//! **Score** supported / claims. Labels: `grounded` (all supported), `partially_grounded`,
//! `ungrounded` (fewer than half supported). Passes at `threshold` (default 0.8: one unsupported
//! claim in five passes, one in three fails). Answers without claims are `not_applicable`. The
//! explanation locates up to three unsupported claims by number and byte range in the answer,
//! with their best support and the numbers and names not found (also by byte range), and never
//! quotes them: the answer's words may be personal data.
//!
//! Cost: each document is tokenised once per answer, and only the claims' terms are looked up in
//! it (a hash of the normalised token into a small table), so the work is one scan of the
//! documents with no allocation per token.

mod context;
mod text;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::citations::{Citations, CitationsConfig, position_of};
use crate::evaluator::{Evaluator, Outcome};
use crate::scorers::registry::Builtin;
use crate::span::{Document, GenAiSpan};
use crate::trace::TraceView;
use text::{TokenKind, Tokens};

/// Configuration of `grounding`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroundingConfig {
    /// The IDF-weighted share of a claim's content words a document must contain, 0 to 1.
    #[serde(default = "default_min_overlap")]
    pub min_overlap: f64,
    /// The share of supported claims at which the answer passes, 0 to 1.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// The most claims checked per answer (the first ones); bounds the work on long answers.
    #[serde(default = "default_max_claims")]
    pub max_claims: usize,
    /// Look for context blocks in the prompt when no retriever recorded documents.
    #[serde(default = "yes")]
    pub use_prompt_context: bool,
}

impl Builtin for GroundingConfig {
    const TYPE: &'static str = "grounding";

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(Grounding::build(self)?))
    }
}

fn default_min_overlap() -> f64 {
    0.5
}

fn default_threshold() -> f64 {
    0.8
}

fn default_max_claims() -> usize {
    50
}

fn yes() -> bool {
    true
}

impl Default for GroundingConfig {
    fn default() -> Self {
        GroundingConfig {
            min_overlap: default_min_overlap(),
            threshold: default_threshold(),
            max_claims: default_max_claims(),
            use_prompt_context: true,
        }
    }
}

/// The `grounding` scorer.
#[derive(Debug)]
pub struct Grounding {
    config: GroundingConfig,
    /// Finds citation markers, as the `citations` scorer does by default.
    citations: Citations,
}

/// Unsupported claims located in an explanation (the others are counted), and the key terms
/// located per claim.
const LISTED_CLAIMS: usize = 3;
const LISTED_TERMS: usize = 5;

impl Grounding {
    /// Builds the scorer, validating the options.
    pub fn build(config: &GroundingConfig) -> Result<Grounding, String> {
        let unit = |name: &str, v: f64| {
            if v.is_finite() && (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name}: must be between 0 and 1, not {v}"))
            }
        };
        unit("min_overlap", config.min_overlap)?;
        unit("threshold", config.threshold)?;
        if !(1..=10_000).contains(&config.max_claims) {
            return Err(format!(
                "max_claims: must be between 1 and 10000, not {}",
                config.max_claims
            ));
        }
        Ok(Grounding {
            config: config.clone(),
            citations: Citations::build(&CitationsConfig::default())?,
        })
    }

    /// Judges `span`'s answer against `retrieved` documents, or the prompt's context blocks.
    fn judge(&self, span: &GenAiSpan<'_>, retrieved: &[&Document<'_>]) -> Outcome {
        let mut sources: Vec<Source<'_>> = retrieved
            .iter()
            .map(|d| Source {
                id: d.id.as_deref(),
                text: d.content.as_deref().unwrap_or(""),
            })
            .collect();
        // What the sources are, in the plural and one of them, for the explanation.
        let mut origin = ("retrieved documents", "document");
        let retrieved_text = sources.iter().any(|s| !s.text.trim().is_empty());
        if !retrieved_text && self.config.use_prompt_context {
            let blocks = context::prompt_blocks(span);
            if !blocks.is_empty() {
                sources = blocks
                    .into_iter()
                    .map(|b| Source {
                        id: b.id,
                        text: b.text,
                    })
                    .collect();
                origin = ("context blocks of the prompt", "context block");
            }
        }
        if sources.is_empty() {
            return Outcome::not_applicable("no retrieved documents and no context in the prompt");
        }
        if sources.iter().all(|s| s.text.trim().is_empty()) {
            // Documents were retrieved but the instrumentation did not capture their text.
            return Outcome::no_content();
        }
        let Some(answer) = span.output_text() else {
            return Outcome::no_content();
        };
        let analysis = self.analyse(&answer, &sources);
        if analysis.claims.is_empty() {
            return Outcome::not_applicable("the answer makes no checkable claim");
        }
        self.outcome(&analysis, sources.len(), origin)
    }

    /// Splits the answer into claims and checks each against the sources.
    fn analyse(&self, answer: &str, sources: &[Source<'_>]) -> Analysis {
        let cleaned = self.strip_citations(answer, sources);
        let mut index = Index::new(sources.len());
        let mut buf = String::with_capacity(32);
        let mut claims = Vec::new();
        let mut truncated = false;
        for range in text::sentences(&cleaned.text) {
            let sentence = &cleaned.text[range.clone()];
            if is_non_claim(sentence) {
                continue;
            }
            let Some(terms) = claim_terms(sentence, &mut index, &mut buf) else {
                continue;
            };
            if claims.len() == self.config.max_claims {
                truncated = true;
                break;
            }
            let cited = cleaned
                .citations
                .iter()
                .filter(|c| c.at >= range.start && c.at <= range.end)
                .map(|c| c.source)
                .collect();
            claims.push(Claim {
                text: sentence.to_owned(),
                at: range.start,
                terms,
                cited,
            });
        }
        // Only the claims' terms are looked up in the sources: without claims, nothing to scan.
        if !claims.is_empty() {
            index.scan(sources, &mut buf);
        }
        let results = claims
            .iter()
            .map(|c| index.check(c, self.config.min_overlap))
            .collect();
        Analysis {
            cleaned,
            claims,
            results,
            truncated,
        }
    }

    /// The answer without its citation markers, and which source each marker cites, by its
    /// offset in the stripped text. A marker right after a sentence's end (`… 1889. [2]`) is
    /// moved before the end, so it belongs to that sentence.
    fn strip_citations(&self, answer: &str, sources: &[Source<'_>]) -> Cleaned {
        let mut markers = self.citations.markers(answer);
        markers.sort_by_key(|m| m.range.start);
        let mut text = String::with_capacity(answer.len());
        let mut citations = Vec::new();
        let mut segments = Vec::new();
        let mut copied = 0;
        for marker in &markers {
            if marker.range.start < copied {
                continue; // overlaps the previous marker
            }
            segments.push((text.len(), copied));
            text.push_str(&answer[copied..marker.range.start]);
            copied = marker.range.end;
            let next = answer[copied..].chars().next();
            if !next.is_some_and(char::is_alphanumeric) {
                // `tall [1] and` → `tall and`; `1889 [2].` → `1889.`
                text.truncate(text.trim_end_matches([' ', '\t']).len());
            }
            // `… 1889. [2]` cites for the sentence that just ended.
            let at = text.trim_end().len();
            let at = match text[..at].chars().next_back() {
                Some('.' | '!' | '?' | '。') => at - 1,
                _ => at,
            };
            for (_, reference) in &marker.references {
                let ids = sources.iter().map(|s| s.id);
                if let Some(source) = position_of(reference, ids) {
                    citations.push(Citation { at, source });
                }
            }
        }
        segments.push((text.len(), copied));
        text.push_str(&answer[copied..]);
        Cleaned {
            text,
            citations,
            segments,
        }
    }

    fn outcome(
        &self,
        analysis: &Analysis,
        sources: usize,
        (origin, source_noun): (&str, &str),
    ) -> Outcome {
        let total = analysis.claims.len();
        let supported = analysis.results.iter().filter(|r| r.supported).count();
        let uncited_support = analysis
            .results
            .iter()
            .filter(|r| r.supported && r.uncited_support)
            .count();
        let value = supported as f64 / total as f64;
        let label = if supported == total {
            "grounded"
        } else if value < 0.5 {
            "ungrounded"
        } else {
            "partially_grounded"
        };
        let mut explanation =
            format!("{supported} of {total} claims supported by the {sources} {origin}");
        if analysis.truncated {
            explanation.push_str(&format!(" (the first {total} claims checked)"));
        }
        if uncited_support > 0 {
            explanation.push_str(&format!(
                "; {uncited_support} only by a document they do not cite"
            ));
        }
        // Unsupported claims are named by number and position, and so are the numbers and names
        // not found: the claim's words are the answer's, and may be personal data.
        let unsupported: Vec<(usize, &Claim, &Check)> = analysis
            .claims
            .iter()
            .zip(&analysis.results)
            .enumerate()
            .filter(|(_, (_, r))| !r.supported)
            .map(|(i, (claim, check))| (i + 1, claim, check))
            .collect();
        if !unsupported.is_empty() {
            explanation.push_str("; unsupported: ");
            let cleaned = &analysis.cleaned;
            for (i, (n, claim, check)) in unsupported.iter().take(LISTED_CLAIMS).enumerate() {
                if i > 0 {
                    explanation.push_str("; ");
                }
                let at = cleaned.original(claim.at..claim.at + claim.text.len());
                explanation.push_str(&format!(
                    "claim {n} (bytes {}..{} of the output)",
                    at.start, at.end
                ));
                if let Some((overlap, source)) = check.best {
                    explanation.push_str(&format!(
                        ": best support {overlap:.2} ({source_noun} {})",
                        source + 1
                    ));
                }
                let missing: Vec<String> = check
                    .missing_keys
                    .iter()
                    .filter_map(|&t| claim.terms.iter().find(|c| c.term == t))
                    .take(LISTED_TERMS)
                    .map(|t| {
                        let what = if claim.text[t.surface.clone()]
                            .starts_with(|c: char| c.is_ascii_digit())
                        {
                            "number"
                        } else {
                            "name"
                        };
                        let at =
                            cleaned.original(claim.at + t.surface.start..claim.at + t.surface.end);
                        format!("{what} at bytes {}..{}", at.start, at.end)
                    })
                    .collect();
                if !missing.is_empty() {
                    explanation.push_str(&format!(", not found: {}", missing.join(", ")));
                }
            }
            if unsupported.len() > LISTED_CLAIMS {
                explanation.push_str(&format!("; and {} more", unsupported.len() - LISTED_CLAIMS));
            }
        }
        Outcome::measured(value, value >= self.config.threshold, label, explanation)
    }
}

impl Evaluator for Grounding {
    /// Without the trace, only the prompt's context blocks can ground the answer.
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        self.judge(span, &[])
    }

    fn evaluate_in_trace(&self, span: &GenAiSpan<'_>, trace: &TraceView<'_>) -> Outcome {
        self.judge(span, &trace.documents_before(span))
    }

    fn needs_trace(&self) -> bool {
        true
    }
}

/// A document to ground on: retrieved, or a context block of the prompt.
#[derive(Debug, Clone, Copy)]
struct Source<'d> {
    id: Option<&'d str>,
    text: &'d str,
}

/// The answer with citation markers cut out.
struct Cleaned {
    text: String,
    citations: Vec<Citation>,
    /// Where each copied piece of the answer starts, in the cleaned text and in the answer, in
    /// the order copied: to name positions in the answer.
    segments: Vec<(usize, usize)>,
}

impl Cleaned {
    /// The range in the answer of a range of the cleaned text.
    fn original(&self, range: Range<usize>) -> Range<usize> {
        if range.is_empty() {
            let at = self.offset(range.start);
            return at..at;
        }
        // The end's last byte, not the end: the end may be where the next piece starts.
        self.offset(range.start)..self.offset(range.end - 1) + 1
    }

    /// The offset in the answer of byte `at` of the cleaned text: it belongs to the last piece
    /// copied at or before it (trimming may have cut earlier pieces short, never later ones).
    fn offset(&self, at: usize) -> usize {
        self.segments
            .iter()
            .rev()
            .find(|(cleaned, _)| *cleaned <= at)
            .map_or(at, |(cleaned, answer)| answer + (at - cleaned))
    }
}

/// A resolved citation: where it was in the cleaned answer, and the source it names.
struct Citation {
    at: usize,
    source: usize,
}

/// One claim: a sentence of the answer.
struct Claim {
    text: String,
    /// Where it starts in the cleaned answer.
    at: usize,
    terms: Vec<ClaimTerm>,
    /// The sources its citations name.
    cited: Vec<usize>,
}

/// A content term of a claim.
struct ClaimTerm {
    /// The term's index in the [`Index`].
    term: u32,
    /// A number or proper noun: must be in the supporting document.
    key: bool,
    /// Where the term is in the claim's text, for explanations.
    surface: Range<usize>,
}

/// What checking a claim found.
struct Check {
    supported: bool,
    /// Supported, but not by the documents it cites (it cites some).
    uncited_support: bool,
    /// Key terms absent from the best document.
    missing_keys: Vec<u32>,
    /// For an unsupported claim, the best single source's overlap and index.
    best: Option<(f64, usize)>,
}

impl Check {
    /// Supported (`uncited`: by documents the claim does not cite, while it cites some).
    fn supported(uncited: bool) -> Check {
        Check {
            supported: true,
            uncited_support: uncited,
            missing_keys: Vec::new(),
            best: None,
        }
    }

    /// Unsupported, with the best source (overlap, index) and the key terms it lacks.
    fn unsupported(missing_keys: Vec<u32>, best: Option<(f64, usize)>) -> Check {
        Check {
            supported: false,
            uncited_support: false,
            missing_keys,
            best,
        }
    }
}

struct Analysis {
    cleaned: Cleaned,
    claims: Vec<Claim>,
    results: Vec<Check>,
    truncated: bool,
}

/// Sentences that state nothing to check: courtesy, offers of more help, apologies.
fn is_non_claim(sentence: &str) -> bool {
    let trimmed = sentence.trim_end_matches(['"', '\'', '”', ')', ' ']);
    if trimmed.ends_with('?') || trimmed.ends_with('？') || trimmed.ends_with(':') {
        return true;
    }
    const PLEASANTRIES: [&str; 20] = [
        "let me know",
        "i hope",
        "hope this",
        "feel free",
        "happy to help",
        "glad to help",
        "glad i could",
        "if you have any",
        "if you need",
        "if you'd like",
        "thank",
        "you're welcome",
        "i'm sorry",
        "i am sorry",
        "sorry",
        "great question",
        "good question",
        "please note that i",
        "is there anything else",
        "don't hesitate",
    ];
    let head = text_head(sentence);
    PLEASANTRIES.iter().any(|p| head.starts_with(p))
}

/// The first characters of a sentence, lower-cased, with typographic apostrophes made plain.
fn text_head(sentence: &str) -> String {
    sentence
        .chars()
        .take(32)
        .map(|c| if c == '’' { '\'' } else { c })
        .flat_map(char::to_lowercase)
        .collect()
}

/// The content terms of a sentence, registered in `index`; `None` when the sentence has too few
/// to be a claim (fewer than three content words, or two with a key term among them).
fn claim_terms(sentence: &str, index: &mut Index, buf: &mut String) -> Option<Vec<ClaimTerm>> {
    let tokens: Vec<text::Token> = Tokens::new(sentence).collect();
    let capitalised = |i: usize| {
        tokens.get(i).is_some_and(|t| {
            t.kind == TokenKind::Word && sentence[t.range.clone()].starts_with(char::is_uppercase)
        })
    };
    let mut terms: Vec<ClaimTerm> = Vec::new();
    // Remember a claim's terms by hash while collecting, so repeats merge.
    let mut hashes: Vec<u64> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        // Decided first: looking at the next word reuses `buf`.
        let key = match token.kind {
            TokenKind::Number => true,
            TokenKind::Word if i > 0 => capitalised(i),
            // At the start, a capital says nothing, unless a name follows (`Gustave Eiffel`).
            TokenKind::Word => {
                capitalised(0)
                    && capitalised(1)
                    && text::term(sentence, &tokens[1], buf, true).is_some_and(|t| !t.stopword)
            }
        };
        let Some(term) = text::term(sentence, token, buf, true) else {
            continue;
        };
        if term.stopword {
            continue;
        }
        if let Some(j) = hashes.iter().position(|&h| h == term.hash) {
            terms[j].key |= key;
            continue;
        }
        hashes.push(term.hash);
        terms.push(ClaimTerm {
            term: index.intern(term.hash, buf.as_bytes()),
            key,
            surface: token.range.clone(),
        });
    }
    let has_key = terms.iter().any(|t| t.key);
    (terms.len() >= 3 || (terms.len() == 2 && has_key)).then_some(terms)
}

/// A hasher for keys that already are hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A bit of a 4096-bit filter for the first `N` bytes of a word, lower-cased; `None` when the word
/// is shorter or they are not ASCII.
fn prefix_bit<const N: usize>(word: &[u8]) -> Option<usize> {
    let head = word.get(..N)?;
    if !head.is_ascii() {
        return None;
    }
    let h = head.iter().fold(0usize, |h, b| {
        (h << 5) ^ usize::from(b.to_ascii_lowercase())
    });
    Some(h & 4095)
}

fn set_bit(bits: &mut [u64; 64], bit: usize) {
    bits[bit / 64] |= 1 << (bit % 64);
}

fn has_bit(bits: &[u64; 64], bit: usize) -> bool {
    bits[bit / 64] & (1 << (bit % 64)) != 0
}

/// The claims' terms and, for each, which sources contain it: a bit set per term.
struct Index {
    terms: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    /// Filters of the claim terms' first two and first three bytes. Stemming only cuts suffixes,
    /// so a document word whose first letters match no claim term's cannot be one: most words
    /// are skipped before they are lower-cased, stemmed and hashed. (The third letter can change
    /// only in four- and five-letter words ending in `es`: `flies` → `fly`, `sses` → `ss`.)
    pairs: [u64; 64],
    triples: [u64; 64],
    sources: usize,
    /// Bit-set words per term.
    words: usize,
    /// `words` bit-set words per term, term after term.
    presence: Vec<u64>,
    /// Each term's IDF weight, once the sources are scanned.
    idf: Vec<f64>,
}

impl Index {
    fn new(sources: usize) -> Index {
        Index {
            terms: HashMap::default(),
            pairs: [0; 64],
            triples: [0; 64],
            sources,
            words: sources.div_ceil(64).max(1),
            presence: Vec::new(),
            idf: Vec::new(),
        }
    }

    /// Registers a claim term by its hash and normalised form.
    fn intern(&mut self, hash: u64, normalised: &[u8]) -> u32 {
        if let Some(bit) = prefix_bit::<2>(normalised) {
            set_bit(&mut self.pairs, bit);
        }
        if let Some(bit) = prefix_bit::<3>(normalised) {
            set_bit(&mut self.triples, bit);
        }
        let next = self.terms.len() as u32;
        *self.terms.entry(hash).or_insert(next)
    }

    /// Whether a document word (as written) may be a claim term, judging by its first letters.
    fn may_hold(&self, word: &[u8]) -> bool {
        if prefix_bit::<2>(word).is_some_and(|bit| !has_bit(&self.pairs, bit)) {
            return false;
        }
        let short_plural =
            matches!(word.len(), 4 | 5) && word[word.len() - 2..].eq_ignore_ascii_case(b"es");
        short_plural || prefix_bit::<3>(word).is_none_or(|bit| has_bit(&self.triples, bit))
    }

    /// Tokenises every source once, marking which claim terms each contains.
    fn scan(&mut self, sources: &[Source<'_>], buf: &mut String) {
        let terms = self.terms.len();
        self.presence = vec![0; terms * self.words];
        for (s, source) in sources.iter().enumerate() {
            for token in Tokens::new(source.text) {
                if token.kind == TokenKind::Word
                    && !self.may_hold(&source.text.as_bytes()[token.range.clone()])
                {
                    continue;
                }
                let Some(term) = text::term(source.text, &token, buf, false) else {
                    continue;
                };
                if let Some(&t) = self.terms.get(&term.hash) {
                    self.presence[t as usize * self.words + s / 64] |= 1 << (s % 64);
                }
            }
        }
        // BM25's IDF, with a term no source has weighted as if one had it (see the module docs).
        let n = self.sources as f64;
        self.idf = (0..terms)
            .map(|t| {
                let bits = &self.presence[t * self.words..(t + 1) * self.words];
                let df = (bits.iter().map(|w| w.count_ones()).sum::<u32>()).max(1) as f64;
                (1.0 + (n - df + 0.5).max(0.0) / (df + 0.5)).ln()
            })
            .collect();
    }

    fn contains(&self, term: u32, mask: &[u64]) -> bool {
        let bits = &self.presence[term as usize * self.words..][..self.words];
        bits.iter().zip(mask).any(|(b, m)| b & m != 0)
    }

    /// How well the sources in `mask` support the claim: the weighted overlap, and the key terms
    /// they lack.
    fn support(&self, claim: &Claim, mask: &[u64], missing: &mut Vec<u32>) -> f64 {
        missing.clear();
        let mut found = 0.0;
        let mut total = 0.0;
        for t in &claim.terms {
            let weight = self.idf[t.term as usize];
            total += weight;
            if self.contains(t.term, mask) {
                found += weight;
            } else if t.key {
                missing.push(t.term);
            }
        }
        if total > 0.0 { found / total } else { 0.0 }
    }

    fn mask(&self, sources: impl IntoIterator<Item = usize>) -> Vec<u64> {
        let mut mask = vec![0; self.words];
        for s in sources {
            mask[s / 64] |= 1 << (s % 64);
        }
        mask
    }

    /// Checks a claim: its cited sources together, else each source alone, else the two that
    /// cover most of it.
    fn check(&self, claim: &Claim, min_overlap: f64) -> Check {
        let mut missing = Vec::new();
        let supports = |overlap: f64, missing: &[u32]| missing.is_empty() && overlap >= min_overlap;
        if !claim.cited.is_empty() {
            let mask = self.mask(claim.cited.iter().copied());
            let overlap = self.support(claim, &mask, &mut missing);
            if supports(overlap, &missing) {
                return Check::supported(false);
            }
        }
        let uncited_support = !claim.cited.is_empty();
        // (overlap, source, missing keys) of the best and second-best single sources.
        let mut best: Option<(f64, usize, Vec<u32>)> = None;
        let mut second: Option<(f64, usize)> = None;
        for s in 0..self.sources {
            let mask = self.mask([s]);
            let overlap = self.support(claim, &mask, &mut missing);
            if supports(overlap, &missing) {
                return Check::supported(uncited_support);
            }
            // Rank by missing key terms first, then overlap.
            let better = best.as_ref().is_none_or(|(o, _, m)| {
                missing.len() < m.len() || (missing.len() == m.len() && overlap > *o)
            });
            if better {
                second = best.take().map(|(o, b, _)| (o, b)).or(second);
                best = Some((overlap, s, missing.clone()));
            } else if second.is_none_or(|(o, _)| overlap > o) {
                second = Some((overlap, s));
            }
        }
        let Some((first_overlap, first, first_missing)) = best else {
            return Check::unsupported(Vec::new(), None);
        };
        if let Some((_, other)) = second {
            let mask = self.mask([first, other]);
            let overlap = self.support(claim, &mask, &mut missing);
            if supports(overlap, &missing) {
                return Check::supported(uncited_support);
            }
        }
        Check::unsupported(first_missing, Some((first_overlap, first)))
    }
}

#[cfg(test)]
mod tests;
