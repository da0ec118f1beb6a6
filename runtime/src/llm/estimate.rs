//! Token estimates made before a call (to reserve its worst case) and after a call whose
//! provider reported no usage.
//!
//! A reservation must be an upper bound on what the call can cost, so the input estimate
//! must not be below the provider's count:
//! - Models that tiktoken knows (OpenAI's: `gpt-4o*`, `gpt-4.1*`, `gpt-5*`, `o3`, `o4-mini`,
//!   `gpt-oss-*`, ...) are counted with their real tokenizer via `tiktoken-rs`, plus OpenAI's
//!   documented chat framing (3 tokens per message and 3 to prime the reply).
//! - Every other model (Anthropic's tokenizer is not public; local models vary) is counted
//!   with a bound that holds for any byte-level tokenizer (byte-level BPE, SentencePiece with
//!   byte fallback): **one token per UTF-8 byte**, since every token stands for at least one
//!   byte of text. It is about 3 to 4 times the real count of English text: the reservation
//!   is that much larger, the charge is still the reported usage. Framing adds 5 tokens per
//!   message and, with tools or an output schema, [`TOOL_PROMPT_OVERHEAD`] for the tool-use
//!   system prompt Anthropic documents.
//!
//! Tool definitions count as their JSON text. What a provider may add beyond this (a framing
//! it does not document) is caught at settlement: usage above the reservation is charged and
//! stops the run (`LlmError::Overshoot`).
//!
//! tiktoken is slow (about 0.1 ms per 1,000 tokens), so counts of texts of 512 bytes or more
//! are remembered (bounded, per process): a conversation resent at each step is counted once.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{LazyLock, Mutex};

use serde_json::Value;
use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
use tiktoken_rs::CoreBPE;

use super::types::{ChatRequest, Message, ToolCall, Usage};

/// Tokens Anthropic adds for its tool-use system prompt (documented as 313-346 for current
/// models), added by the heuristic when a request has tools or an output schema.
pub const TOOL_PROMPT_OVERHEAD: u64 = 350;

/// How an estimate was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EstimateMethod {
    /// With the model's own tokenizer (tiktoken).
    Tiktoken,
    /// With the conservative character heuristic.
    Heuristic,
}

/// Estimated prompt size of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEstimate {
    /// Prompt tokens, framing included.
    pub tokens: u64,
    /// How they were counted.
    pub method: EstimateMethod,
}

enum Counter {
    Bpe(&'static CoreBPE),
    Heuristic,
}

impl Counter {
    fn for_model(model: &str) -> Counter {
        use tiktoken_rs::*;
        match get_tokenizer(model) {
            Some(Tokenizer::O200kBase) => Counter::Bpe(o200k_base_singleton()),
            Some(Tokenizer::O200kHarmony) => Counter::Bpe(o200k_harmony_singleton()),
            Some(Tokenizer::Cl100kBase) => Counter::Bpe(cl100k_base_singleton()),
            Some(Tokenizer::P50kBase) => Counter::Bpe(p50k_base_singleton()),
            Some(Tokenizer::P50kEdit) => Counter::Bpe(p50k_edit_singleton()),
            Some(Tokenizer::R50kBase | Tokenizer::Gpt2) => Counter::Bpe(r50k_base_singleton()),
            None => Counter::Heuristic,
        }
    }

    fn count(&self, text: &str) -> u64 {
        match self {
            Counter::Bpe(bpe) if text.len() >= MEMO_MIN_BYTES => memo_count(bpe, text),
            Counter::Bpe(bpe) => bpe.encode_ordinary(text).len() as u64,
            Counter::Heuristic => heuristic_tokens(text),
        }
    }

    fn per_message(&self) -> u64 {
        match self {
            Counter::Bpe(_) => 4, // 3 framing tokens + the role
            Counter::Heuristic => 5,
        }
    }

    fn count_json(&self, value: &impl serde::Serialize) -> u64 {
        self.count(&serde_json::to_string(value).unwrap_or_default())
    }

    fn count_calls(&self, calls: &[ToolCall]) -> u64 {
        calls
            .iter()
            .map(|c| self.count(&c.name) + self.count_json(&c.arguments) + 5)
            .sum()
    }
}

/// Texts at least this long have their tiktoken count remembered.
const MEMO_MIN_BYTES: usize = 512;
/// The memo is emptied when it holds this many counts.
const MEMO_CAPACITY: usize = 4096;

/// Token counts of long texts seen recently, keyed by tokenizer and a 64-bit hash of the text.
///
/// tiktoken costs about 0.1 ms per 1,000 tokens, and an agent resends its whole conversation
/// at every step, so without this the estimate grows with the square of the conversation. A
/// hash collision would only skew one reservation (settlement uses the provider's usage).
static MEMO: LazyLock<Mutex<HashMap<(usize, u64), u64>>> = LazyLock::new(Mutex::default);

fn memo_count(bpe: &'static CoreBPE, text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    let key = (std::ptr::from_ref(bpe) as usize, hasher.finish());
    let lock = || MEMO.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&n) = lock().get(&key) {
        return n;
    }
    let n = bpe.encode_ordinary(text).len() as u64;
    let mut memo = lock();
    if memo.len() >= MEMO_CAPACITY {
        memo.clear();
    }
    memo.insert(key, n);
    n
}

/// One token per UTF-8 byte: an upper bound on what any byte-level tokenizer counts.
pub fn heuristic_tokens(text: &str) -> u64 {
    text.len() as u64
}

