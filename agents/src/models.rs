//! Which model does what: each role of a run (planner, executor, summarizer) asks for a
//! [`Tier`], and the run's [`ModelMap`] names the model of each tier and its fallback chain.
//! This is the one way a run chooses a model; the service fills it from `[models]`.

use impresario_runtime::llm::Tier;
use serde::{Deserialize, Deserializer, Serialize};

/// A part of a run that calls models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Plans and replans.
    Planner,
    /// Answers `model_call` steps.
    Executor,
    /// Summarizes old steps when the context budget is exceeded.
    Summarizer,
}

/// A model, and the models to try after it, in order, when it fails in a way another model
/// could avoid (overloaded, rate limited, down, context too long).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelChoice {
    /// Tried first (a name known to the LLM client's price table).
    pub model: String,
    /// Tried next, in order.
    #[serde(default)]
    pub fallbacks: Vec<String>,
}

impl ModelChoice {
    /// `model` with no fallbacks.
    pub fn new(model: impl Into<String>) -> Self {
        ModelChoice {
            model: model.into(),
            fallbacks: Vec::new(),
        }
    }

    /// With these fallbacks, in order.
    pub fn fallbacks<S: Into<String>>(mut self, models: impl IntoIterator<Item = S>) -> Self {
        self.fallbacks = models.into_iter().map(Into::into).collect();
        self
    }

    /// The model, then its fallbacks.
    pub fn chain(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.model.as_str()).chain(self.fallbacks.iter().map(String::as_str))
    }
}

/// The tier each role asks for. Default: the planner heavy, the executor standard, the
/// summarizer light.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleTiers {
    /// The planner's tier.
    pub planner: Tier,
    /// The executor's tier (`model_call` steps).
    pub executor: Tier,
    /// The summarizer's tier.
    pub summarizer: Tier,
}

impl Default for RoleTiers {
    fn default() -> Self {
        RoleTiers {
            planner: Tier::Heavy,
            executor: Tier::Standard,
            summarizer: Tier::Light,
        }
    }
}

/// Which models a run uses: a [`ModelChoice`] per tier, and the tier of each role.
///
/// As configuration (TOML): `light = { model = "gpt-5-nano", fallbacks = ["claude-haiku-4-5"] }`,
/// the same for `standard` and `heavy`, and optionally `roles = { planner = "heavy", ... }`.
/// Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMap {
    /// Cheap work (by default: summaries).
    pub light: ModelChoice,
    /// Ordinary work (by default: `model_call` steps).
    pub standard: ModelChoice,
    /// Demanding work (by default: planning).
    pub heavy: ModelChoice,
    /// The tier each role asks for.
    #[serde(default)]
    pub roles: RoleTiers,
}

impl ModelMap {
    /// One model for every tier, no fallbacks.
    pub fn all(model: impl Into<String>) -> Self {
        let choice = ModelChoice::new(model);
        ModelMap {
            light: choice.clone(),
            standard: choice.clone(),
            heavy: choice,
            roles: RoleTiers::default(),
        }
    }

    /// With `choice` for `tier`.
    pub fn tier(mut self, tier: Tier, choice: ModelChoice) -> Self {
        *self.slot(tier) = choice;
        self
    }

    /// With `role` asking for `tier`.
    pub fn role(mut self, role: Role, tier: Tier) -> Self {
        let roles = &mut self.roles;
        match role {
            Role::Planner => roles.planner = tier,
            Role::Executor => roles.executor = tier,
            Role::Summarizer => roles.summarizer = tier,
        }
        self
    }

    /// The tier `role` asks for.
    pub fn tier_of(&self, role: Role) -> Tier {
        match role {
            Role::Planner => self.roles.planner,
            Role::Executor => self.roles.executor,
            Role::Summarizer => self.roles.summarizer,
        }
    }

