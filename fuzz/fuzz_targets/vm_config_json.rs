//! `vm.create` bodies: any bytes are refused with an error or become a config, never a panic;
//! a config written back as JSON and read again is the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::config::{vm_config_from_json, vm_config_to_json};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = vm_config_from_json(text) {
        let again = vm_config_from_json(&vm_config_to_json(&config))
            .expect("a config Keel wrote is one it reads");
        assert_eq!(again, config, "JSON round trip changed the config");
    }
});
