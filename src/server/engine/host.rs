//! This host's facts, as a checkpoint records what it needs of the host
//! that restores it ([`HostNeeds`]: the architecture, the kernel, the CPU
//! features CRIU checks, and CRIU's version, which `criu --version` tells,
//! run through `engine::output` like every child of the service),
//! and the check of a checkpoint's needs against them.

use super::versions;
use crate::procfs::PROC;
use crate::server::images::host_needs::{CHECKED_X86, HostNeeds, compare};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// This host's facts, with the version of the CRIU at `criu`.
pub fn this_host(criu: &Path) -> HostNeeds {
    HostNeeds {
        criu: criu_version(criu).unwrap_or_default(),
        ..this_host_without_criu()
    }
}

/// This host's facts but CRIU's version (read once).
fn this_host_without_criu() -> HostNeeds {
    static FIXED: OnceLock<HostNeeds> = OnceLock::new();
    FIXED
        .get_or_init(|| {
            let (xfeatures, xsave_size, xsave_size_max) = xsave();
            HostNeeds {
                arch: std::env::consts::ARCH.to_owned(),
                kernel: rustix::system::uname()
                    .release()
                    .to_string_lossy()
                    .into_owned(),
                criu: String::new(),
                cpu_flags: cpu_flags(),
                xfeatures,
                xsave_size,
                xsave_size_max,
            }
        })
        .clone()
}

/// The features of the first CPU in `/proc/cpuinfo` (x86's `flags`, or
/// `Features` elsewhere), those CRIU checks on x86, sorted.
fn cpu_flags() -> Vec<String> {
    let info = PROC.read_file("cpuinfo").unwrap_or_default();
    let line = info
        .lines()
        .find(|l| l.starts_with("flags") || l.starts_with("Features"))
        .and_then(|l| l.split_once(':'))
        .map_or("", |(_, v)| v);
    let x86 = cfg!(any(target_arch = "x86_64", target_arch = "x86"));
    let mut flags: Vec<String> = line
        .split_whitespace()
        .filter(|f| !x86 || CHECKED_X86.contains(f))
        .map(str::to_owned)
        .collect();
    flags.sort();
    flags.dedup();
    flags
}

/// The xsave feature bits and frame sizes (CPUID leaf 0xD), as CRIU's
/// compel reads them.
#[cfg(target_arch = "x86_64")]
fn xsave() -> (u64, u32, u32) {
    // CPUID leaf 0xD exists whenever xsave does
    if !std::is_x86_feature_detected!("xsave") {
        return (0, 0, 0);
    }
    // `__cpuid_count` is safe since Rust 1.87; older compilers need the block
    #[allow(unused_unsafe)]
    let r = unsafe { core::arch::x86_64::__cpuid_count(0xd, 0) };
    (u64::from(r.eax) | (u64::from(r.edx) << 32), r.ebx, r.ecx)
}

#[cfg(not(target_arch = "x86_64"))]
fn xsave() -> (u64, u32, u32) {
    (0, 0, 0)
}

/// `criu --version`'s number (`4.1.1`), remembered per binary (path,
/// device, inode, size, modification and change times): in this process,
/// so a dump does not run CRIU once more to learn it, and for root in a
/// file of the service's directory (`versions.rs`), so a `selfdump
/// restore` does not either.
pub(crate) fn criu_version(criu: &Path) -> Option<String> {
    type Known = (String, String);
    static KNOWN: Mutex<Vec<Known>> = Mutex::new(Vec::new());
    let criu = &on_path(criu);
    let stat = rustix::fs::stat(criu).ok()?;
    let key = versions::key(criu, &stat);
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(key) = &key
        && let Some((_, v)) = known.iter().find(|(k, _)| k == key)
    {
        return Some(v.clone());
    }
    let version = match key.as_deref().and_then(versions::recall) {
        Some(version) => version,
        None => {
            let version = ask_version(criu)?;
            if let Some(key) = &key {
                versions::remember(key, &version);
            }
            version
        }
    };
    if let Some(key) = key {
        if known.len() >= 8 {
            known.remove(0);
        }
        known.push((key, version.clone()));
    }
    Some(version)
}

/// What `criu --version` says its version is.
fn ask_version(criu: &Path) -> Option<String> {
    let out = super::output(super::criu::command_at(criu).arg("--version")).ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Version:"))?
            .trim()
            .to_owned(),
    )
}

/// `criu` as `Command` runs it: a bare name (the default `criu`) is looked
/// up on `PATH`.
fn on_path(criu: &Path) -> std::path::PathBuf {
    if criu.components().count() != 1 || criu.is_absolute() {
        return criu.to_path_buf();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(criu))
        .find(|p| p.is_file())
        .unwrap_or_else(|| criu.to_path_buf())
}

/// Checks the facts of a checkpoint against this host: its architecture,
/// kernel and CPU, and with `criu`, the version of the CRIU there (which
/// runs `criu --version` once per binary). The first thing it lacks,
/// named, with what to do.
pub fn check(needs: Option<&HostNeeds>, criu: Option<&Path>) -> Result<(), String> {
    let Some(needs) = needs else { return Ok(()) };
    let here = match criu {
        Some(criu) => this_host(criu),
        // the CRIU version is not compared: it is the one recorded
        None => HostNeeds {
            criu: needs.criu.clone(),
            ..this_host_without_criu()
        },
    };
    compare(needs, &here)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_meets_its_own_needs_and_names_what_it_lacks() {
        let here = HostNeeds {
            criu: "4.1.1".into(),
            ..this_host(Path::new("/nonexistent/criu"))
        };
        assert_eq!(here.arch, std::env::consts::ARCH);
        assert!(!here.kernel.is_empty());
        assert!(check(Some(&here), None).is_ok());
        assert!(check(None, None).is_ok(), "old images are not checked");
        let mut more = here.clone();
        more.cpu_flags.push("avx512_4fmaps_x".into());
        let e = check(Some(&more), None).unwrap_err();
        assert!(e.contains("lacks avx512_4fmaps_x"), "{e}");
        let mut newer_criu = here;
        newer_criu.criu = "99.0".into();
        let e = check(Some(&newer_criu), Some(Path::new("/nonexistent/criu"))).unwrap_err();
        assert!(
            e.contains("CRIU 99.0") && e.contains("unknown version"),
            "{e}"
        );
    }
}
