//! The operator's TOML: any text gives a configuration or errors naming keys, never a panic,
//! and an accepted configuration prints as TOML that loads to the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_sources(Some(text), Vec::new()) {
        let printed = config.to_toml();
        // Redacted secrets (REDACTED, a Redis password as ***) load as different secrets.
        if !printed.contains(switchboard::config::REDACTED) && !printed.contains("***") {
            let again = Config::from_sources(Some(&printed), Vec::new()).expect("reloads");
            assert_eq!(again, config);
        }
    }
});
