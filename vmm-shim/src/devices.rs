//! The few devices a guest needs, all port I/O, shared by the vCPU threads:
//!
//! * a 16550A UART at 0x3f8 (rust-vmm's `vm-superio`: registers, divisor latch,
//!   loopback; its interrupt line is not wired, guests poll LSR, and nothing is ever
//!   received),
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

/// The UART's interrupt line, which nothing is wired to: the guests poll LSR.
#[derive(Debug)]
struct NoInterrupt;

impl vm_superio::Trigger for NoInterrupt {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

type Uart = vm_superio::Serial<NoInterrupt, vm_superio::serial::NoEvents, SerialSink>;

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
    /// COM1, which owns the console sink.
    uart: Mutex<Uart>,
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
            uart: Mutex::new(Uart::new(NoInterrupt, serial)),
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
                let off = (port - COM1_BASE) as u8;
                let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
                // (Reading LCR and MCR changes nothing.)
                let transmits = off == UART_RBR_THR as u8
                    && uart.read(UART_LCR as u8) & UART_LCR_DLAB == 0
                    && uart.read(UART_MCR as u8) & UART_MCR_LOOP == 0;
                // A closed console must not kill the guest: output is best effort.
                if transmits {
                    // A string of bytes (`rep outsb`) goes out in one write, as the UART
                    // would send it byte by byte.
                    let w = uart.writer_mut();
                    let _ = w.write_all(data).and_then(|()| w.flush());
                } else {
                    for &b in data {
                        let _ = uart.write(off, b);
                    }
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
                let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
                data.fill(uart.read((port - COM1_BASE) as u8));
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
    fn uart_loopback_sends_nothing_and_receives_what_it_sent() {
        let (d, out, _) = devices();
        d.io_out(COM1_BASE + UART_MCR, &[UART_MCR_LOOP]);
        d.io_out(COM1_BASE, b"z");
        let mut lsr = [0u8];
        d.io_in(COM1_BASE + UART_LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rbr = [0u8];
        d.io_in(COM1_BASE, &mut rbr);
        assert_eq!(rbr[0], b'z');
        assert!(out.0.lock().unwrap().is_empty());
        d.io_out(COM1_BASE + UART_MCR, &[0]);
        d.io_out(COM1_BASE, b"ok");
        assert_eq!(&*out.0.lock().unwrap(), b"ok");
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
