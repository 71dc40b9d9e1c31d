//! Every input the fuzz targets start from (`fuzz/seeds/<target>/`) and
//! every input a fuzzer once crashed on (`fuzz/regressions/<target>/`)
//! goes through its target's check (`fuzz/checks.rs`) on each `cargo
//! test`, so a crash found once stays fixed. (`scripts/fuzz.sh` fuzzes.)

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

#[test]
fn every_seed_and_every_input_that_once_crashed_passes_its_check() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failed = Vec::new();
    for (target, check) in checks::TARGETS {
        let mut seeds = 0;
        for kind in ["seeds", "regressions"] {
            let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
                continue;
            };
            for input in dir.flatten() {
                let bytes = std::fs::read(input.path()).unwrap();
                let checked = std::panic::catch_unwind(|| check(&bytes));
                if checked.is_err() {
                    failed.push(input.path().display().to_string());
                }
                seeds += usize::from(kind == "seeds");
            }
        }
        assert!(seeds > 0, "no seeds for {target} in fuzz/seeds/{target}/");
    }
    checks::remove_scratch_dir();
    assert!(
        failed.is_empty(),
        "inputs that fail their check: {failed:#?}"
    );
}