    /// The model (and fallbacks) serving `tier`.
    pub fn of_tier(&self, tier: Tier) -> &ModelChoice {
        match tier {
            Tier::Light => &self.light,
            Tier::Standard => &self.standard,
            Tier::Heavy => &self.heavy,
        }
    }

    /// The model (and fallbacks) `role` uses.
    pub fn choice(&self, role: Role) -> &ModelChoice {
        self.of_tier(self.tier_of(role))
    }

    /// Every model named, with where: `("heavy.fallbacks[0]", "gpt-5-mini")`.
    pub fn named(&self) -> Vec<(String, &str)> {
        let mut named = Vec::new();
        for (tier, choice) in [
            ("light", &self.light),
            ("standard", &self.standard),
            ("heavy", &self.heavy),
        ] {
            named.push((format!("{tier}.model"), choice.model.as_str()));
            for (i, model) in choice.fallbacks.iter().enumerate() {
                named.push((format!("{tier}.fallbacks[{i}]"), model.as_str()));
            }
        }
        named
    }

    fn slot(&mut self, tier: Tier) -> &mut ModelChoice {
        match tier {
            Tier::Light => &mut self.light,
            Tier::Standard => &mut self.standard,
            Tier::Heavy => &mut self.heavy,
        }
    }
}

/// Reads a run request's models as journaled now (a [`ModelMap`]) or by journals written before
/// tiers (`{"planner", "executor", "summarizer"}`: each role's model becomes its default tier's).
pub(crate) fn read_journaled<'de, D: Deserializer<'de>>(from: D) -> Result<ModelMap, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Journaled {
        Map(ModelMap),
        PerRole {
            planner: String,
            executor: String,
            summarizer: String,
        },
    }
    Ok(match Journaled::deserialize(from)? {
        Journaled::Map(map) => map,
        Journaled::PerRole {
            planner,
            executor,
            summarizer,
        } => ModelMap {
            light: ModelChoice::new(summarizer),
            standard: ModelChoice::new(executor),
            heavy: ModelChoice::new(planner),
            roles: RoleTiers::default(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_ask_tiers_and_tiers_name_models() {
        let map = ModelMap::all("mid")
            .tier(Tier::Heavy, ModelChoice::new("big").fallbacks(["mid"]))
            .tier(Tier::Light, ModelChoice::new("small"));
        assert_eq!(map.choice(Role::Planner).model, "big");
        assert_eq!(map.choice(Role::Executor).model, "mid");
        assert_eq!(map.choice(Role::Summarizer).model, "small");
        let moved = map.clone().role(Role::Executor, Tier::Light);
        assert_eq!(moved.choice(Role::Executor).model, "small");
        let chain: Vec<&str> = map.choice(Role::Planner).chain().collect();
        assert_eq!(chain, ["big", "mid"]);
        assert!(map
            .named()
            .contains(&("heavy.fallbacks[0]".to_owned(), "mid")));
    }

    #[test]
    fn config_is_strict_and_old_journals_still_read() {
        let toml_like = serde_json::json!({
            "light": {"model": "s"}, "standard": {"model": "m"},
            "heavy": {"model": "l", "fallbacks": ["m"]}, "roles": {"executor": "light"}
        });
        let map: ModelMap = serde_json::from_value(toml_like).unwrap();
        assert_eq!(map.choice(Role::Executor).model, "s");
        assert_eq!(map.choice(Role::Planner).fallbacks, ["m"]);
        let typo = serde_json::json!({"light": {"model": "s", "fallback": []}});
        let err = serde_json::from_value::<ModelMap>(typo).unwrap_err();
        assert!(err.to_string().contains("fallback"), "{err}");

        let old = serde_json::json!({"planner": "p", "executor": "e", "summarizer": "s"});
        let read = read_journaled(old).unwrap();
        assert_eq!(
            [Role::Planner, Role::Executor, Role::Summarizer].map(|r| read.choice(r).model.clone()),
            ["p", "e", "s"]
        );
    }
}
