//! The few devices a guest needs, all port I/O, shared by the vCPU threads:
//!
//! * a 16550-style UART at 0x3f8, good enough for polled output (LSR always reports
//!   THRE|TEMT, DLAB switches offsets 0/1 to the divisor latch, LCR/FCR/MCR/SCR writes are
//!   kept, no input, no interrupts),
//! * the isa-debug-exit port at 0xf4 (a write of v ends the run with exit code
//!   `(v << 1) | 1`) and a power-off port at 0x604 (a 16-bit write of 0x2000, QEMU's ACPI
//!   PM1a S5 value, ends the run cleanly with 0),
//! * fw_cfg at 0x510 (selector, 16-bit) / 0x511 (data, 8-bit) with the signature, id,
//!   RAM size, CPU count, command line and an empty file directory.
//!
//! Everything else is counted per port (or MMIO page) and reported once through the
//! warning callback, then ignored (reads return all ones).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;

use crate::arch::*;

// The ports the guest runtime drives: one definition, shared with it (`abi`).
pub const COM1_BASE: u16 = crate::abi::COM1;
pub use crate::abi::{EXIT_PORT, POWEROFF_PORT, POWEROFF_VALUE};
pub const FW_CFG_SELECTOR: u16 = 0x510;
pub const FW_CFG_DATA: u16 = 0x511;

/// What a port access asks the VM to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoAction {
    Continue,
    /// isa-debug-exit: the run ends with this process exit status.
    Exit(u8),
    /// Clean power-off.
    PowerOff,
}

/// 16550 register state (output only).
#[derive(Debug, Default)]
struct Uart {
    lcr: u8,
    ier: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fcr: u8,
}

impl Uart {
    fn dlab(&self) -> bool {
        self.lcr & UART_LCR_DLAB != 0
    }

    /// Returns the byte to transmit, if the write was one.
    fn write(&mut self, off: u16, v: u8) -> Option<u8> {
        match off {
            UART_RBR_THR if self.dlab() => self.dll = v,
            UART_RBR_THR => return Some(v),
            UART_IER if self.dlab() => self.dlm = v,
            UART_IER => self.ier = v & 0x0f,
            UART_IIR_FCR => self.fcr = v,
            UART_LCR => self.lcr = v,
            UART_MCR => self.mcr = v & 0x1f,
            UART_SCR => self.scr = v,
            _ => {} // LSR/MSR are read-only; writes are ignored like on real parts.
        }
        None
    }

    fn read(&self, off: u16) -> u8 {
        match off {
            UART_RBR_THR if self.dlab() => self.dll,
            UART_RBR_THR => 0,
            UART_IER if self.dlab() => self.dlm,
            UART_IER => self.ier,
            UART_IIR_FCR => UART_IIR_NO_INT | if self.fcr & 1 != 0 { 0xc0 } else { 0 },
            UART_LCR => self.lcr,
            UART_MCR => self.mcr,
            UART_LSR => UART_LSR_THRE | UART_LSR_TEMT,
            UART_MSR => UART_MSR_CONNECTED,
            _ => self.scr,
        }
    }
}

/// fw_cfg, traditional (non-DMA) interface.
#[derive(Debug)]
struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    selected: u16,
    offset: usize,
}

impl FwCfg {
    fn new(ram_bytes: u64, ncpus: u16, cmdline: &str) -> FwCfg {
        let mut items = BTreeMap::new();
        items.insert(FW_CFG_SIGNATURE, b"QEMU".to_vec());
        items.insert(FW_CFG_ID, FW_CFG_VERSION.to_le_bytes().to_vec());
        items.insert(FW_CFG_RAM_SIZE, ram_bytes.to_le_bytes().to_vec());
        items.insert(FW_CFG_NB_CPUS, ncpus.to_le_bytes().to_vec());
        items.insert(FW_CFG_MAX_CPUS, ncpus.to_le_bytes().to_vec());
        let mut line = cmdline.as_bytes().to_vec();
        line.push(0);
        items.insert(
            FW_CFG_CMDLINE_SIZE,
            (line.len() as u32).to_le_bytes().to_vec(),
        );
        items.insert(FW_CFG_CMDLINE_DATA, line);
        // The file directory is big-endian: a zero count.
        items.insert(FW_CFG_FILE_DIR, 0u32.to_be_bytes().to_vec());
        FwCfg {
            items,
            selected: 0,
            offset: 0,
        }
    }

