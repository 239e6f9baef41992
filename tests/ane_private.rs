//! The private-API device where the framework is absent: a clean "unavailable" with the
//! reason, from the library and from `anetrain info`. (On a Mac these tests are skipped: the
//! real device is not exercised by this test suite.)

#[cfg(not(target_os = "macos"))]
#[test]
fn unavailable_without_the_framework() {
    let why = anetrain::ane::availability().unwrap_err();
    assert!(
        why.contains("AppleNeuralEngine")
            && why.contains("only on macOS")
            && why.contains("ane-sim"),
        "{why}"
    );
    let e = anetrain::ane::private::PrivateDevice::new().err().unwrap();
    assert!(
        format!("{e:#}").starts_with("Neural Engine unavailable: cannot load"),
        "{e:#}"
    );

    let o = std::process::Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args(["info", "--model", "stories260k"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("ane "))
        .unwrap();
    assert!(line.contains("unavailable: cannot load"), "{line}");
}
