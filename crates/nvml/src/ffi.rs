//! The NVML calls. The only `unsafe` code of the workspace: loading the library, looking up
//! its functions with the prototypes `nvml.h` declares, and calling them with pointers to
//! [`crate::layout`] structures that outlive the calls.
#![allow(unsafe_code)]

use std::ffi::c_void;

use libloading::{Library, Symbol};

use crate::layout::{AttestationReport, Certificate, NONCE_LEN};
use crate::{GpuEvidence, LIBRARY, NvmlError};

/// `nvmlDevice_t`.
type Device = *mut c_void;
/// `nvmlReturn_t` (a C enum).
type Ret = i32;
/// `NVML_SUCCESS`.
const SUCCESS: Ret = 0;

type InitFn = unsafe extern "C" fn() -> Ret;
type HandleFn = unsafe extern "C" fn(u32, *mut Device) -> Ret;
type ReportFn = unsafe extern "C" fn(Device, *mut AttestationReport) -> Ret;
type CertificateFn = unsafe extern "C" fn(Device, *mut Certificate) -> Ret;

fn check(call: &'static str, code: Ret) -> Result<(), NvmlError> {
    if code == SUCCESS {
        Ok(())
    } else {
        Err(NvmlError::Call { call, code })
    }
}

/// NVML, loaded and initialised; shut down when dropped.
pub struct Nvml {
    lib: Library,
}

impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nvml")
    }
}

impl Nvml {
    /// Loads [`LIBRARY`] and calls `nvmlInit_v2`.
    pub fn load() -> Result<Self, NvmlError> {
        // SAFETY: loading runs the library's initialisers; this is NVIDIA's driver library,
        // found by the dynamic loader's usual search, with no other requirement.
        let lib = unsafe { Library::new(LIBRARY) }.map_err(|e| NvmlError::Load(e.to_string()))?;
        let nvml = Nvml { lib };
        let init = nvml.symbol::<InitFn>("nvmlInit_v2")?;
        // SAFETY: `nvmlInit_v2(void)` as nvml.h declares it.
        check("nvmlInit_v2", unsafe { init() })?;
        Ok(nvml)
    }

    /// Looks up `name`, whose C prototype must be `T`.
    fn symbol<T>(&self, name: &'static str) -> Result<Symbol<'_, T>, NvmlError> {
        // SAFETY: every caller passes the prototype nvml.h declares for `name`.
        unsafe { self.lib.get::<T>(name.as_bytes()) }.map_err(|_| NvmlError::Symbol(name))
    }

    /// The attestation report of GPU `index` for `nonce`, and its attestation chain.
    pub fn gpu_evidence(
        &self,
        index: u32,
        nonce: &[u8; NONCE_LEN],
    ) -> Result<GpuEvidence, NvmlError> {
        let handle = self.symbol::<HandleFn>("nvmlDeviceGetHandleByIndex_v2")?;
        let mut device: Device = std::ptr::null_mut();
        // SAFETY: `(unsigned int, nvmlDevice_t *)`; `device` outlives the call.
        check("nvmlDeviceGetHandleByIndex_v2", unsafe {
            handle(index, &mut device)
        })?;

        let get_report = self.symbol::<ReportFn>("nvmlDeviceGetConfComputeGpuAttestationReport")?;
        let mut report = AttestationReport::with_nonce(nonce);
        // SAFETY: `(nvmlDevice_t, nvmlConfComputeGpuAttestationReport_t *)`; the structure
        // is `#[repr(C)]` as nvml.h lays it out (checked by the layout tests), boxed, and
        // outlives the call, which writes within it only.
        check("nvmlDeviceGetConfComputeGpuAttestationReport", unsafe {
            get_report(device, &mut *report)
        })?;

        let get_cert = self.symbol::<CertificateFn>("nvmlDeviceGetConfComputeGpuCertificate")?;
        let mut cert = Certificate::zeroed();
        // SAFETY: `(nvmlDevice_t, nvmlConfComputeGpuCertificate_t *)`, as above.
        check("nvmlDeviceGetConfComputeGpuCertificate", unsafe {
            get_cert(device, &mut *cert)
        })?;

        Ok(GpuEvidence {
            report: report.report(nonce)?,
            cert_chain_pem: cert.chain_pem()?,
        })
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        if let Ok(shutdown) = self.symbol::<InitFn>("nvmlShutdown") {
            // SAFETY: `nvmlShutdown(void)`, balancing the `nvmlInit_v2` of `load`.
            let _ = unsafe { shutdown() };
        }
    }
}