    fn select(&mut self, key: u16) {
        self.selected = key;
        self.offset = 0;
    }

    fn read(&mut self) -> u8 {
        let b = self
            .items
            .get(&self.selected)
            .and_then(|v| v.get(self.offset))
            .copied()
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        b
    }
}

/// Accesses nobody handles, counted per port / MMIO page.
#[derive(Debug, Default)]
pub struct UnknownAccesses {
    pub ports: BTreeMap<u16, u64>,
    pub mmio_pages: BTreeMap<u64, u64>,
}

/// Where the guest console goes.
pub type SerialSink = Box<dyn Write + Send>;

/// Reports a one-time warning (e.g. the first access to an unknown port).
pub type WarnFn = Box<dyn Fn(&str) + Send + Sync>;

/// All devices of one VM.
pub struct Devices {
    uart: Mutex<Uart>,
    serial: Mutex<SerialSink>,
    fw_cfg: Mutex<FwCfg>,
    unknown: Mutex<UnknownAccesses>,
    warn: WarnFn,
}

impl Devices {
    pub fn new(
        serial: SerialSink,
        ram_bytes: u64,
        ncpus: u32,
        cmdline: &str,
        warn: WarnFn,
    ) -> Devices {
        Devices {
            uart: Mutex::new(Uart::default()),
            serial: Mutex::new(serial),
            fw_cfg: Mutex::new(FwCfg::new(
                ram_bytes,
                u16::try_from(ncpus).unwrap_or(u16::MAX),
                cmdline,
            )),
            unknown: Mutex::new(UnknownAccesses::default()),
            warn,
        }
    }

    fn count_port(&self, port: u16, write: bool) {
        let mut u = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        let n = u.ports.entry(port).or_insert(0);
        *n += 1;
        if *n == 1 {
            let dir = if write { "write to" } else { "read from" };
            (self.warn)(&format!(
                "guest {dir} unknown I/O port {port:#x} ignored (reported once)"
            ));
        }
    }

    /// A guest `out`. `data` is the bytes written (1, 2 or 4; several for `rep outs`).
    pub fn io_out(&self, port: u16, data: &[u8]) -> IoAction {
        match port {
            COM1_BASE..=0x3ff => {
                let off = port - COM1_BASE;
                let mut out = Vec::new();
                {
                    let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
                    if off == UART_RBR_THR && !uart.dlab() {
                        out.extend_from_slice(data);
                    } else {
                        for &b in data {
                            out.extend(uart.write(off, b));
                        }
                    }
                }
                if !out.is_empty() {
                    let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                    // A closed console must not kill the guest; output is best effort.
                    let _ = s.write_all(&out).and_then(|()| s.flush());
                }
                IoAction::Continue
            }
            EXIT_PORT => {
                let mut v = [0u8; 4];
                let n = data.len().min(4);
                v[..n].copy_from_slice(&data[..n]);
                let value = u32::from_le_bytes(v);
                IoAction::Exit(((value << 1) | 1) as u8)
            }
            POWEROFF_PORT
                if data.len() == 2 && u16::from_le_bytes([data[0], data[1]]) == POWEROFF_VALUE =>
            {
                IoAction::PowerOff
            }
            FW_CFG_SELECTOR if data.len() >= 2 => {
                let key = u16::from_le_bytes([data[0], data[1]]);
                self.fw_cfg
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .select(key);
                IoAction::Continue
            }
            _ => {
                self.count_port(port, true);
                IoAction::Continue
            }
        }
    }

    /// A guest `in`: fill `data`.
    pub fn io_in(&self, port: u16, data: &mut [u8]) {
        match port {
            COM1_BASE..=0x3ff => {
                let uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
                data.fill(uart.read(port - COM1_BASE));
            }
            FW_CFG_DATA => {
                let mut fw = self.fw_cfg.lock().unwrap_or_else(|e| e.into_inner());
                for b in data.iter_mut() {
                    *b = fw.read();
                }
            }
            _ => {
                self.count_port(port, false);
                data.fill(0xff);
            }
        }
    }

