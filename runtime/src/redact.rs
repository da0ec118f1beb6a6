//! One redaction layer for every credential the process holds, applied wherever text leaves
//! the process's hands: logs, the journal, error messages and API responses.
//!
//! Two kinds of things are replaced by `<redacted>`:
//! - **registered secrets**: every credential the process is given registers itself
//!   ([`register`]: provider API keys, the service's bearer token; [`register_url`]: the user
//!   and password of a URL, and their Basic-auth encoding). Registered secrets shorter than
//!   [`MIN_SECRET_CHARS`] are refused (they would redact ordinary words);
//! - **credential shapes**, whoever holds them: `Bearer <token>` and `Basic <credentials>`
//!   (only base64 of `user:password`: "Basic arithmetic" is text), `user:password@` in URLs,
//!   and the values of `api_key`, `x-api-key` and `authorization` fields.
//!
//! The registry is process-wide (a credential is held by the process, not by one component).

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::{LazyLock, PoisonError, RwLock};

use aho_corasick::{packed, AhoCorasick};
use base64::Engine;
use regex::{Captures, Regex};

mod text;

/// What replaces a credential.
pub const REDACTED: &str = "<redacted>";

/// Shorter registered secrets are refused: they would redact ordinary text.
pub const MIN_SECRET_CHARS: usize = 8;

static SECRETS: LazyLock<RwLock<Vec<String>>> = LazyLock::new(RwLock::default);

/// One credential shape: what matches it, what replaces a match, and whether a match is a
/// credential at all (a `Basic` one must decode to `user:password`).
struct Shape {
    pattern: Regex,
    replacement: &'static str,
    is_credential: fn(&Captures) -> bool,
}

/// `Bearer x`, `Basic x`; `scheme://user:pass@`; `"api_key": "x"`, `x-api-key: x`, `authorization=x`.
static SHAPES: LazyLock<[Shape; 3]> = LazyLock::new(|| {
    let re = |pattern: &str| Regex::new(pattern).expect("a valid pattern");
    [
        Shape {
            pattern: re(r"(?i)\b(bearer|basic)(\s+)([A-Za-z0-9._~+/=-]{6,})"),
            replacement: "${1}${2}<redacted>",
            is_credential: scheme_credential,
        },
        Shape {
            pattern: re(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@:]+(:[^\s/@]*)?@"),
            replacement: "${1}<redacted>@",
            is_credential: |_| true,
        },
        Shape {
            pattern: re(
                r#"(?i)\b(x-api-key|api[_-]?key|authorization)(["']?\s*[:=]\s*["']?)(?:bearer\s+|basic\s+)?[^\s"',;}]{6,}"#,
            ),
            replacement: "${1}${2}<redacted>",
            is_credential: |_| true,
        },
    ]
});

/// Whether a `Bearer`/`Basic` match is a credential: a bearer token always is; a Basic one
/// only when it is base64 of `user:password`, as RFC 7617's credentials are, so the words
/// "Basic arithmetic" stay text.
fn scheme_credential(captures: &Captures) -> bool {
    if !captures[1].eq_ignore_ascii_case("basic") {
        return true;
    }
    let token = captures[3].trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(token)
        .is_ok_and(|decoded| decoded.contains(&b':'))
}

impl Shape {
    /// `text` with this shape's credentials replaced; borrowed when it holds none.
    fn replace<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut replaced = false;
        let out = self.pattern.replace_all(text, |captures: &Captures| {
            let mut out = String::new();
            if (self.is_credential)(captures) {
                replaced = true;
                captures.expand(self.replacement, &mut out);
            } else {
                out.push_str(&captures[0]);
            }
            out
        });
        // Matches that were all text ("Basic arithmetic") leave `text` as it was.
        if replaced {
            out
        } else {
            Cow::Borrowed(text)
        }
    }

    /// Where in `text` this shape's credentials are.
    fn spans<'t>(&'t self, text: &'t str) -> impl Iterator<Item = std::ops::Range<usize>> + 't {
        self.pattern
            .captures_iter(text)
            .filter(|captures| (self.is_credential)(captures))
            .filter_map(|captures| captures.get(0).map(|m| m.range()))
    }
}

