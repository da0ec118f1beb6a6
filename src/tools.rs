//! A small default tool set, shared by the examples and the `impresario` binary: a notes store
//! that runs can search ([`SearchNotes`]) and add to ([`SaveNote`], a side effect that needs
//! approval under `Autonomy::Manual`), and a [`Calculator`].
//!
//! ```
//! # fn demo() -> Result<(), impresario::agents::RegistryError> {
//! use impresario::tools::{Calculator, Notes, SearchNotes};
//!
//! let notes = Notes::builtin();
//! let mut tools = impresario::agents::ToolRegistry::new();
//! tools.register(SearchNotes::new(notes))?.register(Calculator)?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use impresario_agents::{Impact, RegistryError, Tool, ToolContext, ToolRegistry};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

/// The names of the tools [`registry`] holds.
pub const NAMES: [&str; 3] = ["search_notes", "save_note", "calculator"];

/// What [`Notes::builtin`] starts with: facts about the runtime.
const BUILTIN_NOTES: &[&str] = &[
    "Supervisors restart failed agents. By default a supervisor allows 3 restarts within 5 seconds; one more and it escalates to its parent.",
    "A halt reaches an agent without going through its mailbox, so a long handler cannot delay it.",
    "Every paid model call reserves its worst-case cost on the run, tenant and global accounts before it is sent.",
];

/// Query words shorter than this are ignored by the search ("a", "is", "the", ...).
const MIN_WORD: usize = 4;

/// A store of short notes in memory, kept apart per tenant: a tenant searches the built-in
/// notes and its own, never another tenant's. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct Notes {
    shared: Arc<[String]>,
    saved: Arc<RwLock<HashMap<String, Vec<String>>>>,
}

impl Notes {
    /// A store whose every tenant starts with a few notes about the Impresario runtime.
    pub fn builtin() -> Self {
        Notes {
            shared: BUILTIN_NOTES.iter().map(|n| (*n).to_owned()).collect(),
            saved: Arc::default(),
        }
    }

    /// Adds a note of `tenant`'s; returns how many notes that tenant has now.
    pub fn add(&self, tenant: &str, note: impl Into<String>) -> usize {
        let mut saved = self.saved.write().unwrap_or_else(|p| p.into_inner());
        let notes = saved.entry(tenant.to_owned()).or_default();
        notes.push(note.into());
        self.shared.len() + notes.len()
    }

    /// The note of `tenant`'s sharing the most words with `query` (a query word matches a note
    /// word it is a prefix of, so `supervisor` finds `supervisors`), if any shares one.
    pub fn search(&self, tenant: &str, query: &str) -> Option<String> {
        let wanted: Vec<String> = words(query).filter(|w| w.len() >= MIN_WORD).collect();
        let saved = self.saved.read().unwrap_or_else(|p| p.into_inner());
        let own = saved.get(tenant).map(Vec::as_slice).unwrap_or_default();
        let score = |note: &str| {
            let have: Vec<String> = words(note).collect();
            wanted
                .iter()
                .filter(|w| have.iter().any(|h| h.starts_with(w.as_str())))
                .count()
        };
        // The first of equally good notes: `max_by_key` would pick the last.
        let mut best: Option<(usize, &String)> = None;
        for note in self.shared.iter().chain(own) {
            let s = score(note);
            if s > 0 && best.is_none_or(|(b, _)| s > b) {
                best = Some((s, note));
            }
        }
        best.map(|(_, note)| note.clone())
    }
}

/// Lower-case alphanumeric words.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// The arguments of [`SearchNotes`].
#[derive(Deserialize, JsonSchema)]
pub struct SearchArgs {
    /// Words to look for.
    pub query: String,
}

/// `search_notes`: finds the note sharing the most words with the query (read-only).
pub struct SearchNotes(Notes);

impl SearchNotes {
    /// Searches `notes`.
    pub fn new(notes: Notes) -> Self {
        SearchNotes(notes)
    }
}

impl Tool for SearchNotes {
    type Args = SearchArgs;
    fn name(&self) -> &str {
        "search_notes"
    }
    fn description(&self) -> &str {
        "Searches the notes (about the Impresario runtime, and what this tenant's runs saved); returns the best matching note."
    }
    async fn call(&self, args: SearchArgs, context: ToolContext) -> Result<Value, String> {
        self.0
            .search(&context.tenant, &args.query)
            .map(|note| json!(note))
            .ok_or_else(|| {
                format!(
                    "no note shares a word of {MIN_WORD} or more letters with {:?}",
                    args.query
                )
            })
    }
}

