//! Text handling for `grounding`: sentences, tokens and the terms they normalise to.
//!
//! Everything here scans characters by hand rather than with regular expressions, because it runs
//! over every retrieved document of every judged answer. Terms are compared as 64-bit hashes of
//! their normalised form, written into one reused buffer, so tokenising a document allocates
//! nothing per token.
//!
//! Normalisation, the same for answers and documents:
//! - numbers lose thousands separators and trailing decimal zeros (`1,000` = `1000`,
//!   `3.50` = `3.5`); an ordinal or decade suffix is dropped (`81st`, `1880s`); `%` is ignored, so
//!   `12%` = `12 percent` (`percent` is a stopword);
//! - words are lower-cased and lightly stemmed (plural `-s`/`-es`/`-ies`, `-ed`, `-ing`, `-ly`, a
//!   final `-e`), enough for `designed` = `design`, `metres` = `metre` and `monthly` = `month`
//!   without a dictionary;
//! - hyphens and apostrophes split words (`81-storey`, `World's`); one-letter words are dropped.

use std::ops::Range;

use xxhash_rust::xxh3::xxh3_64;

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenKind {
    /// Starts with a digit: `330`, `1,083`, `3.5`, `81st`.
    Number,
    /// Starts with a letter: `Eiffel`, `A380`.
    Word,
}

/// A token: where it is in the text, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Token {
    /// The token's bytes in the text (a number's suffix excluded).
    pub range: Range<usize>,
    /// Number or word.
    pub kind: TokenKind,
}

/// The tokens of a text, scanned by hand.
pub(super) struct Tokens<'t> {
    text: &'t str,
    pos: usize,
}

impl<'t> Tokens<'t> {
    /// Tokens of `text`.
    pub fn new(text: &'t str) -> Tokens<'t> {
        Tokens { text, pos: 0 }
    }
}

/// The character at byte `i` of `text` (a char boundary) and its length in bytes.
#[inline]
pub(super) fn char_at(text: &str, i: usize) -> Option<(char, usize)> {
    let b = *text.as_bytes().get(i)?;
    if b < 0x80 {
        return Some((b as char, 1));
    }
    text[i..].chars().next().map(|c| (c, c.len_utf8()))
}

impl Iterator for Tokens<'_> {
    type Item = Token;

    // Inlined into the document scan: a call per token cost a third of the scorer's time.
    #[inline]
    fn next(&mut self) -> Option<Token> {
        let text = self.text;
        let bytes = text.as_bytes();
        // Skip to the next letter or digit; ASCII bytes without decoding.
        let mut start = self.pos;
        loop {
            let b = *bytes.get(start)?;
            if b < 0x80 {
                if b.is_ascii_alphanumeric() {
                    break;
                }
                start += 1;
            } else {
                let (c, len) = char_at(text, start)?;
                if c.is_alphanumeric() {
                    break;
                }
                start += len;
            }
        }
        if bytes[start].is_ascii_digit() {
            // Digits, with `,` or `.` between digits (`1,083`, `3.5`).
            let mut i = start + 1;
            while i < bytes.len() {
                let b = bytes[i];
                let joins = (b == b',' || b == b'.')
                    && bytes.get(i + 1).is_some_and(|n| n.is_ascii_digit());
                if b.is_ascii_digit() || joins {
                    i += 1;
                } else {
                    break;
                }
            }
            // An ordinal or decade suffix belongs to the number; any other letters (`330m`) are a
            // word of their own.
            let mut j = i;
            while j < bytes.len() && bytes[j].is_ascii_alphabetic() {
                j += 1;
            }
            let suffix = &text[i..j];
            let is_suffix = ["st", "nd", "rd", "th", "s"]
                .iter()
                .any(|s| suffix.eq_ignore_ascii_case(s));
            self.pos = if is_suffix { j } else { i };
            return Some(Token {
                range: start..i,
                kind: TokenKind::Number,
            });
        }
        let mut end = start;
        while let Some(&b) = bytes.get(end) {
            if b < 0x80 {
                if !b.is_ascii_alphanumeric() {
                    break;
                }
                end += 1;
            } else {
                match char_at(text, end) {
                    Some((c, len)) if c.is_alphanumeric() => end += len,
                    _ => break,
                }
            }
        }
        self.pos = end;
        Some(Token {
            range: start..end,
            kind: TokenKind::Word,
        })
    }
}

