//! What every long-running role does with its process: logging, its state directory, token
//! and secret files, and the stop signal.

use std::path::{Path, PathBuf};

/// `~/.local/share/cocoon/<role>` (or `$XDG_DATA_HOME/cocoon/<role>`).
pub fn default_state_dir(role: &str) -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("cocoon")
        .join(role)
}

/// The state directory `configured`, or the role's default; created if missing.
pub fn state_dir(configured: &str, role: &str) -> Result<PathBuf, String> {
    let d = if configured.is_empty() {
        default_state_dir(role)
    } else {
        PathBuf::from(configured)
    };
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

/// Logs to stderr; `RUST_LOG` overrides `filter`.
pub fn init_logging(filter: &str) {
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on SIGINT or SIGTERM.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// Creates a secret file (mode 0600, 32 random bytes in hex) unless it exists.
pub fn ensure_token_file(path: &Path) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{}", hex::encode(bytes)).map_err(|e| format!("{}: {e}", path.display()))
}

/// The admin token file: `configured`, or `<state_dir>/admin-token`; created if missing.
pub fn admin_token_file(configured: &str, state_dir: &Path) -> Result<PathBuf, String> {
    let p = if configured.is_empty() {
        state_dir.join("admin-token")
    } else {
        PathBuf::from(configured)
    };
    ensure_token_file(&p)?;
    Ok(p)
}

/// Removes a ready file left by an earlier run (`ready_file`; empty: none), so that a reader
/// never takes an old run's addresses for this one's.
pub fn clear_ready_file(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("ready_file {path}: {e}")),
    }
}

/// Writes the ready file (`ready_file`; empty: none) once every listener is bound: a JSON
/// object from each listen setting's key to the address bound (`"127.0.0.1:40123"`, the
/// real port where the setting asked for port 0). Written to a temporary file beside it and
/// renamed, so a reader sees the whole object or nothing.
pub fn write_ready_file(path: &str, bound: &[(&str, std::net::SocketAddr)]) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    let map: serde_json::Map<String, serde_json::Value> = bound
        .iter()
        .map(|(k, a)| ((*k).to_owned(), serde_json::Value::String(a.to_string())))
        .collect();
    let text = serde_json::Value::Object(map).to_string();
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, text + "\n").map_err(|e| format!("ready_file {tmp}: {e}"))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("ready_file {path}: {e}"))
}

/// The first line of a secret file, trimmed; an empty one is an error.
pub fn read_first_line(path: &Path) -> Result<String, String> {
    let raw = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = raw.lines().next().unwrap_or("").trim().to_owned();
    if t.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_file_holds_the_bound_addresses_and_a_new_run_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ready.json");
        let ps = p.to_str().unwrap();
        // Nothing to clear yet; no path: nothing written.
        clear_ready_file(ps).unwrap();
        write_ready_file("", &[]).unwrap();
        let a: std::net::SocketAddr = "127.0.0.1:40123".parse().unwrap();
        let b: std::net::SocketAddr = "[::1]:9".parse().unwrap();
        write_ready_file(ps, &[("api_listen", a), ("admin_listen", b)]).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"api_listen": "127.0.0.1:40123", "admin_listen": "[::1]:9"})
        );
        assert!(!dir.path().join("ready.json.tmp").exists());
        clear_ready_file(ps).unwrap();
        assert!(!p.exists());
        // A directory in the way is named.
        std::fs::create_dir(&p).unwrap();
        assert!(clear_ready_file(ps).unwrap_err().starts_with("ready_file "));
    }

    #[test]
    fn token_files_are_created_once_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = admin_token_file("", dir.path()).unwrap();
        assert_eq!(p, dir.path().join("admin-token"));
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let t = read_first_line(&p).unwrap();
        assert_eq!(t.len(), 64);
        // Not replaced when it exists.
        admin_token_file("", dir.path()).unwrap();
        assert_eq!(read_first_line(&p).unwrap(), t);
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(read_first_line(&empty).unwrap_err().contains("is empty"));
    }
}
