//! TDX: MRTD from the TDVF metadata of the firmware, RTMR0–3 from the boot event log.
