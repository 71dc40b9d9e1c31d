//! What a checkpoint needs of the host that restores it, recorded in its
//! signed facts at dump time ([`HostNeeds`]) and compared with a host
//! before CRIU runs on a restore ([`compare`]; learning this host's facts is
//! `engine/host.rs`'s), so that a mismatch is refused with its name rather than
//! found by CRIU half-way, or by the program later (an instruction missing).
//!
//! What is compared, and why:
//!
//! - the architecture: images of one do not restore on another;
//! - CRIU's version: CRIU reads images of its own and older versions, so the
//!   restoring CRIU must be at least as new as the dumping one;
//! - the kernel's release (major.minor): the program used the kernel it ran
//!   on, so the restoring kernel must be at least as new;
//! - the CPU features CRIU itself checks (`criu/arch/x86/cpu.c`, when
//!   a dump carries its `cpuinfo.img`, which selfdump's do not): every
//!   instruction-set feature of its list the dumping CPU had (libraries pick
//!   code paths by them at start-up, so a missing one is an illegal
//!   instruction later), the FPU features, the xsave feature bits (a subset
//!   is enough) and the xsave frame sizes (equal: a program sizes its signal
//!   frames by them).

use serde::{Deserialize, Serialize};

/// What a checkpoint needs of the host that restores it (see the module
/// docs). Images made before it was recorded lack it and are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNeeds {
    /// The architecture (`x86_64`, `aarch64`, ...).
    pub arch: String,
    /// The dumping kernel's release (`uname -r`).
    pub kernel: String,
    /// The dumping CRIU's version (`4.1.1`; empty if unknown).
    pub criu: String,
    /// The CPU features CRIU checks that the dumping CPU had, by their
    /// `/proc/cpuinfo` names.
    pub cpu_flags: Vec<String>,
    /// The xsave feature bits (x86: CPUID 0xD; 0 elsewhere).
    pub xfeatures: u64,
    /// The xsave frame size for the enabled features.
    pub xsave_size: u32,
    /// The largest xsave frame size.
    pub xsave_size_max: u32,
}

/// The x86 features CRIU compares (its instruction list and its FPU bits),
/// by their `/proc/cpuinfo` names.
pub(crate) const CHECKED_X86: &[&str] = &[
    "fpu",
    "tsc",
    "cx8",
    "sep",
    "cmov",
    "clflush",
    "mmx",
    "fxsr",
    "sse",
    "sse2",
    "syscall",
    "mmxext",
    "rdtscp",
    "3dnowext",
    "3dnow",
    "rep_good",
    "nopl",
    "pni",
    "pclmulqdq",
    "monitor",
    "ssse3",
    "cx16",
    "sse4_1",
    "sse4_2",
    "movbe",
    "popcnt",
    "aes",
    "xsave",
    "avx",
    "f16c",
    "rdrand",
    "abm",
    "sse4a",
    "misalignsse",
    "3dnowprefetch",
    "xop",
    "fma4",
    "tbm",
    "fsgsbase",
    "bmi1",
    "hle",
    "avx2",
    "bmi2",
    "erms",
    "rtm",
    "mpx",
    "avx512f",
    "avx512dq",
    "rdseed",
    "adx",
    "clflushopt",
    "avx512pf",
    "avx512er",
    "avx512cd",
    "sha_ni",
    "avx512bw",
    "avx512vl",
    "xsaveopt",
    "xsavec",
    "xgetbv1",
    "avx512vbmi",
    "avx512_vbmi2",
    "gfni",
    "vaes",
    "vpclmulqdq",
    "avx512_vnni",
    "avx512_bitalg",
    "tme",
    "avx512_vpopcntdq",
    "rdpid",
    "clzero",
    "avx512_4vnniw",
    "avx512_4fmaps",
    "xsaves",
];

