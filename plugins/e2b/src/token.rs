//! The sandbox `token` the host persists: envd's access token and the sandbox's domain, as
//! compact JSON. A sandbox attached without one gets it from `GET /sandboxes/{id}`.

use serde::{Deserialize, Serialize};

/// What a sandbox-scoped call needs to reach envd.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Token {
    /// `envdAccessToken`, sent as `X-Access-Token`.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    /// `trafficAccessToken`, sent to exposed ports of a secured sandbox.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<String>,
    /// The sandbox's domain when the API gave one.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl Token {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
    pub fn decode(s: &str) -> Option<Token> {
        serde_json::from_str(s).ok()
    }
}