/// Writes the normalised number `raw` (digits, `,` and `.`) into `buf`.
fn normalise_number(raw: &str, buf: &mut String) {
    let dots = raw.bytes().filter(|&b| b == b'.').count();
    if dots > 1 {
        // A version or a date (`1.2.3`, `18.07.2024`): compared as written, without commas.
        buf.extend(raw.chars().filter(|&c| c != ','));
        return;
    }
    let (int, frac) = raw.split_once('.').unwrap_or((raw, ""));
    let digits = buf.len();
    buf.extend(int.chars().filter(|&c| c != ','));
    // Leading zeros do not change the value (`007`); keep one digit.
    let zeros = buf[digits..].bytes().take_while(|&b| b == b'0').count();
    let zeros = zeros.min(buf.len() - digits - 1);
    buf.replace_range(digits..digits + zeros, "");
    let frac = frac.trim_end_matches('0');
    if !frac.is_empty() {
        buf.push('.');
        buf.push_str(frac);
    }
}

/// Strips the suffixes light stemming removes from the lower-case word in `buf`.
fn stem(buf: &mut String) {
    let len = buf.len();
    if len >= 5 && buf.ends_with("ies") {
        buf.truncate(len - 3);
        buf.push('y');
    } else if buf.ends_with("sses")
        || (len >= 5
            && ["xes", "zes", "ches", "shes"]
                .iter()
                .any(|s| buf.ends_with(s)))
    {
        buf.truncate(len - 2);
    } else if len >= 4 && buf.ends_with('s') && !["ss", "us", "is"].iter().any(|s| buf.ends_with(s))
    {
        buf.truncate(len - 1);
    }
    let len = buf.len();
    if len >= 6 && buf.ends_with("ing") {
        buf.truncate(len - 3);
    } else if (len >= 5 && buf.ends_with("ed")) || (len >= 6 && buf.ends_with("ly")) {
        buf.truncate(len - 2);
    }
    let len = buf.len();
    if len >= 5 && buf.ends_with('e') {
        buf.truncate(len - 1);
    }
}

/// A normalised term: its hash, and whether the word is a stopword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Term {
    /// The hash of the normalised form.
    pub hash: u64,
    /// A function word (`the`, `was`, …): never a content word.
    pub stopword: bool,
}

/// Normalises a token of `text` into `buf` and hashes it; `None` for words too short to count.
/// Stopwords are only looked up when `check_stopwords` (claims need it, documents do not: a
/// stopword is never a claim term, so it can never match).
pub(super) fn term(
    text: &str,
    token: &Token,
    buf: &mut String,
    check_stopwords: bool,
) -> Option<Term> {
    buf.clear();
    let raw = &text[token.range.clone()];
    match token.kind {
        TokenKind::Number => {
            normalise_number(raw, buf);
            Some(Term {
                hash: xxh3_64(buf.as_bytes()),
                stopword: false,
            })
        }
        TokenKind::Word => {
            if raw.is_ascii() {
                if raw.len() < 2 {
                    return None;
                }
                buf.push_str(raw);
                buf.make_ascii_lowercase();
            } else {
                buf.extend(raw.chars().flat_map(char::to_lowercase));
                // One-letter words do not count.
                buf.chars().nth(1)?;
            }
            let stopword = check_stopwords && is_stopword(buf);
            if !stopword {
                stem(buf);
            }
            Some(Term {
                hash: xxh3_64(buf.as_bytes()),
                stopword,
            })
        }
    }
}

