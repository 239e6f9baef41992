#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| anetrain_fuzz::dashboard(data));
