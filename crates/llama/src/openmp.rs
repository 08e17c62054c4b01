//! How llama.cpp's OpenMP threads wait.
//!
//! llama.cpp runs every operation of a decode on `threads` OpenMP threads with a barrier
//! between operations (hundreds per decode). libgomp's default lets a thread that reaches a
//! barrier spin for a long while before it sleeps. On a machine whose cores are shared (a
//! build, the worker's own proxy sessions, the OS), the thread it waits for is often not
//! running, and the spinning thread burns the slice that thread needed: `perf` of an 8-request
//! run beside a build showed about 60 % of the engine's CPU time spinning inside libgomp, for
//! the embedded engine and for `llama-batched-bench` alike. With `OMP_WAIT_POLICY=passive` a
//! waiting thread sleeps at once and gives the core back (bench/README.md has the figures).
//!
//! libgomp reads its environment once, when it is loaded (before `main`), and the workspace
//! forbids the `unsafe` that `std::env::set_var` needs; so a binary that runs the engine
//! calls [`ensure_passive_wait`] first, which starts the program again in place (`exec`, same
//! process id, arguments and open files) with the variable set. An operator's own
//! `OMP_WAIT_POLICY` is kept as it is.

use std::ffi::OsStr;

/// The variable libgomp reads.
pub const WAIT_POLICY_VAR: &str = "OMP_WAIT_POLICY";

/// What [`ensure_passive_wait`] sets when the variable is absent.
pub const PASSIVE: &str = "passive";

/// Whether the process must be started again to set the wait policy: only when the variable
/// is absent (an empty or any other value is the operator's choice).
pub fn needs_wait_policy(current: Option<&OsStr>) -> bool {
    current.is_none()
}

/// Starts this program again with `OMP_WAIT_POLICY=passive` when the variable is not set.
/// Returns only when nothing had to be done or the `exec` failed (the error is returned; the
/// caller can go on with libgomp's default).
pub fn ensure_passive_wait() -> std::io::Result<()> {
    if !needs_wait_policy(std::env::var_os(WAIT_POLICY_VAR).as_deref()) {
        return Ok(());
    }
    reexec_with(WAIT_POLICY_VAR, PASSIVE)
}

#[cfg(unix)]
fn reexec_with(var: &str, value: &str) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    // `exec` only returns on failure.
    Err(std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env(var, value)
        .exec())
}

#[cfg(not(unix))]
fn reexec_with(_var: &str, _value: &str) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_absent_variable_is_set() {
        assert!(needs_wait_policy(None));
        assert!(!needs_wait_policy(Some(OsStr::new("passive"))));
        assert!(!needs_wait_policy(Some(OsStr::new("active"))));
        assert!(!needs_wait_policy(Some(OsStr::new(""))));
    }
}