/// English function words, contraction stems (`don` of `don't`) and filler that carries no fact.
fn is_stopword(w: &str) -> bool {
    matches!(
        w,
        "a" | "about"
            | "above"
            | "according"
            | "after"
            | "again"
            | "against"
            | "all"
            | "also"
            | "am"
            | "an"
            | "and"
            | "any"
            | "are"
            | "aren"
            | "as"
            | "at"
            | "be"
            | "been"
            | "before"
            | "based"
            | "being"
            | "below"
            | "between"
            | "both"
            | "but"
            | "by"
            | "can"
            | "could"
            | "couldn"
            | "did"
            | "didn"
            | "do"
            | "does"
            | "doesn"
            | "doing"
            | "don"
            | "down"
            | "during"
            | "each"
            | "either"
            | "etc"
            | "few"
            | "for"
            | "from"
            | "further"
            | "get"
            | "gets"
            | "getting"
            | "got"
            | "had"
            | "hadn"
            | "has"
            | "hasn"
            | "have"
            | "haven"
            | "having"
            | "he"
            | "her"
            | "here"
            | "hers"
            | "herself"
            | "him"
            | "himself"
            | "his"
            | "how"
            | "however"
            | "if"
            | "in"
            | "into"
            | "is"
            | "isn"
            | "it"
            | "its"
            | "itself"
            | "just"
            | "ll"
            | "may"
            | "me"
            | "might"
            | "more"
            | "most"
            | "much"
            | "must"
            | "my"
            | "myself"
            | "no"
            | "nor"
            | "not"
            | "now"
            | "of"
            | "off"
            | "on"
            | "once"
            | "only"
            | "or"
            | "other"
            | "our"
            | "ours"
            | "ourselves"
            | "out"
            | "over"
            | "own"
            | "per"
            | "percent"
            | "provided"
            | "re"
            | "same"
            | "shall"
            | "she"
            | "should"
            | "shouldn"
            | "so"
            | "some"
            | "such"
            | "than"
            | "that"
            | "the"
            | "their"
            | "theirs"
            | "them"
            | "themselves"
            | "then"
            | "there"
            | "these"
            | "they"
            | "this"
            | "those"
            | "through"
            | "thus"
            | "to"
            | "too"
            | "under"
            | "until"
            | "up"
            | "upon"
            | "us"
            | "ve"
            | "very"
            | "via"
            | "vs"
            | "was"
            | "wasn"
            | "we"
            | "were"
            | "weren"
            | "what"
            | "when"
            | "where"
            | "which"
            | "while"
            | "who"
            | "whom"
            | "whose"
            | "why"
            | "will"
            | "with"
            | "within"
            | "without"
            | "won"
            | "would"
            | "wouldn"
            | "yet"
            | "you"
            | "your"
            | "yours"
            | "yourself"
            | "yourselves"
    )
}

/// Words ending in `.` that do not end a sentence.
fn is_abbreviation(word: &str) -> bool {
    const ABBREVIATIONS: [&str; 24] = [
        "dr", "mr", "mrs", "ms", "prof", "st", "jr", "sr", "vs", "inc", "ltd", "co", "corp", "no",
        "fig", "approx", "cf", "al", "eg", "ie", "etc", "mt", "gen", "est",
    ];
    ABBREVIATIONS.iter().any(|a| a.eq_ignore_ascii_case(word))
}