/// Registers a credential the process holds, so it is redacted wherever it appears. Blank or
/// too short values are ignored (an unset key is not a secret); registering twice is harmless.
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.chars().count() < MIN_SECRET_CHARS {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(PoisonError::into_inner);
    if !secrets.iter().any(|s| s == secret) {
        secrets.push(secret.to_owned());
        // Longest first: a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Registers the credentials inside `url` (`scheme://user:password@host`): the password, the
/// `user:password` pair and its Basic-auth (base64) form.
pub fn register_url(url: &str) {
    let Some((_, rest)) = url.split_once("://") else {
        return;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return;
    };
    register(userinfo);
    register(&base64::engine::general_purpose::STANDARD.encode(userinfo));
    if let Some((_, password)) = userinfo.split_once(':') {
        register(password);
    }
}

/// `text` with every registered secret and every credential shape replaced by `<redacted>`;
/// borrowed when there was nothing to redact.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for secret in SECRETS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), REDACTED));
        }
    }
    // Every shape holds one of its words: one scan rules all of them out.
    if shape_keywords(&out) == ShapeKeywords::default() {
        return out;
    }
    for shape in SHAPES.iter() {
        if let Cow::Owned(replaced) = shape.replace(&out) {
            out = Cow::Owned(replaced);
        }
    }
    out
}

/// Redacts `text` in place; true if anything was replaced.
pub fn redact_in_place(text: &mut String) -> bool {
    match redact(text) {
        Cow::Borrowed(_) => false,
        Cow::Owned(clean) => {
            *text = clean;
            true
        }
    }
}

/// A JSON-serializable value with every string redacted (serialized, redacted, read back); the
/// value itself when there was nothing to redact or it does not read back.
///
/// Most values hold nothing to redact: their strings (keys and names included) are first
/// gathered as they are, unescaped, and looked over in one scan for a registered secret or
/// the start of a credential shape; only a value where one shows goes through JSON.
pub fn redact_serialized<T>(value: T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    if !text::may_need_redaction(&value) {
        return value;
    }
    let Ok(json) = serde_json::to_string(&value) else {
        return value;
    };
    match redact(&json) {
        Cow::Borrowed(_) => value,
        Cow::Owned(clean) => serde_json::from_str(&clean).unwrap_or(value),
    }
}

/// What a credential shape starts with (or, for `://`, holds): a streamed text holds back from
/// a word that has one until the words after it are complete. Every match of [`SHAPES`] holds
/// one of these words.
static SHAPE_START: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)bearer|basic|://|api[_-]?key|authorization").expect("a valid pattern")
});

/// How many words a credential shape spans at most (`authorization = Bearer <token>`).
const SHAPE_WORDS: usize = 4;

/// Redacts a text that arrives in pieces (a streamed answer), so that a credential cut across
/// two pieces is redacted as a whole: each piece is added to what is held back, and only the
/// part no later piece can turn into a credential is released, redacted. Held back: the token
/// the text ends in (it may go on: letters, digits and `._~+/=:@-`), the end of the text that
/// begins a registered secret, the last few words if one of them starts a credential shape
/// (`Bearer`, `Basic`, `://`, `api_key`, `authorization`), and the whole of anything that
/// redacts and reaches into those. The pieces released read as the whole text redacted at
/// once; [`StreamRedactor::finish`] releases the rest when the stream ends.
#[derive(Debug, Default)]
pub struct StreamRedactor {
    held: String,
}

impl StreamRedactor {
    /// A redactor holding nothing.
    pub fn new() -> Self {
        StreamRedactor::default()
    }

    /// Adds `piece`; the redacted text that can be released now, if any.
    pub fn push(&mut self, piece: &str) -> Option<String> {
        self.held.push_str(piece);
        let cut = release_end(&self.held);
        if cut == 0 {
            return None;
        }
        let rest = self.held.split_off(cut);
        let released = std::mem::replace(&mut self.held, rest);
        Some(redact(&released).into_owned())
    }

    /// The stream ended: the rest, redacted, if anything is held.
    pub fn finish(&mut self) -> Option<String> {
        let held = std::mem::take(&mut self.held);
        (!held.is_empty()).then(|| redact(&held).into_owned())
    }
}