/// The leading numbers of a version (`6.18.0-1-amd64` → `[6, 18, 0, 1]`).
fn numbers(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .take_while(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// What `here` lacks of `needs`, if anything.
pub fn compare(needs: &HostNeeds, here: &HostNeeds) -> Result<(), String> {
    if needs.arch != here.arch {
        return Err(format!(
            "the checkpoint is of a {} host and this one is {}: restore it on a {} host",
            needs.arch, here.arch, needs.arch
        ));
    }
    let kernel = |v: &str| numbers(v).into_iter().take(2).collect::<Vec<_>>();
    if kernel(&here.kernel) < kernel(&needs.kernel) {
        return Err(format!(
            "this host runs kernel {}, older than the kernel {} the checkpoint was taken on: \
             restore it on a host with that kernel or a newer one",
            here.kernel, needs.kernel
        ));
    }
    if !needs.criu.is_empty() && numbers(&here.criu) < numbers(&needs.criu) {
        return Err(format!(
            "this host's CRIU is {}, older than the CRIU {} that took the checkpoint (CRIU \
             reads images of its own version and older ones): install CRIU {} or newer",
            if here.criu.is_empty() {
                "of unknown version"
            } else {
                &here.criu
            },
            needs.criu,
            needs.criu
        ));
    }
    let missing: Vec<&str> = needs
        .cpu_flags
        .iter()
        .filter(|f| !here.cpu_flags.contains(f))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "this host's CPU lacks {} which the checkpoint's CPU had (its program may use \
             them): restore it on a host whose CPU has them",
            missing.join(", ")
        ));
    }
    let bits = needs.xfeatures & !here.xfeatures;
    if bits != 0 {
        return Err(format!(
            "this host's CPU lacks xsave features {bits:#x} which the checkpoint's CPU had: \
             restore it on a host whose CPU has them"
        ));
    }
    if (needs.xsave_size, needs.xsave_size_max) != (here.xsave_size, here.xsave_size_max) {
        return Err(format!(
            "this host's CPU saves its register state in {} bytes (at most {}), the \
             checkpoint's in {} (at most {}); CRIU restores only between equal sizes: \
             restore it on a host with the same CPU features enabled",
            here.xsave_size, here.xsave_size_max, needs.xsave_size, needs.xsave_size_max
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here() -> HostNeeds {
        HostNeeds {
            arch: "x86_64".into(),
            kernel: "6.18.0-1-amd64".into(),
            criu: "4.1.1".into(),
            cpu_flags: vec!["avx".into(), "sse2".into()],
            xfeatures: 0x7,
            xsave_size: 832,
            xsave_size_max: 832,
        }
    }

    #[test]
    fn a_host_that_lacks_something_is_named() {
        let here = here();
        assert!(compare(&here, &here).is_ok());
        let with = |f: &dyn Fn(&mut HostNeeds)| {
            let mut needs = here.clone();
            f(&mut needs);
            compare(&needs, &here).unwrap_err()
        };
        assert!(with(&|n| n.arch = "riscv64".into()).contains("riscv64"));
        assert!(with(&|n| n.kernel = "99.1.0".into()).contains("kernel 99.1.0"));
        assert!(with(&|n| n.criu = "99.0".into()).contains("CRIU 99.0"));
        let e = with(&|n| n.cpu_flags.push("avx512_4fmaps_x".into()));
        assert!(e.contains("lacks avx512_4fmaps_x"), "{e}");
        assert!(with(&|n| n.xfeatures |= 1 << 62).contains("xsave features"));
        assert!(with(&|n| n.xsave_size += 64).contains("bytes"));
        let mut older = here.clone();
        older.kernel = "2.6.32".into();
        older.criu = "3.0".into();
        older.cpu_flags.clear();
        assert!(compare(&older, &here).is_ok(), "a newer host restores");
    }

    #[test]
    fn versions() {
        assert_eq!(numbers("6.18.0-1-amd64"), [6, 18, 0, 1]);
        assert_eq!(numbers("4.1.1"), [4, 1, 1]);
    }
}
