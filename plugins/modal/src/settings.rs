//! Settings: the environment name and the preflight rules of the seed (token present,
//! environment set, not `prod` unless allowed).

use super::*;

pub(crate) fn environment() -> Result<String> {
    kit::require_setting("environment")
}

pub(crate) fn app_name() -> String {
    kit::setting("app-name")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "sandbox-host".into())
}

pub(crate) fn truthy(v: Option<String>) -> bool {
    matches!(v.as_deref().map(str::trim), Some("1" | "true" | "yes"))
}

/// The seed's rule: an environment must be set, and not `prod` unless explicitly allowed.
pub(crate) fn environment_checks() -> Vec<Check> {
    let env = kit::setting("environment").filter(|s| !s.trim().is_empty());
    let mut checks = vec![kit::check(
        "environment",
        env.is_some(),
        match &env {
            Some(e) => format!("environment {e:?}"),
            None => {
                "no Modal environment configured (setting `environment`, MODAL_ENVIRONMENT)".into()
            }
        },
    )];
    if let Some(e) = env {
        let prod =
            e.trim().eq_ignore_ascii_case("prod") || e.trim().eq_ignore_ascii_case("production");
        let allowed = truthy(kit::setting("allow-prod"));
        checks.push(kit::check(
            "not-prod",
            !prod || allowed,
            if prod && !allowed {
                "environment is `prod`: refused unless the setting `allow-prod` is true".to_string()
            } else {
                "ok".to_string()
            },
        ));
    }
    checks
}

/// Refuses (before any network call) when the environment checks fail.
pub(crate) fn require_environment() -> Result<String> {
    if let Some(bad) = environment_checks().into_iter().find(|c| !c.ok) {
        return Err(kit::invalid_argument(bad.detail));
    }
    environment()
}