/// The arguments of [`SaveNote`].
#[derive(Deserialize, JsonSchema)]
pub struct SaveArgs {
    /// The note to keep.
    pub text: String,
}

/// `save_note`: adds a note to the store (a side effect: under `Autonomy::Manual` it waits for
/// an operator's approval).
pub struct SaveNote(Notes);

impl SaveNote {
    /// Saves into `notes`.
    pub fn new(notes: Notes) -> Self {
        SaveNote(notes)
    }
}

impl Tool for SaveNote {
    type Args = SaveArgs;
    fn name(&self) -> &str {
        "save_note"
    }
    fn description(&self) -> &str {
        "Saves a short note so later searches find it."
    }
    fn impact(&self) -> Impact {
        Impact::SideEffect
    }
    async fn call(&self, args: SaveArgs, context: ToolContext) -> Result<Value, String> {
        if args.text.trim().is_empty() {
            return Err("the note is empty; give it some text".into());
        }
        let count = self.0.add(&context.tenant, args.text);
        Ok(json!(format!("saved (note {count})")))
    }
}

/// The arguments of [`Calculator`].
#[derive(Deserialize, JsonSchema)]
pub struct CalcArgs {
    /// One of add, sub, mul, div.
    pub op: String,
    /// The left operand.
    pub a: f64,
    /// The right operand.
    pub b: f64,
}

/// `calculator`: one arithmetic operation (read-only).
pub struct Calculator;

impl Tool for Calculator {
    type Args = CalcArgs;
    fn name(&self) -> &str {
        "calculator"
    }
    fn description(&self) -> &str {
        "Computes a op b for op in add, sub, mul, div."
    }
    async fn call(&self, args: CalcArgs, _: ToolContext) -> Result<Value, String> {
        let value = match args.op.as_str() {
            "add" => args.a + args.b,
            "sub" => args.a - args.b,
            "mul" => args.a * args.b,
            "div" if args.b != 0.0 => args.a / args.b,
            "div" => return Err("division by zero".into()),
            other => return Err(format!("unknown op {other:?}; use add, sub, mul or div")),
        };
        Ok(json!(value))
    }
}

/// A registry with every tool of this module ([`NAMES`]), over one store that starts with
/// [`Notes::builtin`].
pub fn registry() -> Result<ToolRegistry, RegistryError> {
    let notes = Notes::builtin();
    let mut tools = ToolRegistry::new();
    tools
        .register(SearchNotes::new(notes.clone()))?
        .register(SaveNote::new(notes))?
        .register(Calculator)?;
    Ok(tools)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_matches_whole_words_and_prefixes_and_skips_short_words() {
        let notes = Notes::builtin();
        let found = notes.search(
            "a",
            "What is the default restart intensity of a supervisor?",
        );
        assert!(found.unwrap().contains("3 restarts within 5 seconds"));
        // Only short words in common with every note: nothing.
        assert_eq!(notes.search("a", "is a the of"), None);
        assert_eq!(notes.search("a", "Lisbon trip"), None);
        notes.add("a", "Lisbon has trams.");
        assert_eq!(
            notes.search("a", "Lisbon trip").as_deref(),
            Some("Lisbon has trams.")
        );
    }

    #[test]
    fn a_tenant_finds_its_own_notes_and_the_builtin_ones_never_another_tenants() {
        let notes = Notes::builtin();
        assert_eq!(notes.add("a", "The vault code is 7731."), 4);
        assert_eq!(notes.search("b", "vault code"), None);
        assert_eq!(
            notes.search("a", "vault code").as_deref(),
            Some("The vault code is 7731.")
        );
        assert!(notes.search("b", "supervisor restarts").is_some());
    }

    #[test]
    fn the_registry_holds_every_named_tool() {
        let tools = registry().unwrap();
        let mut expected: Vec<String> = NAMES.iter().map(|n| (*n).to_owned()).collect();
        expected.sort_unstable();
        assert_eq!(tools.names(), expected);
    }
}
