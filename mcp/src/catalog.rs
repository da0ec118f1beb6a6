//! What a server's tool becomes in a registry: the name `<server>.<tool>`, its input schema,
//! and the impact and idempotency its annotations and the server's `approval` give it.

use impresario_agents::{Impact, ToolSpec};
use rmcp::model::{Tool, ToolAnnotations};
use serde_json::Value;

use crate::config::{Approval, ServerConfig};

/// A tool's impact and whether it is idempotent.
///
/// - `readOnlyHint` or `idempotentHint`: idempotent (retried once after a crash, repeated on
///   resume); anything else is not.
/// - With [`Approval::ByAnnotation`]: `readOnlyHint` is read-only, `destructiveHint` high
///   impact, anything else (no annotations included) a side effect.
/// - [`Approval::Always`] makes every tool high impact, [`Approval::Never`] read-only.
pub fn classify(annotations: Option<&ToolAnnotations>, approval: Approval) -> (Impact, bool) {
    let hint =
        |get: fn(&ToolAnnotations) -> Option<bool>| annotations.and_then(get).unwrap_or(false);
    let read_only = hint(|a| a.read_only_hint);
    let destructive = hint(|a| a.destructive_hint);
    let idempotent = read_only || hint(|a| a.idempotent_hint);
    let impact = match approval {
        Approval::Always => Impact::HighImpact,
        Approval::Never => Impact::ReadOnly,
        Approval::ByAnnotation if read_only => Impact::ReadOnly,
        Approval::ByAnnotation if destructive => Impact::HighImpact,
        Approval::ByAnnotation => Impact::SideEffect,
    };
    (impact, idempotent)
}

/// Whether runs may use this tool of the server (its `allow` list).
pub(crate) fn allowed(config: &ServerConfig, tool: &str) -> bool {
    config
        .allow
        .as_ref()
        .is_none_or(|allow| allow.iter().any(|a| a == tool))
}

/// The registry's view of a server's tool.
pub(crate) fn spec(config: &ServerConfig, tool: &Tool) -> ToolSpec {
    let (impact, idempotent) = classify(tool.annotations.as_ref(), config.approval);
    let description = tool
        .description
        .as_deref()
        .or(tool.title.as_deref())
        .unwrap_or("(the server gave no description)");
    ToolSpec {
        name: format!("{}.{}", config.name, tool.name),
        description: description.to_owned(),
        source: config.source(),
        impact,
        timeout: config.timeout,
        idempotent,
        schema: Value::Object((*tool.input_schema).clone()),
        tenants: config.allow_tenants.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(json: serde_json::Value) -> ToolAnnotations {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn annotations_map_onto_impact_and_idempotency() {
        use Approval::*;
        let read = annotations(serde_json::json!({"readOnlyHint": true}));
        let destroy = annotations(serde_json::json!({"destructiveHint": true}));
        let again = annotations(serde_json::json!({"idempotentHint": true}));
        let both =
            annotations(serde_json::json!({"destructiveHint": true, "idempotentHint": true}));
        assert_eq!(
            classify(Some(&read), ByAnnotation),
            (Impact::ReadOnly, true)
        );
        assert_eq!(
            classify(Some(&destroy), ByAnnotation),
            (Impact::HighImpact, false)
        );
        assert_eq!(
            classify(Some(&again), ByAnnotation),
            (Impact::SideEffect, true)
        );
        assert_eq!(
            classify(Some(&both), ByAnnotation),
            (Impact::HighImpact, true)
        );
        assert_eq!(classify(None, ByAnnotation), (Impact::SideEffect, false));
        assert_eq!(classify(Some(&read), Always), (Impact::HighImpact, true));
        assert_eq!(classify(Some(&destroy), Never), (Impact::ReadOnly, false));
    }
}
