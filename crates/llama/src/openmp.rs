//! How llama.cpp's OpenMP threads wait.
//!
//! llama.cpp runs every operation of a decode on `threads` OpenMP threads with a barrier
//! between operations (hundreds per decode). How long a thread that reaches a barrier spins
//! before it sleeps decides the engine's speed, and no single choice of libgomp's suits both
//! kinds of machine (bench/README.md, "`cocoon-bench engine`", has the figures):
//! - libgomp's default spins for about 3 ms (300,000 spins). On a machine whose cores are
//!   shared (a build, the worker's own proxy sessions, the OS) the thread it waits for is
//!   often not running, and the spinner burns the slice that thread needed: beside a build,
//!   about 60 % of the engine's CPU time went to spinning inside libgomp, and generation
//!   fell to a fraction of a quiet machine's.
//! - `OMP_WAIT_POLICY=passive` sleeps at once. On a busy machine that is the fastest; on idle
//!   cores every barrier then costs a futex wake, and one request generated at 36 % of
//!   llama.cpp's speed.
//! - A short spin, `GOMP_SPINCOUNT=3000` (some tens of microseconds), is within a few percent
//!   of spinning on idle cores, where the other thread arrives that soon, and close to
//!   passive on busy ones, where it does not and the thread sleeps after a short while.
//!
//! libgomp reads its environment once, when it is loaded (before `main`), and the workspace
//! forbids the `unsafe` that `std::env::set_var` needs; so a binary that runs the engine
//! calls [`ensure_short_spin`] first, which starts the program again in place (`exec`, same
//! process id, arguments and open files) with `GOMP_SPINCOUNT` set. An operator's own
//! `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` is kept as it is.

use std::ffi::OsStr;

/// libgomp's wait policy (`active` or `passive`).
pub const WAIT_POLICY_VAR: &str = "OMP_WAIT_POLICY";

/// libgomp's spin count before a waiting thread sleeps (it wins over the policy).
pub const SPIN_COUNT_VAR: &str = "GOMP_SPINCOUNT";

/// What [`ensure_short_spin`] sets when neither variable is present.
pub const SHORT_SPIN: &str = "3000";

/// Whether the process must be started again to set the spin count: only when neither
/// variable is present (an empty or any other value is the operator's choice).
pub fn needs_spin_count(policy: Option<&OsStr>, spin_count: Option<&OsStr>) -> bool {
    policy.is_none() && spin_count.is_none()
}

/// Starts this program again with `GOMP_SPINCOUNT=3000` when neither `OMP_WAIT_POLICY` nor
/// `GOMP_SPINCOUNT` is set. Returns only when nothing had to be done or the `exec` failed (the
/// error is returned; the caller can go on with libgomp's default).
pub fn ensure_short_spin() -> std::io::Result<()> {
    let policy = std::env::var_os(WAIT_POLICY_VAR);
    let spin_count = std::env::var_os(SPIN_COUNT_VAR);
    if !needs_spin_count(policy.as_deref(), spin_count.as_deref()) {
        return Ok(());
    }
    reexec_with(SPIN_COUNT_VAR, SHORT_SPIN)
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
    fn only_when_neither_variable_is_present() {
        let v = |s| Some(OsStr::new(s));
        assert!(needs_spin_count(None, None));
        assert!(!needs_spin_count(v("passive"), None));
        assert!(!needs_spin_count(v("active"), None));
        assert!(!needs_spin_count(v(""), None));
        assert!(!needs_spin_count(None, v("300000")));
        assert!(!needs_spin_count(None, v("")));
    }
}
