//! The virtual PMU and LBR: one architectural model (CPUID leaf 0xA, the PMU and LBR MSRs,
//! freeze-on-PMI) with two backends, hardware passthrough and emulation.