/// Where the part of `text` that no further text can make part of a credential ends.
fn release_end(text: &str) -> usize {
    let token = |c: char| c.is_alphanumeric() || "._~+/=:@-".contains(c);
    let mut cut = text
        .char_indices()
        .rev()
        .take_while(|(_, c)| token(*c))
        .last()
        .map_or(text.len(), |(i, _)| i);
    cut = cut.min(secret_begun(text));
    let words = text.split_whitespace().rev().take(SHAPE_WORDS);
    if let Some(word) = words.filter(|w| SHAPE_START.is_match(w)).last() {
        // `word` is a slice of `text`: its offset is where it starts.
        cut = cut.min(word.as_ptr() as usize - text.as_ptr() as usize);
    }
    // Nothing that redacts now may be cut in two.
    let spans = matches(text);
    while let Some(span) = spans.iter().find(|s| s.start < cut && cut < s.end) {
        cut = span.start;
    }
    cut
}

/// Where the longest end of `text` that begins a registered secret starts (`text.len()` if
/// none does).
fn secret_begun(text: &str) -> usize {
    let secrets = SECRETS.read().unwrap_or_else(PoisonError::into_inner);
    let begins = |start: &usize| secrets.iter().any(|s| s.starts_with(&text[*start..]));
    (text
        .len()
        .saturating_sub(secrets.first().map_or(0, String::len))..text.len())
        .filter(|i| text.is_char_boundary(*i))
        .find(begins)
        .unwrap_or(text.len())
}

/// Where in `text` [`redact`] would replace something.
fn matches(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans: Vec<_> = SECRETS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .flat_map(|secret| {
            text.match_indices(secret.as_str())
                .map(|(i, s)| i..i + s.len())
                .collect::<Vec<_>>()
        })
        .collect();
    for shape in SHAPES.iter() {
        spans.extend(shape.spans(text));
    }
    spans
}

/// In one scan: [`SHAPES`]' first shape (`Bearer`/`Basic` credentials), and the names of the
/// fields whose values its last shape redacts.
static CREDENTIAL_WORDS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)api[_-]?key|authorization|\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
        .expect("a valid pattern")
});

/// Whether the strings of a value, gathered in `text` (see `text.rs`), may hold what
/// [`redact`] replaces in the value's JSON: a registered secret, a `Bearer`/`Basic` credential
/// or a URL with a user, matched in the strings as they are (a match in the JSON is one in
/// them), or a credential field's name (its value is in another string). A URL without a user
/// (`"$schema": "https://..."` in every JSON schema) is not one. The regexes only look at a
/// text that holds one of their words.
fn may_hold_credentials(text: &str) -> bool {
    let secrets = SECRETS.read().unwrap_or_else(PoisonError::into_inner);
    if secrets.iter().any(|s| text.contains(s.as_str())) {
        return true;
    }
    let words = shape_keywords(text);
    (words.credential && CREDENTIAL_WORDS.is_match(text))
        || (words.url && SHAPES[1].pattern.is_match(text))
}

/// Which of the words the credential shapes hold a text holds: `api`, `authorization`,
/// `bearer`, `basic` in any case (`credential`), and `://` (`url`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ShapeKeywords {
    credential: bool,
    url: bool,
}

/// The words of [`SHAPES`], as [`shape_keywords`] looks for them in a text turned to ASCII lower
/// case: every text a shape (or [`CREDENTIAL_WORDS`]) matches holds one of them there. The
/// shapes' `(?i)` also folds two characters outside ASCII into ASCII letters (`ſ` into `s`,
/// the Kelvin sign into `k`): of the words, only `basic` holds one of those letters, so its
/// `ſ` spelling is a word too. `://` is the last one.
const SHAPE_KEYWORDS: [&str; 6] = [
    "api",
    "authorization",
    "bearer",
    "basic",
    "ba\u{17f}ic",
    "://",
];

/// How [`SHAPE_KEYWORDS`] are looked for: Teddy (SIMD, a few bytes per instruction) where the
/// CPU has it; elsewhere an Aho-Corasick automaton (its own choice of prefilter, a scan for
/// the words' first bytes, stops at every `a`: slower than Teddy on text).
enum KeywordSearch {
    Teddy(packed::Searcher),
    Automaton(AhoCorasick),
}

static SHAPE_KEYWORD_SEARCH: LazyLock<KeywordSearch> =
    LazyLock::new(|| match packed::Searcher::new(SHAPE_KEYWORDS) {
        Some(teddy) => KeywordSearch::Teddy(teddy),
        None => KeywordSearch::Automaton(AhoCorasick::new(SHAPE_KEYWORDS).expect("valid words")),
    });

