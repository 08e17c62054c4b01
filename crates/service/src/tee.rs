//! Which TEE this machine offers, decided once for every command (`cocoon attest show` and the
//! roles' `tee = "auto"`).
//!
//! Our evidence sources read reports through configfs-tsm, so a TEE counts only when its
//! directory exists; which TEE it is comes from the guest device (`/dev/tdx_guest`,
//! `/dev/sev-guest`) or, when the device node is not visible, from the provider name of an
//! existing report entry (`tdx_guest`, `sev_guest`).

use std::path::{Path, PathBuf};

use cocoon_attest::Backend;

/// What was looked at, and the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeeInfo {
    /// The configfs-tsm report directory.
    pub tsm_root: PathBuf,
    /// Whether the configfs-tsm directory exists.
    pub tsm_present: bool,
    /// Providers of report entries that already exist (none is created to ask).
    pub providers: Vec<String>,
    /// Whether `/dev/tdx_guest` exists.
    pub tdx_device: bool,
    /// Whether `/dev/sev-guest` exists.
    pub sev_device: bool,
    /// The TEE found, if any.
    pub backend: Option<Backend>,
}

/// Looks at this machine.
pub fn detect() -> TeeInfo {
    detect_at(
        Path::new(cocoon_attest::tsm::DEFAULT_ROOT),
        Path::new("/dev"),
    )
}

/// Looks under `tsm_root` and `dev` (tests point them at a temporary directory).
pub fn detect_at(tsm_root: &Path, dev: &Path) -> TeeInfo {
    let tsm_present = tsm_root.is_dir();
    let mut providers: Vec<String> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(tsm_root) {
        for e in entries.flatten().take(64) {
            if let Ok(p) = std::fs::read_to_string(e.path().join("provider")) {
                let p = p.trim().to_owned();
                if !p.is_empty() && !providers.contains(&p) {
                    providers.push(p);
                }
            }
        }
    }
    let tdx_device = dev.join("tdx_guest").exists();
    let sev_device = dev.join("sev-guest").exists();
    let backend = if !tsm_present {
        None
    } else if tdx_device || providers.iter().any(|p| p.starts_with("tdx")) {
        Some(Backend::Tdx)
    } else if sev_device || providers.iter().any(|p| p.starts_with("sev")) {
        Some(Backend::SevSnp)
    } else {
        None
    };
    TeeInfo {
        tsm_root: tsm_root.to_owned(),
        tsm_present,
        providers,
        tdx_device,
        sev_device,
        backend,
    }
}

impl TeeInfo {
    /// The detection as `cocoon attest show --json` prints it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "tee": self.backend.map(Backend::name),
            "configfs_tsm": {
                "path": self.tsm_root,
                "present": self.tsm_present,
                "providers": self.providers,
            },
            "tdx_guest_device": self.tdx_device,
            "sev_guest_device": self.sev_device,
        })
    }

    /// The detection as `cocoon attest show` prints it, one line each.
    pub fn lines(&self) -> Vec<String> {
        let yn = |b: bool| if b { "present" } else { "absent" };
        let providers = if self.providers.is_empty() {
            String::new()
        } else {
            format!(", provider {}", self.providers.join(", "))
        };
        vec![
            match self.backend {
                Some(b) => format!("TEE:            {b}"),
                None => "no TEE detected".to_string(),
            },
            format!(
                "configfs-tsm:   {} ({}{providers})",
                self.tsm_root.display(),
                yn(self.tsm_present)
            ),
            format!("/dev/tdx_guest: {}", yn(self.tdx_device)),
            format!("/dev/sev-guest: {}", yn(self.sev_device)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tsm_directory_and_a_device_or_provider_decide() {
        let d = tempfile::tempdir().unwrap();
        let (tsm, dev) = (d.path().join("tsm"), d.path().join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        // A device without configfs-tsm: our sources could not read a report.
        std::fs::write(dev.join("tdx_guest"), "").unwrap();
        assert_eq!(detect_at(&tsm, &dev).backend, None);
        std::fs::create_dir_all(&tsm).unwrap();
        assert_eq!(detect_at(&tsm, &dev).backend, Some(Backend::Tdx));
        // No device node visible, but a report entry names its provider.
        std::fs::remove_file(dev.join("tdx_guest")).unwrap();
        assert_eq!(detect_at(&tsm, &dev).backend, None);
        std::fs::create_dir_all(tsm.join("r1")).unwrap();
        std::fs::write(tsm.join("r1/provider"), "sev_guest\n").unwrap();
        let info = detect_at(&tsm, &dev);
        assert_eq!(info.backend, Some(Backend::SevSnp));
        assert_eq!(info.providers, vec!["sev_guest".to_owned()]);
        assert_eq!(Backend::SevSnp.name(), "sev-snp");
        assert_eq!(info.to_json()["tee"], "sev-snp");
        assert_eq!(info.lines()[0], "TEE:            sev-snp");
    }
}
