//! What the provider test binaries share.

use std::sync::Arc;

use reaper_core::config::Config;
use reaper_providers::Provider;

/// The provider a `[providers.test]` table describes, with `env` as its environment.
pub fn provider(table: &str, env: &[(&str, &str)]) -> Arc<dyn Provider> {
    let config = Config::from_toml(&format!("[providers.test]\n{table}"), "test").unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    reaper_providers::kinds::build("test", &config.providers.remote[0].settings, &lookup).unwrap()
}
