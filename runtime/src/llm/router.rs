//! Model tiers: callers ask for `Light`, `Standard` or `Heavy` work, configuration decides
//! which models do it, so cheap work goes to cheap models.

use serde::{Deserialize, Serialize};

/// How demanding a piece of work is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Classification, extraction, short summaries: the cheapest adequate model.
    Light,
    /// Ordinary agent steps.
    Standard,
    /// Planning, hard reasoning: the strongest model.
    Heavy,
}

/// Which models serve each tier: the first model of a tier's list is tried first, the rest
/// are its fallback chain, in order.
///
/// Deserializes from config as `{ light = ["gpt-5-nano", "claude-haiku-4-5"], ... }`; unknown
/// keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Router {
    /// Models for [`Tier::Light`].
    #[serde(default)]
    pub light: Vec<String>,
    /// Models for [`Tier::Standard`].
    #[serde(default)]
    pub standard: Vec<String>,
    /// Models for [`Tier::Heavy`].
    #[serde(default)]
    pub heavy: Vec<String>,
}

impl Router {
    /// Sets the models of `tier`, primary first.
    pub fn with<S: Into<String>>(
        mut self,
        tier: Tier,
        models: impl IntoIterator<Item = S>,
    ) -> Self {
        *self.slot(tier) = models.into_iter().map(Into::into).collect();
        self
    }

    /// The models of `tier`, primary first (empty when not configured).
    pub fn models(&self, tier: Tier) -> &[String] {
        match tier {
            Tier::Light => &self.light,
            Tier::Standard => &self.standard,
            Tier::Heavy => &self.heavy,
        }
    }

    /// Every model named by any tier.
    pub fn all_models(&self) -> impl Iterator<Item = &str> {
        self.light
            .iter()
            .chain(&self.standard)
            .chain(&self.heavy)
            .map(String::as_str)
    }

    fn slot(&mut self, tier: Tier) -> &mut Vec<String> {
        match tier {
            Tier::Light => &mut self.light,
            Tier::Standard => &mut self.standard,
            Tier::Heavy => &mut self.heavy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_map_to_model_chains_and_config_is_strict() {
        let r = Router::default().with(Tier::Light, ["a", "b"]);
        assert_eq!(r.models(Tier::Light), ["a", "b"]);
        assert!(r.models(Tier::Heavy).is_empty());
        let parsed: Router = serde_json::from_str(r#"{"light": ["a", "b"]}"#).unwrap();
        assert_eq!(parsed, r);
        let err = serde_json::from_str::<Router>(r#"{"lite": ["a"]}"#).unwrap_err();
        assert!(err.to_string().contains("lite"), "{err}");
    }
}