/// Strips a list bullet or number (`- `, `* `, `• `, `1. `, `2) `) or Markdown heading and quote
/// marks from the start of a line; returns the offset where the text starts.
fn skip_bullet(line: &str) -> usize {
    let trimmed = line.trim_start();
    let mut at = line.len() - trimmed.len();
    let rest = &line[at..];
    for bullet in ["- ", "* ", "+ ", "• ", "> ", "– "] {
        if rest.starts_with(bullet) {
            return at + bullet.len();
        }
    }
    let hashes = rest.bytes().take_while(|&b| b == b'#').count();
    if hashes > 0 && rest[hashes..].starts_with(' ') {
        return at + hashes + 1;
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if (1..=3).contains(&digits) {
        let after = &rest[digits..];
        if after.starts_with(". ") || after.starts_with(") ") {
            at += digits + 2;
        }
    }
    at
}

/// Whether the `.` at byte `dot` of `line` ends a sentence, judging by the word before it and the
/// text after it.
fn dot_ends_sentence(line: &str, dot: usize, next: usize) -> bool {
    let word_start = line[..dot]
        .rfind(|c: char| !(c.is_alphanumeric() || c == '.'))
        .map_or(0, |i| {
            i + line[i..].chars().next().map_or(1, char::len_utf8)
        });
    let word = &line[word_start..dot];
    let letters = word.chars().filter(|c| c.is_alphabetic()).count();
    // `e.g`, `U.S`, initials (`J.`) and known abbreviations continue the sentence.
    if word.contains('.')
        || (letters == 1 && word.chars().all(char::is_uppercase))
        || is_abbreviation(word)
    {
        return false;
    }
    // A sentence does not start in lower case (`approx. five`).
    !line[next..]
        .trim_start()
        .chars()
        .next()
        .is_some_and(char::is_lowercase)
}

/// The sentences of `text`, as byte ranges, trimmed: lines and list items are sentences of their
/// own; within a line, `.`, `!`, `?` (and their CJK forms) followed by a space end a sentence,
/// except after an abbreviation, an initial or before a lower-case word. Decimals (`3.5`) never
/// split: no space follows their dot. Fenced code blocks (```` ``` ````) are left out.
pub(super) fn sentences(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut push = |start: usize, end: usize| {
        let s = &text[start..end];
        let trimmed = s.trim_start();
        let from = start + (s.len() - trimmed.len());
        let to = from + trimmed.trim_end().len();
        if to > from {
            out.push(from..to);
        }
    };
    let mut line_start = 0;
    let mut in_code = false;
    for line in text.split('\n') {
        let base = line_start;
        line_start += line.len() + 1;
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut start = skip_bullet(line);
        let mut i = start;
        while let Some((c, len)) = char_at(line, i) {
            i += len;
            let cjk = matches!(c, '。' | '！' | '？');
            if !(matches!(c, '.' | '!' | '?') || cjk) {
                continue;
            }
            let dot = i - len;
            // Closing quotes and brackets and repeated marks belong to the sentence.
            while let Some((n, l)) = char_at(line, i) {
                if matches!(
                    n,
                    '.' | '!' | '?' | '"' | '\'' | '”' | '’' | ')' | ']' | '»'
                ) {
                    i += l;
                } else {
                    break;
                }
            }
            let at_break = cjk || char_at(line, i).is_none_or(|(n, _)| n.is_whitespace());
            if !at_break || (c == '.' && !dot_ends_sentence(line, dot, i)) {
                continue;
            }
            push(base + start, base + i);
            start = i;
        }
        push(base + start, base + line.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<&str> {
        sentences(text).into_iter().map(|r| &text[r]).collect()
    }

    fn norm(text: &str) -> Vec<String> {
        let mut buf = String::new();
        Tokens::new(text)
            .filter_map(|t| {
                term(text, &t, &mut buf, true)
                    .filter(|t| !t.stopword)
                    .map(|_| buf.clone())
            })
            .collect()
    }

    #[test]
    fn sentences_respect_abbreviations_decimals_and_lists() {
        assert_eq!(
            split("Dr. Smith measured 3.5 m, e.g. the mast. It is tall! Is it? Yes."),
            [
                "Dr. Smith measured 3.5 m, e.g. the mast.",
                "It is tall!",
                "Is it?",
                "Yes."
            ]
        );
        assert_eq!(
            split("Facts:\n- It opened in 1889.\n2. J. R. R. Tolkien wrote it.\n\n## Notes"),
            [
                "Facts:",
                "It opened in 1889.",
                "J. R. R. Tolkien wrote it.",
                "Notes"
            ]
        );
        assert_eq!(
            split("It cost approx. five euros (\"cheap.\") Then it closed."),
            ["It cost approx. five euros (\"cheap.\")", "Then it closed."]
        );
        assert_eq!(
            split("东京很大。大阪也很大。"),
            ["东京很大。", "大阪也很大。"]
        );
        assert_eq!(
            split("Run this:\n```sh\nls -la. Then\n```\nDone."),
            ["Run this:", "Done."]
        );
    }

    #[test]
    fn numbers_and_words_normalise_alike_on_both_sides() {
        assert_eq!(norm("1,000 and 1000"), ["1000", "1000"]);
        assert_eq!(norm("3.50 vs 3.5 vs 03.5"), ["3.5", "3.5", "3.5"]);
        assert_eq!(norm("12% rose 12 percent"), ["12", "rose", "12"]);
        assert_eq!(norm("the 81st floor in the 1880s"), ["81", "floor", "1880"]);
        assert_eq!(norm("330m"), ["330"]);
        assert_eq!(norm("1.2.3 and 18.07.2024"), ["1.2.3", "18.07.2024"]);
        assert_eq!(
            norm("The World's tallest towers were designed"),
            ["world", "tallest", "tower", "design"]
        );
        assert_eq!(
            norm("metres metre stories story"),
            ["metr", "metr", "story", "story"]
        );
        assert_eq!(norm("completed complete completing"), ["complet"; 3]);
        assert_eq!(norm("Paris boxes churches"), ["paris", "box", "church"]);
        assert_eq!(
            norm("monthly month annually annual"),
            ["month", "month", "annual", "annual"]
        );
        assert_eq!(norm("Zürich ÉCOLE"), ["zürich", "écol"]);
    }
}
