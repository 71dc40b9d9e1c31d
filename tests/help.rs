//! `selfdump --help`, `selfdump help COMMAND` and `selfdump COMMAND --help`
//! describe every command.

use std::process::Command;

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_selfdump"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "selfdump {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_command_has_its_help() {
    let overview = run(&["--help"]);
    for command in ["serve", "restore", "check"] {
        assert!(
            overview.contains(&format!("selfdump {command} ")),
            "{overview}"
        );
        let help = run(&["help", command]);
        assert!(help.starts_with(&format!("selfdump {command}: ")), "{help}");
        assert_eq!(run(&[command, "--help"]), help);
        assert_eq!(run(&[command, "-h"]), help);
    }
    assert!(run(&["help", "restore"]).contains("--wait SECS"));
    assert!(run(&["help", "check"]).contains("--pid"));
    assert!(run(&["help", "serve"]).contains("LISTEN_FDS"));
}