    /// An MMIO access nothing claims: counted, reported once per page, reads give ones.
    pub fn mmio(&self, addr: u64, data: Option<&mut [u8]>) {
        let page = addr & !0xfff;
        {
            let mut u = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
            let n = u.mmio_pages.entry(page).or_insert(0);
            *n += 1;
            if *n == 1 {
                (self.warn)(&format!(
                    "guest access to unknown MMIO address {addr:#x} ignored (reported once per page)"
                ));
            }
        }
        if let Some(d) = data {
            d.fill(0xff);
        }
    }

    /// Unknown accesses so far.
    pub fn unknown_accesses(&self) -> UnknownAccesses {
        let u = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        UnknownAccesses {
            ports: u.ports.clone(),
            mmio_pages: u.mmio_pages.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<StdMutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn devices() -> (Devices, Shared, Arc<StdMutex<Vec<String>>>) {
        let out = Shared::default();
        let warnings = Arc::new(StdMutex::new(Vec::new()));
        let w = warnings.clone();
        let d = Devices::new(
            Box::new(out.clone()),
            64 << 20,
            2,
            "a b",
            Box::new(move |m| w.lock().unwrap().push(m.to_string())),
        );
        (d, out, warnings)
    }

    #[test]
    fn uart_transmits_and_honours_dlab() {
        let (d, out, _) = devices();
        let mut lsr = [0u8];
        d.io_in(COM1_BASE + UART_LSR, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
        d.io_out(COM1_BASE + UART_LCR, &[0x80]);
        d.io_out(COM1_BASE, &[0x01]); // divisor latch, not output
        let mut dll = [0u8];
        d.io_in(COM1_BASE, &mut dll);
        assert_eq!(dll[0], 1);
        d.io_out(COM1_BASE + UART_LCR, &[0x03]);
        d.io_out(COM1_BASE + UART_IIR_FCR, &[0xc7]);
        d.io_out(COM1_BASE + UART_MCR, &[0x0b]);
        d.io_out(COM1_BASE, b"hi");
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
    }

    #[test]
    fn exit_ports() {
        let (d, _, _) = devices();
        assert_eq!(d.io_out(EXIT_PORT, &[3]), IoAction::Exit(7));
        assert_eq!(d.io_out(EXIT_PORT, &[0, 0, 0, 0]), IoAction::Exit(1));
        assert_eq!(
            d.io_out(POWEROFF_PORT, &0x2000u16.to_le_bytes()),
            IoAction::PowerOff
        );
        assert_eq!(d.io_out(POWEROFF_PORT, &[1]), IoAction::Continue);
    }

    #[test]
    fn fw_cfg_signature_cpus_ram() {
        let (d, _, _) = devices();
        let read = |key: u16, n: usize| {
            d.io_out(FW_CFG_SELECTOR, &key.to_le_bytes());
            let mut v = vec![0u8; n];
            for b in v.iter_mut() {
                let mut x = [0u8];
                d.io_in(FW_CFG_DATA, &mut x);
                *b = x[0];
            }
            v
        };
        assert_eq!(read(FW_CFG_SIGNATURE, 4), b"QEMU");
        assert_eq!(read(FW_CFG_NB_CPUS, 2), [2, 0]);
        assert_eq!(read(FW_CFG_RAM_SIZE, 8), (64u64 << 20).to_le_bytes());
        assert_eq!(read(FW_CFG_CMDLINE_DATA, 4), b"a b\0");
        assert_eq!(read(0x7777, 2), [0, 0]);
    }

    #[test]
    fn unknown_ports_are_counted_and_reported_once() {
        let (d, _, warnings) = devices();
        for _ in 0..3 {
            d.io_out(0x80, &[1]);
        }
        let mut x = [0u8];
        d.io_in(0x61, &mut x);
        assert_eq!(x[0], 0xff);
        assert_eq!(warnings.lock().unwrap().len(), 2);
        assert_eq!(d.unknown_accesses().ports.get(&0x80), Some(&3));
    }
}