/// Which of [`SHAPE_KEYWORDS`] `text` holds, in any case.
fn shape_keywords(text: &str) -> ShapeKeywords {
    thread_local! {
        // Reused: a model request's text is kilobytes, looked at on every journaled request.
        static FOLDED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    FOLDED.with_borrow_mut(|folded| {
        folded.clear();
        folded.extend_from_slice(text.as_bytes());
        folded.make_ascii_lowercase();
        match &*SHAPE_KEYWORD_SEARCH {
            KeywordSearch::Teddy(teddy) => keywords_found(teddy.find_iter(folded)),
            KeywordSearch::Automaton(automaton) => keywords_found(automaton.find_iter(&**folded)),
        }
    })
}

/// Which kinds of [`SHAPE_KEYWORDS`] the matches `found` are of.
fn keywords_found(found: impl Iterator<Item = aho_corasick::Match>) -> ShapeKeywords {
    let mut words = ShapeKeywords::default();
    for found in found {
        if found.pattern().as_usize() == SHAPE_KEYWORDS.len() - 1 {
            words.url = true;
        } else {
            words.credential = true;
        }
        if words.url && words.credential {
            break;
        }
    }
    words
}

/// A writer (for a log subscriber) that redacts each write before passing it to `inner`.
pub struct RedactingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` in pieces of `size` characters through a [`StreamRedactor`]: what it released,
    /// piece by piece.
    fn streamed(text: &str, size: usize) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let mut redactor = StreamRedactor::new();
        let mut released: Vec<String> = chars
            .chunks(size)
            .filter_map(|piece| redactor.push(&piece.iter().collect::<String>()))
            .collect();
        released.extend(redactor.finish());
        released
    }

    #[test]
    fn a_credential_cut_across_streamed_pieces_is_redacted_whole() {
        register("sk-stream-cut-0123456789");
        let text = "the key sk-stream-cut-0123456789 then Authorization: Bearer abcdefghijklmnop, \
                    basic Basic dXNlcjpwYXNzd29yZA== and https://me:pw-1234567@host/x are gone";
        for size in 1..=17 {
            let released = streamed(text, size);
            let whole = released.concat();
            assert_eq!(whole, redact(text), "pieces of {size}: {released:?}");
            for piece in &released {
                for leak in ["0123456789", "ijklmnop", "cjpwYXNz", "pw-1234567"] {
                    assert!(!piece.contains(leak), "pieces of {size}: {piece:?}");
                }
            }
        }
    }

    #[test]
    fn plain_text_is_released_as_it_comes_but_for_its_last_word() {
        let mut redactor = StreamRedactor::new();
        assert_eq!(redactor.push("Hello wor").as_deref(), Some("Hello "));
        assert_eq!(redactor.push("ld, and "), Some("world, and ".into()));
        assert_eq!(redactor.push("bye"), None);
        assert_eq!(redactor.finish().as_deref(), Some("bye"));
        assert_eq!(redactor.finish(), None);
    }

    #[test]
    fn the_word_basic_before_a_word_is_text_and_basic_credentials_are_not() {
        let text = "Basic arithmetic, basic income and BASIC programming; \
                    Authorization: Basic dXNlcjpwYXNzd29yZA== and basic YWxpY2U6c2VjcmV0";
        let clean = redact(text);
        assert!(
            clean.starts_with("Basic arithmetic, basic income and BASIC programming; "),
            "{clean}"
        );
        for credential in ["dXNlcjpwYXNzd29yZA==", "YWxpY2U6c2VjcmV0"] {
            assert!(!clean.contains(credential), "{clean}");
        }
        assert_eq!(
            redact("Basic arithmetic"),
            Cow::Borrowed("Basic arithmetic")
        );
        let mut words = String::from("the basic idea");
        assert!(!redact_in_place(&mut words));
        // Streamed, the same holds: the words come out, the credential does not.
        assert_eq!(streamed(text, 3).concat(), clean);
    }

    #[test]
    fn registered_secrets_and_credential_shapes_are_redacted() {
        register("sk-unit-test-0123456789");
        register("short");
        register_url("https://alice:pa55word-xyz@example.com/v1");
        let text = "key sk-unit-test-0123456789; short; pa55word-xyz; \
                    https://bob:hunter2@h.example/x; Authorization: Bearer abc.def-123456; token Bearer q1w2e3r4t5; \
                    Basic YWxpY2U6cGE1NXdvcmQteHl6; {\"api_key\": \"zzzzzzzz\"}; x-api-key: k-1234567";
        let clean = redact(text);
        for secret in [
            "sk-unit-test-0123456789",
            "pa55word-xyz",
            "hunter2",
            "abc.def-123456",
            "q1w2e3r4t5",
            "YWxpY2U6cGE1NXdvcmQteHl6",
            "zzzzzzzz",
            "k-1234567",
        ] {
            assert!(!clean.contains(secret), "{secret} in {clean}");
        }
        assert!(
            clean.contains("short"),
            "too short to be a registered secret: {clean}"
        );
        assert!(clean.contains("https://<redacted>@h.example/x"), "{clean}");
        assert!(clean.contains("token Bearer <redacted>"), "{clean}");
    }

    /// Texts each shape matches, and texts that only look like one, in several spellings.
    fn shape_cases() -> Vec<String> {
        let cases = [
            "Authorization: Bearer abcdefghij",
            "authorization=xyzxyzxyz and more",
            "x-api-key: k-12345678",
            "{\"ApiKey\": \"zzzzzzzzz\"}",
            "api-key = 'qwertyuiop'",
            "api_\u{212A}ey=abcdefghij",
            "Basic YWxpY2U6c2VjcmV0",
            "ba\u{17f}ic YWxpY2U6c2VjcmV0",
            "bearer tok-123456",
            "see https://user:pw-secret@host/x",
            "a schema: https://json-schema.org/draft/2020-12/schema",
            "Basic arithmetic, the base of a beautiful api",
            "nothing of the sort here",
        ];
        let alternate = |text: &str| -> String {
            text.chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect()
        };
        cases
            .iter()
            .flat_map(|t| {
                [
                    t.to_string(),
                    t.to_uppercase(),
                    t.to_lowercase(),
                    alternate(t),
                ]
            })
            .collect()
    }

    #[test]
    fn every_text_a_shape_matches_holds_one_of_its_words() {
        for text in shape_cases() {
            let words = shape_keywords(&text);
            for shape in SHAPES.iter() {
                if shape.pattern.is_match(&text) {
                    assert_ne!(words, ShapeKeywords::default(), "{text}");
                }
            }
            if CREDENTIAL_WORDS.is_match(&text) {
                assert!(words.credential, "{text}");
            }
            assert_eq!(words.url, text.contains("://"), "{text}");
        }
        // Where the CPU has no Teddy, the automaton finds the same words.
        let automaton = AhoCorasick::new(SHAPE_KEYWORDS).unwrap();
        for text in shape_cases() {
            let folded = text.to_ascii_lowercase();
            let found = keywords_found(automaton.find_iter(&folded));
            assert_eq!(found, shape_keywords(&text), "{text}");
        }
        let plain = "You plan the steps of an agent run toward a goal.".repeat(50);
        assert_eq!(shape_keywords(&plain), ShapeKeywords::default());
        assert!(matches!(redact(&plain), Cow::Borrowed(_)));
    }

    /// The words looked for first change nothing that is redacted: the same text as every
    /// shape applied, and the same answer as the regexes alone.
    #[test]
    fn the_word_scan_redacts_exactly_what_the_shapes_alone_do() {
        for text in shape_cases() {
            let mut alone = Cow::Borrowed(text.as_str());
            for shape in SHAPES.iter() {
                if let Cow::Owned(replaced) = shape.replace(&alone) {
                    alone = Cow::Owned(replaced);
                }
            }
            assert_eq!(redact(&text), alone, "{text}");
            let by_regexes = CREDENTIAL_WORDS.is_match(&text)
                || (text.contains("://") && SHAPES[1].pattern.is_match(&text));
            assert_eq!(may_hold_credentials(&text), by_regexes, "{text}");
        }
    }

    #[test]
    fn clean_text_is_borrowed_and_values_read_back() {
        assert!(matches!(redact("nothing to see here"), Cow::Borrowed(_)));
        register("value-secret-42");
        let v: serde_json::Value =
            redact_serialized(serde_json::json!({"a": ["value-secret-42", 1]}));
        assert_eq!(v, serde_json::json!({"a": ["<redacted>", 1]}));
        let mut s = String::from("Bearer value-secret-42");
        assert!(redact_in_place(&mut s));
        assert_eq!(s, "Bearer <redacted>");
    }
}