/// Estimates the prompt tokens `request` will be billed for.
pub fn estimate_input(request: &ChatRequest) -> InputEstimate {
    let counter = Counter::for_model(&request.model);
    let mut tokens = 3; // reply priming
    for m in &request.messages {
        tokens += counter.per_message() + counter.count(m.content());
        match m {
            Message::Assistant { tool_calls, .. } => tokens += counter.count_calls(tool_calls),
            Message::Tool { tool_call_id, .. } => tokens += counter.count(tool_call_id),
            _ => {}
        }
    }
    for t in &request.tools {
        tokens += counter.count(&t.name)
            + counter.count(&t.description)
            + counter.count_json(&t.parameters)
            + 10;
    }
    if let Some(s) = &request.output_schema {
        tokens += counter.count(&s.name) + counter.count(s.schema.json()) + 10;
    }
    for s in &request.stop {
        tokens += counter.count(s);
    }
    let method = match counter {
        Counter::Bpe(_) => EstimateMethod::Tiktoken,
        Counter::Heuristic => {
            if !request.tools.is_empty() || request.output_schema.is_some() {
                tokens += TOOL_PROMPT_OVERHEAD;
            }
            EstimateMethod::Heuristic
        }
    };
    InputEstimate { tokens, method }
}

/// The tokens of `text` as output of `model` (its tokenizer, or the heuristic): what a
/// streamed answer cut short is charged for the part received.
pub fn count_output(model: &str, text: &str) -> u64 {
    Counter::for_model(model).count(text)
}

/// The usage of an answer whose provider reported none, marked `estimated`: the request's
/// input estimate, and the answer's text and tool calls (name, arguments) as output, at most
/// the request's `max_tokens` (a provider cannot have generated more; the byte bound of
/// models without a tokenizer would otherwise count more).
pub fn estimate_usage(request: &ChatRequest, content: &str, calls: &[(&str, &Value)]) -> Usage {
    let counter = Counter::for_model(&request.model);
    let calls: u64 = calls
        .iter()
        .map(|(name, args)| counter.count(name) + counter.count_json(args))
        .sum();
    Usage {
        input_tokens: estimate_input(request).tokens,
        output_tokens: (counter.count(content) + calls).min(u64::from(request.max_tokens)),
        estimated: true,
        ..Usage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::types::ChatRequest;
    use crate::llm::SharedJson;

    #[test]
    fn openai_models_use_tiktoken() {
        let req = ChatRequest::new("gpt-4o-mini").user("hello world");
        let e = estimate_input(&req);
        assert_eq!(e.method, EstimateMethod::Tiktoken);
        // "hello world" is 2 o200k tokens; + 4 framing + 3 priming
        assert_eq!(e.tokens, 9);
    }

    #[test]
    fn remembered_counts_equal_fresh_ones() {
        let long =
            "Ownership and borrowing make memory safety a compile-time property. ".repeat(20);
        let fresh = tiktoken_rs::o200k_base_singleton()
            .encode_ordinary(&long)
            .len() as u64;
        let req = ChatRequest::new("gpt-4o").user(long);
        assert_eq!(estimate_input(&req).tokens, fresh + 4 + 3);
        assert_eq!(estimate_input(&req).tokens, fresh + 4 + 3, "from the memo");
    }

    #[test]
    fn a_schema_counts_as_its_json_each_time_it_is_sent() {
        let schema =
            |n: usize| SharedJson::new(serde_json::json!({ "type": "object", "n": "x".repeat(n) }));
        let request = |schema: &SharedJson| {
            ChatRequest::new("claude-haiku-4-5").output_schema("plan", schema.clone(), false)
        };
        let (short, long) = (schema(10), schema(1_000));
        let bare = estimate_input(&ChatRequest::new("claude-haiku-4-5")).tokens;
        for (schema, len) in [(&short, 10), (&long, 1_000), (&short, 10), (&long, 1_000)] {
            let json = serde_json::to_string(&**schema).unwrap().len() as u64;
            let with = estimate_input(&request(schema)).tokens;
            assert_eq!(
                with,
                bare + 4 + json + 10 + TOOL_PROMPT_OVERHEAD,
                "len {len}"
            );
        }
        // An equal schema in another allocation is counted the same.
        assert_eq!(
            estimate_input(&request(&schema(1_000))).tokens,
            estimate_input(&request(&long)).tokens
        );
    }

    #[test]
    fn heuristic_counts_bytes() {
        assert_eq!(heuristic_tokens("abcdef"), 6);
        assert_eq!(heuristic_tokens("日本語"), 9, "9 bytes, 3 characters");
        assert_eq!(heuristic_tokens("é🦀"), 6);
        assert_eq!(heuristic_tokens(""), 0);
    }

    #[test]
    fn heuristic_is_above_every_tiktoken_count_even_for_adversarial_text() {
        // Text chosen to be dense in tokens: digits, rare symbols, mixed scripts, emoji.
        let texts = [
            "The quick brown fox jumps over the lazy dog. fn main() { println!(\"{}\", 1 + 2); }",
            "0x7f3a 9981 ~~^^ ||| \u{1f980}\u{1f980} ÆØÅ ЖЩЮ 日本語のテキスト 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
            &"q;z".repeat(300),
        ];
        let bpes = [
            tiktoken_rs::o200k_base_singleton(),
            tiktoken_rs::cl100k_base_singleton(),
            tiktoken_rs::r50k_base_singleton(),
        ];
        for text in texts {
            for bpe in bpes {
                let real = bpe.encode_ordinary(text).len() as u64;
                assert!(
                    heuristic_tokens(text) >= real,
                    "{text:?}: {} < {real}",
                    heuristic_tokens(text)
                );
            }
        }
        let req = ChatRequest::new("claude-haiku-4-5").user(texts[0]);
        assert_eq!(estimate_input(&req).method, EstimateMethod::Heuristic);
    }
}
