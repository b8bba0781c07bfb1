//! `reaper.toml`: any text gives a configuration or an error naming what is wrong, never a
//! panic; a configuration that parses has every number within its documented range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reaper_core::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_toml(text, "fuzz.toml") {
        assert!(config.daemon.shutdown_grace <= 3_600);
        assert!(config.rpc.worker_threads.get() <= 256);
        assert!(config.cache.max_size.get() <= 1_000_000);
        let _ = config.daemon.listen();
        let _ = config.not_yet_in_effect();
    }
});
