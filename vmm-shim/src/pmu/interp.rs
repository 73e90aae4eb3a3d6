//! The window interpreter: runs ring-3 guest instructions inside the shim, so a sampled
//! window (or exact-mode tracing) records its branches without stopping the guest.
//!
//! Stopping ring-3 code costs 35–100 µs per stop on the hosts lbrprof targets (a trap into
//! the emulated ring-0 handler, an I/O exit, an IRETQ); interpreting an instruction costs
//! well under a microsecond. So when the tracer starts a window at a *clean* stop (the vCPU
//! is at an instruction boundary with nothing left for KVM to complete), it takes the full
//! register file, runs the guest's instructions here through guest memory, reports every
//! instruction and branch to the tracer, and writes the registers back.
//!
//! ## Exactness, not coverage
//! Only what is implemented exactly runs here: the integer subset compilers emit in hot
//! code (MOV/MOVZX/MOVSX/MOVSXD/LEA, the ALU group, INC/DEC/NEG/NOT, shifts and rotates,
//! two/three-operand IMUL, PUSH/POP/LEAVE, near CALL/RET/JMP/Jcc direct and indirect,
//! CMOVcc/SETcc, register XCHG, NOPs, ENDBR64 and the PREFETCH hints,
//! CBW/CWDE/CDQE/CWD/CDQ/CQO, register BT, one-operand MUL/IMUL/DIV/IDIV, SSE/SSE2 moves and integer operations (`interp/sse.rs`),
//! the AVX/AVX2 forms of glibc's `*_avx2` string functions and BMI1/BMI2 (`interp/avx.rs`,
//! where the host CPU runs them), `%fs:` (thread-local) accesses) in 64-bit mode at CPL 3. Anything else — another
//! instruction or form, a LOCK prefix, a GS access, a page fault, an address outside RAM, a data access to a page that holds
//! code, a write to a page table — is a [`Halt`]: the instruction is *not* executed, the
//! state is exactly that of the boundary before it, and the tracer's breakpoint machinery
//! takes over from there (so correctness never depends on coverage).
//!
//! * **Flags**: [`mod@alu`] computes every flag the SDM defines exactly (differentially tested
//!   against the host CPU). A flag the SDM leaves *undefined* (OF after a multi-bit shift,
//!   SF/ZF/AF/PF after IMUL, AF after logic ops, ...) may only get the interpreter's value
//!   if it is provably dead: [`Session`] follows the code after the instruction (straight
//!   lines, direct jumps and calls, returns through a shadow stack or the untouched real
//!   stack, both arms of a Jcc) until every such flag is written with a defined value
//!   before anything reads it. Otherwise it halts before the instruction and the CPU runs it.
//!   Forms the host can run in the same encoding (with a register destination: the logic
//!   group, shifts and rotates by CL, by one or by an immediate, two-operand IMUL, BT;
//!   the logic group with a memory destination too) take their undefined flags from the
//!   host CPU running the operation ([`mod@host_flags`]): the guest's ring 3 runs on that
//!   CPU, so that is what the guest would have seen; no proof is needed.
//! * **Memory**: guest-virtual addresses are translated through the guest's 4-level page
//!   tables with the P, R/W, U/S and XD checks a ring-3 access gets, and the accessed and
//!   dirty bits are set as the CPU would — only once the instruction completes (a halt
//!   leaves them as they were). Accesses may cross pages.
//! * **Instructions are transactional**: all reads and checks happen first, then the
//!   accessed/dirty bits, then at most one memory write, then the register file.
//! * **Decoded blocks**: instructions are decoded once per basic block (the straight line
//!   up to the first control transfer) and run from the block. Blocks live in an arena and
//!   remember the blocks execution went on to (chaining): the common way from one block
//!   to the next is a compare, not a map lookup. Fetch permissions are checked once per
//!   page of a block (and not again while blocks follow each other on one page). A block
//!   also packs the fast forms (below) of its leading instructions that lie on its first
//!   page; once the block is entered, [`Session::run`] goes through them one after the
//!   other without the per-instruction lookups and checks (they go on straight to the
//!   next, on a page whose fetch was checked at the entry).
//! * **Pre-resolved forms**: the hot forms (MOV, MOVZX/MOVSX, LEA, the ALU group, CMP,
//!   TEST, INC/DEC/NEG/NOT, shifts and rotates, two-operand IMUL, one-operand
//!   MUL/IMUL/DIV/IDIV, register BT, CMOVcc,
//!   SETcc, near Jcc/JMP/CALL/RET, PUSH/POP/LEAVE, NOPs) are resolved once, when their
//!   block is decoded, into a handler with register numbers, immediate and
//!   effective-address form (`interp/fast.rs`), and run from that without iced's
//!   `Instruction` and without copying the register file: registers are written in place
//!   once nothing can halt any more. Everything else, and a form whose undefined flags need
//!   the liveness proof, takes the generic path; the tests run every fast form both ways.
//! * **The outside world**: in exact mode RDRAND, RDSEED, RDTSC, RDTSCP and RDPID read a
//!   pinned world (a seeded stream, a clock that counts instructions), never the host's
//!   (`interp/outside.rs`); elsewhere they are left to the CPU.
//! * **MOVS/STOS**: with REP, up to a page of iterations per step, each step a transaction
//!   of its own, as if the CPU had been interrupted between iterations
//!   (`interp/string.rs`).
//! * **Data pages**: a page a data access passed every check on (not code, translated,
//!   for a write also not a page table and guest RAM) is remembered in a small
//!   direct-mapped table until any page becomes code or a page table, with its host
//!   address ([`GuestAccess::ram_page`]): a naturally aligned load or store there is one
//!   atomic access to host memory, not a call through [`GuestAccess`].
//! * **Code may change under the cache**: a cached decode or block is compared with guest
//!   memory once per session (the guest rewrites code while it runs on the CPU: JITs, loaders),
//!   and a liveness verdict is reused only while every instruction it looked at is
//!   unchanged. Near branches with an operand-size prefix (ignored by Intel, honoured by
//!   AMD) are left to the CPU.
//!
//! Not modelled (documented simplifications): interrupts arriving during an interpreted
//! stretch are taken after it (as if they came a little later); naturally aligned accesses
//! are single atomic accesses and accessed/dirty bits are set with a compare-and-exchange,
//! but a misaligned access is copied (LOCKed instructions and XCHG with memory are never
//! interpreted). An undefined flag proven dead keeps the interpreter's value, which the
//! host CPU may not have produced: only an exception or interrupt taken before the flag
//! is rewritten (a page fault on the way, a signal frame) can show it. The session's own
//! TLB is filled from the page tables as they are, never from translations the guest left
//! stale without INVLPG.

pub mod alu;
mod avx;
mod fast;
pub mod host_flags;
pub mod outside;
mod sse;
mod string;

use iced_x86::{
    Code, ConditionCode, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory,
    Mnemonic, OpAccess, OpKind, Register, RflagsBits,
};

use self::alu::{Op, STATUS, alu, mask, sext};
use self::fast::Fast;
use super::addr_hash::{FastMap, FastSet};
use super::branch::{BranchKind, MAX_INSN_LEN};
use super::guest::{GuestAccess, InterpState};
use crate::arch::{PTE_A, PTE_ADDR_MASK, PTE_D, PTE_P, PTE_PS, PTE_RW, PTE_US};

/// RFLAGS.RF (cleared when an instruction completes).
const RFLAGS_RF: u64 = 1 << 16;
/// IA32_EFER.NXE.
const EFER_NXE: u64 = 1 << 11;
/// Execute-disable, the one page-table bit `crate::arch` does not name.
const PTE_XD: u64 = 1 << 63;
const PAGE: u64 = 4096;
/// Index of RSP in [`InterpState::gpr`].
const RSP: usize = 4;
/// Instructions the flag-liveness search may look at.
const LOOKAHEAD_BUDGET: usize = 256;
/// Decoded instructions cached before the cache is flushed.
const MAX_CACHED_INSNS: usize = 1 << 16;

/// Why the interpreter stopped before an instruction (which it did not execute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Halt {
    /// An instruction or form the interpreter does not implement.
    Unsupported(Mnemonic),
    /// The access would fault (not present, protection, non-canonical), or the address is
    /// not guest RAM: the CPU must raise it (or exit to the VMM for MMIO).
    Memory,
    /// A data access to a page that holds code the tracer or the interpreter has decoded,
    /// through any mapping of it (cached decodes and `int3` patches must not be bypassed).
    CodePage,
    /// A write to a page-table page the interpreter walked.
    PageTable,
    /// The instruction leaves flags undefined that may be read before they are rewritten.
    FlagsLive,
    /// The instruction bytes cannot be fetched (not user-executable or unmapped).
    Fetch,
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Halt::Unsupported(m) => write!(f, "{}", format!("{m:?}").to_lowercase()),
            Halt::Memory => f.write_str("(fault or MMIO)"),
            Halt::CodePage => f.write_str("(data access to a code page)"),
            Halt::PageTable => f.write_str("(page-table write)"),
            Halt::FlagsLive => f.write_str("(undefined flags read)"),
            Halt::Fetch => f.write_str("(fetch)"),
        }
    }
}

/// What one interpreted instruction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Not a branch: execution goes on at the next instruction.
    Next,
    /// A REP string instruction ran some of its iterations and has more to run: RIP
    /// stays on it, and it has not retired (`interp/string.rs`).
    Repeat,
    /// A near branch retired.
    Branch {
        kind: BranchKind,
        taken: bool,
        to: u64,
    },
}

/// One executed instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Its address.
    pub ip: u64,
    /// The address after it.
    pub next: u64,
    pub effect: Effect,
    /// Status flags it left undefined (proven dead before anything reads them).
    pub undefined: u64,
}

/// The interpreter's long-lived state (per vCPU): decoded instructions and the pages that
/// hold code.
#[derive(Debug, Default)]
pub struct Interp {
    /// (CR3, address) → the instruction there and the bytes it was decoded from (checked
    /// again once per session: the guest may rewrite code while it runs on the CPU).
    cache: FastMap<(u64, u64), Decoded>,
    /// (CR3, guest-virtual page) of every page code was decoded from, by the interpreter
    /// or the tracer ([`Interp::note_code`]).
    code_pages: FastSet<(u64, u64)>,
    /// Guest-physical pages that hold code: a data access through another mapping of the
    /// same page (a JIT's writable alias) must not bypass the cache or the tracer's
    /// `int3` patches either.
    code_phys: FastSet<u64>,
    /// Pages the tracer noted ([`Interp::note_code`]) not yet translated to `code_phys`
    /// (the next session in their address space does it).
    noted: FastMap<u64, Vec<u64>>,
    /// Liveness verdicts that depend on the code alone: (CR3, address after the
    /// instruction, undefined flags) → (dead, the instructions the search looked at; the
    /// verdict holds while they are unchanged).
    dead: FastMap<VerdictKey, Verdict>,
    /// iced's instruction-info factory (kept: it allocates).
    info: Option<InstructionInfoFactory>,
    /// The liveness search's list of visited instructions (kept: it allocates).
    visited: Vec<u64>,
    /// Times `code_phys` was cleared.
    code_phys_resets: u64,
    /// The current session's number (cache entries remember the session that last
    /// checked them against guest memory).
    session_no: u64,
    /// (CR3, address) → index in `arena` of the straight-line run of decoded instructions
    /// from there through the first control transfer. Checked against guest memory once
    /// per session, like `cache`.
    blocks: FastMap<(u64, u64), u32>,
    /// The decoded blocks. A block decoded again (its code changed) replaces its old slot,
    /// so a slot always holds the block of one (CR3, address) until the caches are flushed.
    arena: Vec<CachedBlock>,
    /// Times `arena` was cleared (a session's current block remembers it).
    arena_gen: u64,
    /// Bumped whenever a page becomes code (`code_pages`, `code_phys`) or a page table
    /// (a session's `pt_pages`): a session's [`DataPage`] entries hold while it is unchanged.
    code_epoch: u64,
    /// Instructions run from their pre-resolved fast form (`interp/fast.rs`).
    fast_steps: u64,
    /// Every instruction takes the generic path (the tests compare the two).
    generic_only: bool,
    /// The pinned world RDRAND, RDSEED, RDTSC, RDTSCP and RDPID read (exact mode), or
    /// `None`: they are left to the CPU ([`mod@outside`]).
    outside: Option<outside::Outside>,
}

/// Instructions in a cached block at most (a longer straight line is several blocks).
const MAX_BLOCK_INSNS: usize = 64;
/// Bytes of code in a cached block at most.
const BLOCK_BYTES: u64 = (MAX_BLOCK_INSNS * MAX_INSN_LEN) as u64;

/// A decoded basic block ([`Interp::arena`]). What going from one block to the next reads
/// (start, the check, the links, the fast forms and the instruction count) fills the first
/// cache line; the decoded instructions and the address space, which only the slower
/// paths read, come after it. (The unaligned 88-byte layout this replaced spread a block's
/// header over two lines, and the next block's check read its decoded instructions too:
/// with a few instructions per block, such misses were a large part of a block's cost.)
#[derive(Clone, Debug)]
#[repr(C, align(64))]
struct CachedBlock {
    start: u64,
    /// The session that last compared every instruction's bytes with guest memory (0,
    /// never a session's number, for a block with no instructions left).
    checked_in: u64,
    /// Blocks execution went on to from this one, (address, arena index): the fall-through
    /// or direct target and the last indirect target. Hints only: a link is followed only
    /// to a slot that still holds the block of that address, checked this session.
    link_ips: [u64; 2],
    link_to: [u32; 2],
    /// `insns.len()`.
    len: u32,
    /// The fast forms of the block's leading instructions that have one and lie wholly on
    /// the block's first page, packed ([`Session::run_block`]: `fast[i]` is `insns[i]`'s).
    fast: Box<[Fast]>,
    insns: Box<[Decoded]>,
    cr3: u64,
}

/// A cached liveness verdict.
#[derive(Clone, Debug)]
struct Verdict {
    dead: bool,
    /// The instructions the search looked at: the verdict holds while they are unchanged.
    visited: std::sync::Arc<[u64]>,
    /// The session that last checked them.
    checked_in: u64,
}

/// (CR3, address after the instruction, undefined flags).
type VerdictKey = (u64, u64, u64);

/// A point of the liveness search: (address, pending flags, RSP, shadow stack, wrote).
type SeenPoint = (u64, u64, i64, Vec<(u64, i64, u32)>, bool);

/// A cached decode.
#[derive(Clone, Copy, Debug)]
struct Decoded {
    insn: Instruction,
    /// The instruction's bytes (the first `insn.len()`).
    bytes: [u8; MAX_INSN_LEN],
    /// A near branch with an operand-size prefix: Intel ignores it in 64-bit mode, AMD
    /// truncates the target to 16 bits; never interpreted.
    osize_branch: bool,
    /// What it writes that the liveness search must know of ([`writes`]).
    writes_memory: bool,
    writes_rsp: bool,
    /// The session that last compared `bytes` with guest memory.
    checked_in: u64,
    /// The pre-resolved form the fast path runs, if the instruction has one.
    fast: Option<Fast>,
}

/// Whether the legacy prefixes (and REX) in front of the opcode include 0x66.
fn has_osize_prefix(bytes: &[u8]) -> bool {
    for &b in bytes {
        match b {
            0x66 => return true,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x40..=0x4f => {}
            _ => return false,
        }
    }
    false
}

impl Interp {
    /// An interpreter whose instructions all take the generic path, never the fast one
    /// (for the tests and the fuzz target that compare the two).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn generic_only() -> Interp {
        Interp {
            generic_only: true,
            ..Interp::default()
        }
    }

    /// Answer RDRAND, RDSEED, RDTSC, RDTSCP and RDPID from the pinned world `cfg` as vCPU
    /// `vcpu` (exact mode; [`mod@outside`]); what `cfg` does not pin stays the CPU's.
    pub fn set_outside(&mut self, cfg: outside::OutsideConfig, vcpu: u32) {
        self.outside =
            (cfg != outside::OutsideConfig::default()).then(|| outside::Outside::new(cfg, vcpu));
    }

    /// Instructions run from their pre-resolved fast form so far.
    pub fn fast_steps(&self) -> u64 {
        self.fast_steps
    }

    /// Code at `[start, end)` in address space `cr3` was decoded (by the tracer).
    pub fn note_code(&mut self, cr3: u64, start: u64, end: u64) {
        let mut page = start & !(PAGE - 1);
        while page < end {
            if self.code_pages.insert((cr3, page)) {
                self.code_epoch += 1;
                self.noted.entry(cr3).or_default().push(page);
            }
            page = match page.checked_add(PAGE) {
                Some(p) => p,
                None => break,
            };
        }
    }

    /// An interpreting session over `g` from `state` (see [`InterpState::refusal`]).
    pub fn session<'a>(
        &'a mut self,
        g: &'a mut dyn GuestAccess,
        state: InterpState,
    ) -> Session<'a> {
        self.session_no += 1;
        let mut s = Session {
            interp: self,
            g,
            state: Box::new(state),
            scratch: None,
            tlb: FastMap::default(),
            tlb_fast: [(u64::MAX, Tlb::default()); TLB_FAST],
            data_fast: [NO_DATA_PAGE; TLB_FAST],
            pt_pages: Vec::new(),
            pending_ad: Vec::new(),
            pending_tlb: Vec::new(),
            code_pages_seen: [NO_PAGE; PAGE_MEMO],
            fetch_pages_checked: [NO_PAGE; PAGE_MEMO],
            xmm: None,
            xmm_dirty: false,
            ymm_hi: None,
            ymm_dirty: false,
            block: None,
            lazy_af: None,
            repeats: Vec::new(),
            retired: 0,
            run_done: 0,
        };
        s.translate_noted();
        s
    }

    /// The instruction at `rip` in `cr3`, decoded from guest memory (cached). A cached
    /// decode is compared with guest memory once per session; one whose bytes changed is
    /// dropped with every liveness verdict.
    fn decode(&mut self, g: &mut dyn GuestAccess, cr3: u64, rip: u64) -> Option<Decoded> {
        let session = self.session_no;
        if let Some(d) = self.cache.get_mut(&(cr3, rip)) {
            if d.checked_in == session {
                return Some(*d);
            }
            let len = d.insn.len();
            let mut now = [0u8; MAX_INSN_LEN];
            if g.read_virt(rip, &mut now[..len]).is_ok() && now[..len] == d.bytes[..len] {
                d.checked_in = session;
                return Some(*d);
            }
            // Rewritten (or unmapped) since it was decoded.
            self.cache.remove(&(cr3, rip));
            self.dead.clear();
        }
        let mut bytes = [0u8; MAX_INSN_LEN];
        let n = if g.read_virt(rip, &mut bytes).is_ok() {
            MAX_INSN_LEN
        } else {
            let to_end = (PAGE - rip % PAGE) as usize;
            if to_end < MAX_INSN_LEN && g.read_virt(rip, &mut bytes[..to_end]).is_ok() {
                to_end
            } else {
                return None;
            }
        };
        let mut d = Decoder::with_ip(64, &bytes[..n], rip, DecoderOptions::NONE);
        let insn = d.decode();
        if insn.is_invalid() {
            return None;
        }
        if self.cache.len() >= MAX_CACHED_INSNS {
            self.cache.clear();
            self.blocks.clear();
            self.arena.clear();
            self.arena_gen += 1;
            self.dead.clear();
            // Physical pages are recycled by the guest (a freed JIT page becomes someone's
            // stack): start the physical set again from what executes and what the
            // tracer noted, so stale entries do not halt data accesses forever.
            self.code_phys.clear();
            self.code_phys_resets += 1;
            self.noted.clear();
            for &(c, page) in &self.code_pages {
                self.noted.entry(c).or_default().push(page);
            }
        }
        let near_branch = insn.is_jcc_short_or_near()
            || insn.is_jmp_short_or_near()
            || insn.is_call_near()
            || matches!(insn.flow_control(), FlowControl::Return)
            || matches!(insn.code(), Code::Jmp_rm64 | Code::Call_rm64);
        let (writes_memory, writes_rsp) = writes(
            self.info.get_or_insert_with(InstructionInfoFactory::new),
            &insn,
        );
        let osize_branch = near_branch && has_osize_prefix(&bytes[..insn.len()]);
        let d = Decoded {
            insn,
            bytes,
            osize_branch,
            fast: Fast::new(&insn, &bytes[..insn.len()], osize_branch),
            writes_memory,
            writes_rsp,
            checked_in: session,
        };
        self.cache.insert((cr3, rip), d);
        self.note_code(cr3, rip, insn.next_ip());
        Some(d)
    }
}

/// Entries of [`Session`]'s direct-mapped TLB front.
const TLB_FAST: usize = 64;

fn tlb_slot(vpage: u64) -> usize {
    ((vpage / PAGE) as usize) % TLB_FAST
}

/// Entries of [`Session`]'s memos of code pages (`code_pages_seen`, `fetch_pages_checked`).
const PAGE_MEMO: usize = 16;
/// An empty memo entry (no page is at an unaligned address).
const NO_PAGE: (u64, u64) = (u64::MAX, u64::MAX);

fn memo_slot(page: u64) -> usize {
    ((page / PAGE) as usize) % PAGE_MEMO
}

/// A page a data access passed every check on ([`Session::data_pa`]).
#[derive(Clone, Copy, Debug)]
struct DataPage {
    vpage: u64,
    /// Guest-physical address of the page.
    phys: u64,
    /// Writes passed too (the leaf's dirty bit is set, not a page table, guest RAM).
    writable: bool,
    /// `Interp::code_epoch` when it passed.
    epoch: u64,
    /// The page's host address ([`GuestAccess::ram_page`]): naturally aligned accesses
    /// go straight to it.
    host: Option<std::ptr::NonNull<u8>>,
}

const NO_DATA_PAGE: DataPage = DataPage {
    vpage: u64::MAX,
    phys: 0,
    writable: false,
    epoch: u64::MAX,
    host: None,
};

/// A translation the session has made (its own TLB, dropped with the session).
#[derive(Clone, Copy, Debug, Default)]
struct Tlb {
    /// Guest-physical address of the page (4 KiB granularity).
    phys: u64,
    user: bool,
    writable: bool,
    executable: bool,
    /// The leaf's dirty bit is known to be set.
    dirty: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    Fetch,
}

/// One interpreting stretch over a vCPU: [`Session::step`] until it halts, then
/// [`Session::state`] is what to write back.
pub struct Session<'a> {
    interp: &'a mut Interp,
    g: &'a mut dyn GuestAccess,
    /// Boxed, like `scratch`: an instruction runs on a copy of the state in `scratch` and
    /// commits by swapping the two boxes (one 200-byte copy per instruction, not three).
    state: Box<InterpState>,
    scratch: Option<Box<InterpState>>,
    tlb: FastMap<u64, Tlb>,
    /// A direct-mapped copy of recent `tlb` entries (page number → entry), looked up
    /// first: every instruction fetch and data access translates.
    tlb_fast: [(u64, Tlb); TLB_FAST],
    /// Pages recent data accesses passed every check on ([`Session::data_pa`]),
    /// direct-mapped like `tlb_fast`.
    data_fast: [DataPage; TLB_FAST],
    /// Guest-physical pages of the page tables walked.
    pt_pages: Vec<u64>,
    /// Accessed/dirty bits the current instruction's walks want set: (entry address, the
    /// entry as read, bits to set). Written only when the instruction completes, so a halt
    /// leaves the page tables as they were.
    pending_ad: Vec<(u64, u64, u64)>,
    /// Translations the current instruction made, entered in the TLB when it completes.
    pending_tlb: Vec<(u64, Tlb)>,
    /// Recent guest-physical pages code was fetched from, entered in `Interp::code_phys`
    /// (as of its `code_phys_resets`), direct-mapped by page number: a loop that calls
    /// code on another page comes back to a page without a hash-set insert.
    code_pages_seen: [(u64, u64); PAGE_MEMO],
    /// XMM0–XMM15, fetched from the vCPU at the first SSE instruction.
    xmm: Option<[u128; 16]>,
    /// An instruction changed an XMM register (or a YMM upper half):
    /// [`Session::xmm_to_write_back`].
    xmm_dirty: bool,
    /// Bits 255:128 of YMM0–YMM15, fetched from the vCPU (with `xmm`, if not fetched
    /// yet) at the first VEX vector instruction (`interp/avx.rs`).
    ymm_hi: Option<[u128; 16]>,
    /// An instruction changed a YMM upper half: [`Session::ymm_hi_to_write_back`].
    ymm_dirty: bool,
    /// Recent pages blocks were entered on, whose fetch permission this session checked
    /// (as of `Interp::code_phys_resets`), direct-mapped by page number.
    fetch_pages_checked: [(u64, u64); PAGE_MEMO],
    /// The block being executed ([`Interp::arena`] index), the index of its next
    /// instruction, and the arena's generation ([`Interp::arena_gen`]).
    block: Option<(u32, usize, u64)>,
    /// AF of the last logic operation, not computed yet: `state.rflags`' AF holds a
    /// placeholder until [`Session::settle_af`] asks the host (`interp/fast.rs`).
    lazy_af: Option<fast::LazyAf>,
    /// REP string iterations run ([`Session::take_repeats`]).
    repeats: Vec<(u64, u64)>,
    /// Instructions the vCPU retired before the current [`Session::run`] call
    /// ([`Session::set_retired`]; the pinned TSC counts them).
    retired: u64,
    /// Instructions the current [`Session::run`] call completed before the one on the
    /// generic path.
    run_done: u64,
}

/// A memory write an instruction makes once everything else has succeeded.
#[derive(Clone, Copy, Debug)]
struct PendingWrite {
    addr: u64,
    /// At most 32.
    bytes: usize,
    /// Bytes 0–15.
    value: u128,
    /// Bytes 16–31 (a 32-byte VEX store).
    value_hi: u128,
}

impl Session<'_> {
    /// The state after the last executed instruction (with every flag computed).
    pub fn state(&mut self) -> &InterpState {
        self.settle_af();
        &self.state
    }

    /// RIP after the last executed instruction (the tracer's batches start there; unlike
    /// [`Session::state`] it leaves a lazy AF for later).
    pub fn rip(&self) -> u64 {
        self.state.rip
    }

    /// XMM0–XMM15 after the last executed instruction, when an instruction changed them
    /// or a YMM upper half (the caller writes them back with [`GuestAccess::set_xmm`]).
    pub fn xmm_to_write_back(&self) -> Option<&[u128; 16]> {
        self.xmm.as_ref().filter(|_| self.xmm_dirty)
    }

    /// Bits 255:128 of YMM0–YMM15 after the last executed instruction, when an
    /// instruction changed them (written back with the XMM registers,
    /// [`GuestAccess::set_xmm`]).
    pub fn ymm_hi_to_write_back(&self) -> Option<&[u128; 16]> {
        self.ymm_hi.as_ref().filter(|_| self.ymm_dirty)
    }

    /// The vCPU has retired `n` instructions before the next [`Session::run`] call (what
    /// a pinned RDTSC reads, [`mod@outside`]).
    pub fn set_retired(&mut self, n: u64) {
        self.retired = n;
    }

    /// Instructions the vCPU retired before the one executing.
    fn retired_before(&self) -> u64 {
        self.retired.wrapping_add(self.run_done)
    }

    /// A 16-byte load (two 8-byte halves: as on the CPU, not single-copy atomic).
    fn read_mem128(&mut self, addr: u64) -> Result<u128, Halt> {
        let lo = self.read_mem(addr, 8)?;
        let hi = self.read_mem(addr.wrapping_add(8), 8)?;
        Ok(u128::from(lo) | (u128::from(hi) << 64))
    }

    /// Executes the instruction at RIP, or halts before it (state and memory untouched,
    /// accessed and dirty bits included).
    pub fn step(&mut self) -> Result<Step, Halt> {
        self.run_done = 0;
        let r = self.try_step();
        if r.is_err() {
            self.pending_ad.clear();
            self.pending_tlb.clear();
        }
        r
    }

    /// Executes instructions from RIP as [`Session::step`] does, one after the other,
    /// until one of them branches, `max` that do not have completed, or one halts.
    /// Returns how many non-branch instructions completed (they went on straight to the
    /// next, so the caller needs no more of them than the count: they started at the RIP
    /// before the call) and the branch's [`Step`], or `None` when `max` completed, or the
    /// halt (the state is that of the boundary before the halting instruction, as after
    /// [`Session::step`]). A REP string instruction's steps before its last
    /// ([`Effect::Repeat`]) do not count: it completes once. This is the tracer's batch: one call per basic block rather
    /// than one per instruction. (Inlined into the tracer's loop: returned through memory,
    /// the `Step` was written in pieces and read back whole, a store-forwarding stall per
    /// branch.)
    #[inline(always)]
    pub fn run(&mut self, max: u64) -> (u64, Result<Option<Step>, Halt>) {
        let mut n = 0;
        while n < max {
            if let Some(r) = self.run_block(&mut n, max) {
                return r;
            }
            if n == max {
                break;
            }
            if let Some(b) = self.enter_next_block() {
                // (Entered at RIP, its fast forms first: `run_block`'s checks hold.)
                let generation = self.interp.arena_gen;
                if let Some(r) = self.run_fast_forms(b, 0, generation, &mut n, max) {
                    return r;
                }
                continue;
            }
            self.run_done = n;
            match self.try_step() {
                Ok(Step {
                    effect: Effect::Next,
                    ..
                }) => n += 1,
                Ok(Step {
                    effect: Effect::Repeat,
                    ..
                }) => {}
                Ok(step) => return (n, Ok(Some(step))),
                Err(h) => {
                    self.pending_ad.clear();
                    self.pending_tlb.clear();
                    return (n, Err(h));
                }
            }
        }
        (n, Ok(None))
    }

    /// Runs the rest of the current block from its packed fast forms
    /// ([`CachedBlock::fast`]), one after the other, while they go on straight to the next
    /// and `n < max`: [`Session::try_step`]'s work without its per-instruction checks. The
    /// block was entered at its first page, whose fetch was checked then, and its
    /// instructions follow each other on that page, so RIP is the next one's address as
    /// long as none branched. Returns what [`Session::run`] returns when an instruction
    /// branched or halted; `None` to go on with [`Session::try_step`] (the block's end,
    /// an instruction without a fast form, one whose fast form gave way to the generic
    /// path, `max`).
    #[inline(always)]
    fn run_block(&mut self, n: &mut u64, max: u64) -> Option<(u64, Result<Option<Step>, Halt>)> {
        let (b, i, generation) = self.block?;
        if generation != self.interp.arena_gen || self.interp.generic_only {
            return None;
        }
        let block = &self.interp.arena[b as usize];
        if i >= block.fast.len() {
            return None;
        }
        // (The instructions lie end to end: the next one starts where the previous ended.)
        let at = match i.checked_sub(1) {
            None => block.start,
            Some(p) => block.fast[p].next(),
        };
        if at != self.state.rip {
            return None;
        }
        self.run_fast_forms(b, i, generation, n, max)
    }

    /// [`Session::run_block`]'s loop, from fast form `i` of block `b` (of arena generation
    /// `generation`, the current one), which is the instruction at RIP.
    #[inline(always)]
    fn run_fast_forms(
        &mut self,
        b: u32,
        mut i: usize,
        generation: u64,
        n: &mut u64,
        max: u64,
    ) -> Option<(u64, Result<Option<Step>, Halt>)> {
        let block = &self.interp.arena[b as usize];
        let len = block.fast.len();
        let fast = block.fast.as_ptr();
        let mut out = None;
        let mut ran = 0;
        while i < len && *n < max {
            // SAFETY: `fast` points to the block's boxed slice of `len` forms, and `i < len`.
            // The slice lives until its block is decoded again or the arena is cleared
            // (`enter_block`, `Interp::decode`), which `run_fast` never calls: it reads and
            // writes guest memory and registers only. (A reference, not a copy: the copy of
            // the form was a tenth of the time per instruction.)
            let f = unsafe { &*fast.add(i) };
            match self.run_fast(self.state.rip, f) {
                Ok(Some(step)) => {
                    i += 1;
                    ran += 1;
                    if step.effect != Effect::Next {
                        out = Some((*n, Ok(Some(step))));
                        break;
                    }
                    *n += 1;
                }
                Ok(None) => break,
                Err(h) => {
                    self.pending_ad.clear();
                    self.pending_tlb.clear();
                    out = Some((*n, Err(h)));
                    break;
                }
            }
        }
        self.block = Some((b, i, generation));
        self.interp.fast_steps += ran;
        out
    }

    /// At the end of the current block (or with none): enters the block at RIP, and
    /// returns its arena index when it has fast forms to run from its first instruction
    /// ([`Session::run_fast_forms`]). `None` leaves the rest to [`Session::try_step`] (no
    /// fast form first, the generic path only, or a fetch that halts: `try_step` meets the
    /// halt again and returns it).
    #[inline(always)]
    fn enter_next_block(&mut self) -> Option<u32> {
        if self.interp.generic_only {
            return None;
        }
        if let Some((b, i, generation)) = self.block
            && generation == self.interp.arena_gen
            && i < self.interp.arena[b as usize].len as usize
        {
            return None;
        }
        let idx = self.block_at_rip().ok()?;
        self.block = Some((idx, 0, self.interp.arena_gen));
        (!self.interp.arena[idx as usize].fast.is_empty()).then_some(idx)
    }

    /// The block starting at RIP, entered from the current one (through its link, else
    /// the map, decoding it on a miss), its first page's fetch permission checked.
    #[inline(always)]
    fn block_at_rip(&mut self) -> Result<u32, Halt> {
        let ip = self.state.rip;
        let from = self.block.take();
        let page = (ip & !(PAGE - 1), self.interp.code_phys_resets);
        if self.fetch_pages_checked[memo_slot(page.0)] != page {
            let pa = self.check_fetch(ip)?;
            self.note_code_phys(pa);
            self.fetch_pages_checked[memo_slot(page.0)] = page;
        }
        let cr3 = self.state.cr3;
        Ok(match self.follow_link(from, cr3, ip) {
            Some(idx) => idx,
            None => {
                let idx = self.enter_block(cr3, ip).ok_or(Halt::Fetch)?;
                self.link(from, ip, idx);
                idx
            }
        })
    }

    /// Enters the physical pages of code the tracer noted in this address space into
    /// `code_phys` (a walk without side effects: nothing is committed).
    fn translate_noted(&mut self) {
        let Some(pages) = self.interp.noted.remove(&self.state.cr3) else {
            return;
        };
        for page in pages {
            if let Ok(t) = self.walk(page, Access::Read) {
                self.interp.code_phys.insert(t.phys);
                self.interp.code_epoch += 1;
            }
        }
        self.pending_ad.clear();
        self.pending_tlb.clear();
    }

    /// Code is fetched from guest-physical `pa`'s page.
    fn note_code_phys(&mut self, pa: u64) {
        let key = (pa & !(PAGE - 1), self.interp.code_phys_resets);
        let seen = &mut self.code_pages_seen[memo_slot(key.0)];
        if *seen != key {
            *seen = key;
            if self.interp.code_phys.insert(key.0) {
                self.interp.code_epoch += 1;
            }
        }
    }

    fn decode(&mut self, cr3: u64, rip: u64) -> Option<Decoded> {
        self.interp.decode(self.g, cr3, rip)
    }

    /// The next instruction of the current block, when execution went on straight to it
    /// and it lies on the page of the previous one (whose fetch was checked this session:
    /// the page tables cannot change under an interpreted stretch, writes to them halt).
    /// Returns its place: (arena index, index in the block).
    fn next_in_block(&mut self, rip: u64) -> Option<(u32, usize)> {
        let (b, i, generation) = self.block.as_mut()?;
        if *generation != self.interp.arena_gen {
            return None;
        }
        let insns = &self.interp.arena[*b as usize].insns;
        let d = insns.get(*i)?;
        if d.insn.ip() != rip {
            return None;
        }
        // (The first instruction: the block was entered at RIP, its page checked then.)
        if let Some(prev) = i.checked_sub(1).map(|p| &insns[p])
            && prev.insn.ip() / PAGE != rip / PAGE
        {
            return None;
        }
        *i += 1;
        Some((*b, *i - 1))
    }

    /// The block at `rip` through a link of the block `from` (no map lookup), when that
    /// link leads to it and it is unchanged in guest memory ([`Session::block_fresh`]).
    fn follow_link(&mut self, from: Option<(u32, usize, u64)>, cr3: u64, rip: u64) -> Option<u32> {
        let (f, _, generation) = from?;
        if generation != self.interp.arena_gen {
            return None;
        }
        let arena = &self.interp.arena;
        let from = &arena[f as usize];
        let to = match from.link_ips {
            [ip, _] if ip == rip => from.link_to[0],
            [_, ip] if ip == rip => from.link_to[1],
            _ => return None,
        };
        let b = arena.get(to as usize)?;
        // (A session's blocks are all of its address space, and so are their links.)
        debug_assert!(b.start != rip || b.cr3 == cr3);
        (b.start == rip && self.block_fresh(to)).then_some(to)
    }

    /// Whether block `idx` was checked against guest memory this session, or is
    /// unchanged there now (then it counts as checked). A block with no instructions
    /// left is never fresh.
    #[inline(always)]
    fn block_fresh(&mut self, idx: u32) -> bool {
        self.interp.arena[idx as usize].checked_in == self.interp.session_no
            || self.block_unchanged(idx)
    }

    /// [`Session::block_fresh`] for a block not checked this session yet: compares it
    /// with guest memory.
    #[inline(never)]
    fn block_unchanged(&mut self, idx: u32) -> bool {
        let session = self.interp.session_no;
        let b = &mut self.interp.arena[idx as usize];
        // (The instructions lie end to end from the start: one read of guest memory for
        // the block, not one per instruction.)
        let fresh = !b.insns.is_empty() && {
            let mut now = [0u8; MAX_BLOCK_INSNS * MAX_INSN_LEN];
            let end = b.insns.last().map_or(b.start, |d| d.insn.next_ip());
            let now = &mut now[..end.wrapping_sub(b.start).min(BLOCK_BYTES) as usize];
            self.g.read_virt(b.start, now).is_ok()
                && b.insns.iter().all(|d| {
                    let at = d.insn.ip().wrapping_sub(b.start) as usize;
                    let len = d.insn.len();
                    now.get(at..at + len) == Some(&d.bytes[..len])
                })
        };
        if fresh {
            b.checked_in = session;
        }
        fresh
    }

    /// Remembers that execution went on from block `from` to block `to` at `rip`.
    fn link(&mut self, from: Option<(u32, usize, u64)>, rip: u64, to: u32) {
        let Some((f, _, generation)) = from else {
            return;
        };
        if generation != self.interp.arena_gen {
            return;
        }
        let b = &mut self.interp.arena[f as usize];
        // Slot 0: where the block's last instruction falls through or jumps directly
        // (stable); slot 1: anything else (the last indirect target).
        let direct = b.insns.last().is_some_and(|d| {
            d.insn.next_ip() == rip
                || (d.insn.op0_kind() == OpKind::NearBranch64 && d.insn.near_branch64() == rip)
        });
        let slot = usize::from(!direct || (b.link_ips[0] != 0 && b.link_ips[0] != rip));
        b.link_ips[slot] = rip;
        b.link_to[slot] = to;
    }

    /// The block starting at `rip` (decoded, or cached and checked against guest memory
    /// once per session): its arena index.
    fn enter_block(&mut self, cr3: u64, rip: u64) -> Option<u32> {
        let session = self.interp.session_no;
        let mut slot = None;
        if let Some(&idx) = self.interp.blocks.get(&(cr3, rip)) {
            if self.block_fresh(idx) {
                return Some(idx);
            }
            // Rewritten since it was decoded: decode it again into the same slot (the
            // per-instruction cache notices the change too and drops the liveness
            // verdicts).
            slot = Some(idx);
        }
        let generation = self.interp.arena_gen;
        let mut insns = Vec::new();
        let mut at = rip;
        while insns.len() < MAX_BLOCK_INSNS {
            let Some(d) = self.decode(cr3, at) else {
                break;
            };
            insns.push(d);
            if d.insn.flow_control() != FlowControl::Next {
                break;
            }
            at = d.insn.next_ip();
        }
        if insns.is_empty() {
            if let Some(idx) = slot.filter(|_| generation == self.interp.arena_gen) {
                // Nothing decodes there any more: the slot keeps its key with no
                // instructions, so links and the map never lead to stale code.
                let b = &mut self.interp.arena[idx as usize];
                b.insns = Box::default();
                b.fast = Box::default();
                b.len = 0;
                b.checked_in = 0;
                self.interp.blocks.remove(&(cr3, rip));
            }
            return None;
        }
        let fast = insns
            .iter()
            .map_while(|d| d.fast.filter(|f| (f.next() - 1) / PAGE == rip / PAGE))
            .collect();
        let block = CachedBlock {
            start: rip,
            checked_in: session,
            link_ips: [0; 2],
            link_to: [0; 2],
            // (At most MAX_BLOCK_INSNS.)
            len: insns.len() as u32,
            fast,
            insns: insns.into(),
            cr3,
        };
        // Decoding may have flushed the caches (and the arena with them).
        let idx = match slot.filter(|_| generation == self.interp.arena_gen) {
            Some(idx) => {
                self.interp.arena[idx as usize] = block;
                idx
            }
            None => {
                let idx = u32::try_from(self.interp.arena.len()).ok()?;
                self.interp.arena.push(block);
                self.interp.blocks.insert((cr3, rip), idx);
                idx
            }
        };
        Some(idx)
    }

    /// The cached liveness verdict for `key`, if every instruction it rests on is unchanged.
    fn cached_verdict(&mut self, key: VerdictKey) -> Option<bool> {
        let session = self.interp.session_no;
        let v = self.interp.dead.get(&key)?;
        if v.checked_in == session {
            return Some(v.dead);
        }
        let visited = v.visited.clone();
        for &ip in visited.iter() {
            self.decode(key.0, ip)?;
        }
        // A changed instruction clears every verdict.
        let v = self.interp.dead.get_mut(&key)?;
        v.checked_in = session;
        Some(v.dead)
    }

    #[inline(always)]
    fn try_step(&mut self) -> Result<Step, Halt> {
        let ip = self.state.rip;
        let (b, i) = match self.next_in_block(ip) {
            Some(at) => at,
            None => {
                let idx = self.block_at_rip()?;
                self.block = Some((idx, 1, self.interp.arena_gen));
                (idx, 0)
            }
        };
        let d = &self.interp.arena[b as usize].insns[i];
        if let Some(f) = d.fast.filter(|_| !self.interp.generic_only) {
            if f.next() / PAGE != ip / PAGE {
                let pa = self.check_fetch(f.next() - 1)?;
                self.note_code_phys(pa);
            }
            if let Some(step) = self.run_fast(ip, &f)? {
                self.interp.fast_steps += 1;
                return Ok(step);
            }
            // Undefined flags only the liveness proof can settle: the generic path does
            // the instruction again. Nothing was changed; the walks pending so far (the
            // fetch's, the same reads') stay pending for it to commit.
        }
        // The generic path reads and writes RFLAGS as a whole.
        self.settle_af();
        let decoded = self.interp.arena[b as usize].insns[i];
        let insn = decoded.insn;
        if decoded.osize_branch {
            return Err(Halt::Unsupported(insn.mnemonic()));
        }
        if insn.next_ip() / PAGE != ip / PAGE {
            let pa = self.check_fetch(insn.next_ip() - 1)?;
            self.note_code_phys(pa);
        }
        if let Some(r) = self.run_string(ip, &insn) {
            return r;
        }
        let mut n = self.scratch.take().unwrap_or_default();
        *n = *self.state;
        n.rip = insn.next_ip();
        let mut exec = Exec {
            session: self,
            insn: &insn,
            write: None,
            xmm_write: None,
            ymm_hi_write: None,
            zero_upper: None,
            undefined: 0,
        };
        let effect = exec.run(&mut n)?;
        let (write, undefined, xmm_write) = (exec.write, exec.undefined, exec.xmm_write);
        let (ymm_hi_write, zero_upper) = (exec.ymm_hi_write, exec.zero_upper);
        if let Effect::Branch { to, .. } = effect
            && sext(to, 48) as u64 != to
        {
            // A near branch to a non-canonical address raises #GP on the branch itself.
            return Err(Halt::Memory);
        }
        if undefined != 0 {
            let key = (n.cr3, n.rip, undefined);
            let dead = match self.cached_verdict(key) {
                Some(d) => d,
                None => {
                    let (dead, code_only, visited) =
                        self.flags_dead(undefined, &n, write.is_some());
                    if code_only {
                        let checked_in = self.interp.session_no;
                        let v = Verdict {
                            dead,
                            visited: visited.as_slice().into(),
                            checked_in,
                        };
                        self.interp.dead.insert(key, v);
                    }
                    self.interp.visited = visited;
                    dead
                }
            };
            if !dead {
                return Err(Halt::FlagsLive);
            }
        }
        let targets = match write {
            Some(w) => Some(self.write_targets(w)?),
            None => None,
        };
        // Every check passed: from here on the instruction happens.
        self.commit_walks()?;
        if let (Some(w), Some(targets)) = (write, targets) {
            self.write_mem(w, targets)?;
        }
        if let (Some((i, v)), Some(x)) = (xmm_write, self.xmm.as_mut()) {
            x[i] = v;
            self.xmm_dirty = true;
        }
        if let Some(hi) = self.ymm_hi.as_mut() {
            if let Some((i, v)) = ymm_hi_write
                && hi[i] != v
            {
                hi[i] = v;
                self.ymm_dirty = true;
            }
            if let Some(all) = zero_upper {
                if hi.iter().any(|&v| v != 0) {
                    *hi = [0; 16];
                    self.ymm_dirty = true;
                }
                if all && let Some(x) = self.xmm.as_mut() {
                    *x = [0; 16];
                    self.xmm_dirty = true;
                }
            }
            if self.ymm_dirty {
                // The upper halves go back with the XMM registers.
                self.xmm_dirty = true;
            }
        }
        n.rflags &= !RFLAGS_RF;
        std::mem::swap(&mut self.state, &mut n);
        self.scratch = Some(n);
        Ok(Step {
            ip,
            next: insn.next_ip(),
            effect,
            undefined,
        })
    }

    /// The guest-physical address of an instruction byte at `addr`.
    fn check_fetch(&mut self, addr: u64) -> Result<u64, Halt> {
        self.translate(addr, Access::Fetch).map_err(|_| Halt::Fetch)
    }

    /// Translates `gva` for a ring-3 access of `kind`, walking the page tables on a miss.
    fn translate(&mut self, gva: u64, kind: Access) -> Result<u64, Halt> {
        if sext(gva, 48) as u64 != gva {
            return Err(Halt::Memory);
        }
        let vpage = gva & !(PAGE - 1);
        let fast = self.tlb_fast[tlb_slot(vpage)];
        let hit = if fast.0 == vpage {
            Some(fast.1)
        } else {
            self.tlb.get(&vpage).copied()
        };
        let t = match hit {
            Some(t) if kind != Access::Write || t.dirty => t,
            _ => self.walk(vpage, kind)?,
        };
        let allowed = t.user
            && match kind {
                Access::Read => true,
                Access::Write => t.writable,
                Access::Fetch => t.executable,
            };
        if !allowed {
            return Err(Halt::Memory);
        }
        Ok(t.phys | (gva & (PAGE - 1)))
    }

    /// The 4-level walk (SDM Vol. 3, "4-Level Paging"), setting accessed bits on the way
    /// and the dirty bit of the leaf for a write, as the CPU does for an allowed access.
    fn walk(&mut self, vpage: u64, kind: Access) -> Result<Tlb, Halt> {
        let nxe = self.state.efer & EFER_NXE != 0;
        let mut table = self.state.cr3 & PTE_ADDR_MASK;
        let (mut user, mut writable, mut executable) = (true, true, true);
        let mut path: Vec<(u64, u64)> = Vec::with_capacity(4);
        for (level, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
            let at = table + ((vpage >> shift) & 0x1ff) * 8;
            let entry = self.read_phys_u64(at)?;
            if entry & PTE_P == 0 || (!nxe && entry & PTE_XD != 0) {
                return Err(Halt::Memory);
            }
            if level == 0 && entry & PTE_PS != 0 {
                return Err(Halt::Memory); // reserved in a PML4E
            }
            if !self.pt_pages.contains(&(at & !(PAGE - 1))) {
                self.pt_pages.push(at & !(PAGE - 1));
                self.interp.code_epoch += 1;
            }
            user &= entry & PTE_US != 0;
            writable &= entry & PTE_RW != 0;
            executable &= !(nxe && entry & PTE_XD != 0);
            path.push((at, entry));
            let leaf = level == 3 || ((level == 1 || level == 2) && entry & PTE_PS != 0);
            if leaf {
                let page_mask = (1u64 << shift) - 1;
                // A large page's address bits below its size (above the PAT bit, 12) are
                // reserved: the CPU faults on them.
                if shift > 12 && entry & PTE_ADDR_MASK & page_mask & !(1u64 << 12) != 0 {
                    return Err(Halt::Memory);
                }
                let base = entry & PTE_ADDR_MASK & !page_mask;
                let phys = base | (vpage & page_mask);
                let allowed = user
                    && match kind {
                        Access::Read => true,
                        Access::Write => writable,
                        Access::Fetch => executable,
                    };
                if !allowed {
                    return Err(Halt::Memory);
                }
                // Accessed bits on every level, dirty on the leaf for a write, once the
                // instruction completes.
                let last = path.len() - 1;
                for (i, &(at, e)) in path.iter().enumerate() {
                    let mut bits = PTE_A;
                    if i == last && kind == Access::Write {
                        bits |= PTE_D;
                    }
                    if e & bits == bits {
                        continue;
                    }
                    match self.pending_ad.iter_mut().find(|p| p.0 == at) {
                        Some(p) => p.2 |= bits,
                        None => self.pending_ad.push((at, e, bits)),
                    }
                }
                let t = Tlb {
                    phys,
                    user,
                    writable,
                    executable,
                    dirty: kind == Access::Write || entry & PTE_D != 0,
                };
                self.pending_tlb.push((vpage, t));
                return Ok(t);
            }
            table = entry & PTE_ADDR_MASK;
        }
        Err(Halt::Memory)
    }

    fn read_phys_u64(&mut self, gpa: u64) -> Result<u64, Halt> {
        let mut b = [0u8; 8];
        self.g.read_phys(gpa, &mut b).map_err(|_| Halt::Memory)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The pages `[addr, addr + len)` spans, as (guest-virtual address, length) pieces.
    fn pieces(addr: u64, len: usize) -> impl Iterator<Item = (u64, usize)> {
        let first = ((PAGE - addr % PAGE) as usize).min(len);
        let second = len - first;
        std::iter::once((addr, first))
            .chain((second > 0).then(|| (addr.wrapping_add(first as u64), second)))
    }

    fn is_code(&self, gva: u64) -> bool {
        self.interp
            .code_pages
            .contains(&(self.state.cr3, gva & !(PAGE - 1)))
    }

    /// The guest-physical address of a data access of `kind` at `va` (the access stays on
    /// `va`'s page), after every check a data access gets here: not a page that holds
    /// code (through any mapping), translated with the ring-3 permissions, and for a write
    /// neither a page table nor outside guest RAM (MMIO). A page that passed is remembered
    /// in `data_fast` while no page becomes code or a page table (`Interp::code_epoch`),
    /// once its translation is committed (so a halt never skips an accessed/dirty bit).
    fn data_pa(&mut self, va: u64, kind: Access) -> Result<u64, Halt> {
        let vpage = va & !(PAGE - 1);
        let slot = tlb_slot(vpage);
        let e = self.data_fast[slot];
        if e.vpage == vpage
            && e.epoch == self.interp.code_epoch
            && (kind == Access::Read || e.writable)
        {
            return Ok(e.phys | (va & (PAGE - 1)));
        }
        if self.is_code(va) {
            return Err(Halt::CodePage);
        }
        let pa = self.translate(va, kind)?;
        let ppage = pa & !(PAGE - 1);
        if self.interp.code_phys.contains(&ppage) {
            return Err(Halt::CodePage);
        }
        if kind == Access::Write {
            if self.pt_pages.contains(&ppage) {
                return Err(Halt::PageTable);
            }
            // Guest RAM (not MMIO), checked before the accessed/dirty bits are committed:
            // RAM comes in whole pages, so its first and last byte say it for the page.
            let mut probe = [0u8; 1];
            self.g
                .read_phys(ppage, &mut probe)
                .and_then(|()| self.g.read_phys(ppage + PAGE - 1, &mut probe))
                .map_err(|_| Halt::Memory)?;
        }
        if self.pending_tlb.iter().all(|&(v, _)| v != vpage) {
            self.data_fast[slot] = DataPage {
                vpage,
                phys: ppage,
                writable: kind == Access::Write,
                epoch: self.interp.code_epoch,
                host: self.g.ram_page(ppage),
            };
        }
        Ok(pa)
    }

    /// The host address of `va` for a naturally aligned access of `kind`, when its page is
    /// in `data_fast` (it passed every check [`Session::data_pa`] makes, and nothing became
    /// code or a page table since) with a host address.
    #[inline(always)]
    fn host_ptr(&self, va: u64, kind: Access) -> Option<*mut u8> {
        let vpage = va & !(PAGE - 1);
        let e = &self.data_fast[tlb_slot(vpage)];
        if e.vpage == vpage
            && e.epoch == self.interp.code_epoch
            && (kind == Access::Read || e.writable)
        {
            // SAFETY: in the page (`va & (PAGE - 1)` < 4096), which `ram_page` gave.
            return e
                .host
                .map(|p| unsafe { p.as_ptr().add((va & (PAGE - 1)) as usize) });
        }
        None
    }

    #[inline(always)]
    fn read_mem(&mut self, addr: u64, bytes: usize) -> Result<u64, Halt> {
        if addr.is_multiple_of(bytes as u64)
            && let Some(p) = self.host_ptr(addr, Access::Read)
        {
            // SAFETY: guest RAM that `ram_page` keeps mapped while the session (which
            // borrows the `GuestAccess`) lives; naturally aligned, so within the page.
            return Ok(unsafe { crate::memory::load_aligned_at(p, bytes) });
        }
        self.read_mem_slow(addr, bytes)
    }

    fn read_mem_slow(&mut self, addr: u64, bytes: usize) -> Result<u64, Halt> {
        if addr.is_multiple_of(bytes as u64) {
            // Naturally aligned (so within one page): one access, single-copy atomic as
            // the guest's own load would be.
            let pa = self.data_pa(addr, Access::Read)?;
            return self
                .g
                .read_phys_aligned(pa, bytes)
                .map_err(|_| Halt::Memory);
        }
        let mut buf = [0u8; 8];
        let mut done = 0;
        for (va, len) in Self::pieces(addr, bytes) {
            let pa = self.data_pa(va, Access::Read)?;
            self.g
                .read_phys(pa, &mut buf[done..done + len])
                .map_err(|_| Halt::Memory)?;
            done += len;
        }
        Ok(u64::from_le_bytes(buf))
    }

    /// Sets the accessed and dirty bits the instruction's walks asked for and keeps their
    /// translations.
    fn commit_walks(&mut self) -> Result<(), Halt> {
        if self.pending_ad.is_empty() && self.pending_tlb.is_empty() {
            return Ok(());
        }
        // Atomically, as the CPU does: another vCPU may be changing the entry (clearing it
        // to unmap the page, clearing A for page aging). If it did, the instruction is
        // left to the CPU, which walks the tables as they are now.
        for (at, e, bits) in std::mem::take(&mut self.pending_ad) {
            match self.g.cmpxchg_phys_u64(at, e, e | bits) {
                Ok(true) => {}
                _ => {
                    self.pending_tlb.clear();
                    return Err(Halt::Memory);
                }
            }
        }
        for (vpage, t) in std::mem::take(&mut self.pending_tlb) {
            self.tlb.insert(vpage, t);
            self.tlb_fast[tlb_slot(vpage)] = (vpage, t);
        }
        Ok(())
    }

    /// Translates and checks every page a write touches (nothing written yet).
    fn write_targets(&mut self, w: PendingWrite) -> Result<([(u64, usize); 2], usize), Halt> {
        let mut targets = [(0u64, 0usize); 2];
        let mut count = 0;
        for (va, len) in Self::pieces(w.addr, w.bytes) {
            let pa = self.data_pa(va, Access::Write)?;
            targets[count] = (pa, len);
            count += 1;
        }
        Ok((targets, count))
    }

    fn write_mem(
        &mut self,
        w: PendingWrite,
        (targets, count): ([(u64, usize); 2], usize),
    ) -> Result<(), Halt> {
        if count == 1 && w.bytes <= 8 && w.addr.is_multiple_of(w.bytes as u64) {
            // Naturally aligned: one access, single-copy atomic as the guest's store.
            if let Some(p) = self.host_ptr(w.addr, Access::Write) {
                // SAFETY: as in `read_mem` (`write_targets` checked the write).
                unsafe { crate::memory::store_aligned_at(p, w.bytes, w.value as u64) };
                return Ok(());
            }
            return self
                .g
                .write_phys_aligned(targets[0].0, w.bytes, w.value as u64)
                .map_err(|_| Halt::Memory);
        }
        // (A 16- or 32-byte vector store is not single-copy atomic on the CPU either.)
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&w.value.to_le_bytes());
        bytes[16..].copy_from_slice(&w.value_hi.to_le_bytes());
        let mut done = 0;
        for &(pa, len) in &targets[..count] {
            self.g
                .write_phys(pa, &bytes[done..done + len])
                .map_err(|_| Halt::Memory)?;
            done += len;
        }
        Ok(())
    }

    /// Whether the status flags in `mask`, left undefined by the instruction that led to
    /// `after`, are written with defined values on every path before any instruction reads
    /// them; and whether that verdict follows from the code alone (no return address was
    /// read from the stack), so it may be cached.
    /// `wrote`: the instruction itself writes memory (not yet done), so the stack as it is
    /// now may not be what a return will read.
    /// Also returns the addresses of the instructions the search looked at.
    fn flags_dead(
        &mut self,
        mask: u64,
        after: &InterpState,
        wrote: bool,
    ) -> (bool, bool, Vec<u64>) {
        let mut code_only = true;
        let mut visited = std::mem::take(&mut self.interp.visited);
        visited.clear();
        let dead = self.search_flags(mask, after, wrote, &mut code_only, &mut visited);
        (dead, code_only, visited)
    }

    fn search_flags(
        &mut self,
        mask: u64,
        after: &InterpState,
        wrote: bool,
        code_only: &mut bool,
        visited: &mut Vec<u64>,
    ) -> bool {
        struct Path {
            ip: u64,
            mask: u64,
            /// RSP relative to `after`'s.
            rsp: i64,
            /// Calls followed on this path: (return address, RSP after the push, `stores`
            /// then). A RET returns there only if RSP is back at that slot and nothing was
            /// stored since (the slot could have been rewritten).
            shadow: Vec<(u64, i64, u32)>,
            /// A memory write (other than a push) happened: the real stack may differ.
            wrote: bool,
            /// Memory writes (other than pushes) on this path.
            stores: u32,
        }
        let mut budget = LOOKAHEAD_BUDGET;
        // Points already searched with the same flags pending and the same stack: a path
        // that comes back to one has read nothing on its way round (loops are proven).
        // `wrote` is part of the point: a path that may have rewritten the stack must not be
        // cut short by one that read the untouched stack from there.
        let mut seen: FastSet<SeenPoint> = FastSet::default();
        let mut forked = false;
        let mut work = vec![Path {
            ip: after.rip,
            mask,
            rsp: 0,
            shadow: Vec::new(),
            wrote,
            stores: 0,
        }];
        while let Some(mut p) = work.pop() {
            loop {
                // (Straight-line search cannot come back to a point; only forks can.)
                if forked && !seen.insert((p.ip, p.mask, p.rsp, p.shadow.clone(), p.wrote)) {
                    break;
                }
                if budget == 0 {
                    return false;
                }
                budget -= 1;
                let Some(decoded) = self.decode(after.cr3, p.ip) else {
                    return false;
                };
                visited.push(p.ip);
                if decoded.osize_branch {
                    return false;
                }
                let insn = decoded.insn;
                if arch_flags(insn.rflags_read()) & p.mask != 0 {
                    return false;
                }
                p.mask &= !defined_writes(&insn);
                if p.mask == 0 {
                    break;
                }
                if decoded.writes_memory {
                    p.wrote = true;
                    p.stores = p.stores.saturating_add(1);
                }
                match insn.flow_control() {
                    FlowControl::Next => {
                        match stack_effect(&insn, decoded.writes_rsp) {
                            Some(d) => {
                                p.rsp += d;
                                // A push at or above the starting RSP (after pops) rewrites
                                // a slot a later RET would read from the real stack.
                                if d < 0 && insn.mnemonic() == Mnemonic::Push && p.rsp >= 0 {
                                    p.wrote = true;
                                }
                            }
                            None => return false,
                        }
                        p.ip = insn.next_ip();
                    }
                    FlowControl::UnconditionalBranch if insn.is_jmp_short_or_near() => {
                        p.ip = insn.near_branch_target();
                    }
                    FlowControl::ConditionalBranch if insn.is_jcc_short_or_near() => {
                        forked = true;
                        work.push(Path {
                            ip: insn.near_branch_target(),
                            mask: p.mask,
                            rsp: p.rsp,
                            shadow: p.shadow.clone(),
                            wrote: p.wrote,
                            stores: p.stores,
                        });
                        p.ip = insn.next_ip();
                    }
                    FlowControl::Call if insn.is_call_near() => {
                        p.rsp -= 8;
                        p.shadow.push((insn.next_ip(), p.rsp, p.stores));
                        if p.rsp >= 0 {
                            p.wrote = true;
                        }
                        p.ip = insn.near_branch_target();
                    }
                    FlowControl::Return if insn.code() == Code::Retnq => {
                        if let Some((r, rsp, stores)) = p.shadow.pop() {
                            if p.rsp != rsp || p.stores != stores {
                                return false;
                            }
                            p.ip = r;
                        } else if !p.wrote && p.rsp >= 0 {
                            *code_only = false;
                            let slot = after.gpr[RSP].wrapping_add(p.rsp as u64);
                            let mut b = [0u8; 8];
                            if self.g.read_virt(slot, &mut b).is_err() {
                                return false;
                            }
                            p.ip = u64::from_le_bytes(b);
                        } else {
                            return false;
                        }
                        p.rsp += 8;
                    }
                    _ => return false,
                }
            }
        }
        true
    }
}

/// iced's RFLAGS bit set as architectural status-flag bits.
fn arch_flags(iced: u32) -> u64 {
    let map = [
        (RflagsBits::OF, alu::OF),
        (RflagsBits::SF, alu::SF),
        (RflagsBits::ZF, alu::ZF),
        (RflagsBits::AF, alu::AF),
        (RflagsBits::CF, alu::CF),
        (RflagsBits::PF, alu::PF),
    ];
    map.iter()
        .filter(|(b, _)| iced & b != 0)
        .fold(0, |acc, (_, f)| acc | f)
}

/// Status flags an instruction always writes with a defined value. Shifts and rotates
/// write none when their count may be zero (CL) or is zero, and not CF when the count may
/// reach the operand size; REP string instructions none (RCX may be zero).
fn defined_writes(insn: &Instruction) -> u64 {
    if insn.is_string_instruction()
        && (insn.has_rep_prefix() || insn.has_repe_prefix() || insn.has_repne_prefix())
    {
        // With RCX = 0 a REP string instruction does nothing, flags included.
        return 0;
    }
    let all = arch_flags(insn.rflags_written() | insn.rflags_cleared() | insn.rflags_set());
    let count_op = match insn.mnemonic() {
        Mnemonic::Shl
        | Mnemonic::Sal
        | Mnemonic::Shr
        | Mnemonic::Sar
        | Mnemonic::Rol
        | Mnemonic::Ror
        | Mnemonic::Rcl
        | Mnemonic::Rcr => 1,
        Mnemonic::Shld | Mnemonic::Shrd => 2,
        _ => return all,
    };
    if insn.op_kind(count_op) != OpKind::Immediate8 {
        return 0;
    }
    let bits = operand_bits(insn, 0).unwrap_or(64);
    let count = u32::from(insn.immediate8()) & if bits == 64 { 63 } else { 31 };
    if count == 0 {
        return 0;
    }
    if count_op == 2 && count > bits {
        // SHLD/SHRD past the operand size (16-bit, count 17..31): result and every flag
        // undefined.
        return 0;
    }
    let mut w = all & !(alu::OF | alu::AF);
    if count >= bits {
        w &= !alu::CF;
    }
    w
}

fn is_write(a: OpAccess) -> bool {
    matches!(
        a,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

/// What an instruction writes that the liveness search must know of: (memory other than
/// by a push or call, RSP as a register). From iced's instruction info, so implicit
/// operands count (MASKMOVDQU's store at [RDI], XCHG's second operand, ...).
fn writes(factory: &mut InstructionInfoFactory, insn: &Instruction) -> (bool, bool) {
    let info = factory.info(insn);
    let memory = !matches!(insn.mnemonic(), Mnemonic::Push | Mnemonic::Call)
        && info.used_memory().iter().any(|m| is_write(m.access()));
    let rsp = info
        .used_registers()
        .iter()
        .any(|r| r.register().full_register() == Register::RSP && is_write(r.access()));
    (memory, rsp)
}

/// How a sequential instruction moves RSP (for the liveness search), `None` when it is
/// not known statically. `writes_rsp`: from [`writes`].
fn stack_effect(insn: &Instruction, writes_rsp: bool) -> Option<i64> {
    match insn.mnemonic() {
        Mnemonic::Push => return Some(i64::from(insn.stack_pointer_increment())),
        Mnemonic::Pop => {
            if insn.op0_kind() == OpKind::Register
                && insn.op0_register().full_register() == Register::RSP
            {
                return None;
            }
            return Some(i64::from(insn.stack_pointer_increment()));
        }
        _ => {}
    }
    if !writes_rsp {
        return if insn.stack_pointer_increment() == 0 {
            Some(0)
        } else {
            None
        };
    }
    let imm = || {
        (insn.op_count() == 2 && is_immediate(insn.op1_kind())).then(|| insn.immediate(1) as i64)
    };
    match (insn.mnemonic(), insn.op0_register()) {
        (Mnemonic::Add, Register::RSP) => imm(),
        (Mnemonic::Sub, Register::RSP) => imm().map(|v| -v),
        (Mnemonic::Lea, Register::RSP)
            if insn.memory_base() == Register::RSP && insn.memory_index() == Register::None =>
        {
            Some(insn.memory_displacement64() as i64)
        }
        _ => None,
    }
}

fn is_immediate(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

/// The size in bits of operand `i` (register or memory), if it has one.
fn operand_bits(insn: &Instruction, i: u32) -> Option<u32> {
    match insn.op_kind(i) {
        OpKind::Register => Some(insn.op_register(i).size() as u32 * 8),
        OpKind::Memory => Some(insn.memory_size().size() as u32 * 8),
        _ => None,
    }
    .filter(|b| matches!(b, 8 | 16 | 32 | 64))
}

/// Whether RFLAGS satisfy condition `cc` (SDM Vol. 1, "Jcc"). Without branches (Jcc,
/// CMOVcc and SETcc run it for every hot loop's condition; a jump table on `cc` was a
/// mispredicted indirect jump each time): the eight base conditions of the encoding
/// (O, B, E, BE, S, P, L, LE) are computed together as bits, the encoding's pair picks
/// one and its low bit negates it. `None` for no condition.
#[inline(always)]
fn cond_holds(cc: ConditionCode, f: u64) -> Option<bool> {
    // iced numbers the conditions in encoding order after `None`: o = 1 ... g = 16.
    let n = (cc as u32).checked_sub(1).filter(|&n| n < 16)?;
    let of = (f >> 11) & 1;
    let cf = f & 1;
    let pf = (f >> 2) & 1;
    let zf = (f >> 6) & 1;
    let sf = (f >> 7) & 1;
    let lt = sf ^ of;
    let base =
        of | cf << 1 | zf << 2 | (cf | zf) << 3 | sf << 4 | pf << 5 | lt << 6 | (lt | zf) << 7;
    Some(((base >> (n >> 1)) ^ u64::from(n)) & 1 != 0)
}

/// Index of a general-purpose register in [`InterpState::gpr`], and whether it is one of
/// AH/CH/DH/BH.
fn gpr_index(reg: Register) -> Option<(usize, bool)> {
    if !reg.is_gpr() {
        return None;
    }
    let full = reg.full_register();
    let idx = (full as usize).checked_sub(Register::RAX as usize)?;
    let high = matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    );
    (idx < 16).then_some((idx, high))
}

fn get_reg(s: &InterpState, reg: Register) -> Option<u64> {
    let (i, high) = gpr_index(reg)?;
    let v = s.gpr[i];
    Some(match reg.size() {
        8 => v,
        4 => v & 0xffff_ffff,
        2 => v & 0xffff,
        _ if high => (v >> 8) & 0xff,
        _ => v & 0xff,
    })
}

fn set_reg(s: &mut InterpState, reg: Register, v: u64) -> Option<()> {
    let (i, high) = gpr_index(reg)?;
    let old = s.gpr[i];
    s.gpr[i] = match reg.size() {
        8 => v,
        4 => v & 0xffff_ffff,
        2 => (old & !0xffff) | (v & 0xffff),
        _ if high => (old & !0xff00) | ((v & 0xff) << 8),
        _ => (old & !0xff) | (v & 0xff),
    };
    Some(())
}

/// One instruction being executed against a copy of the state.
struct Exec<'s, 'a, 'i> {
    session: &'s mut Session<'a>,
    insn: &'i Instruction,
    write: Option<PendingWrite>,
    /// An XMM register the instruction writes, committed with the rest.
    xmm_write: Option<(usize, u128)>,
    /// The YMM upper half a VEX instruction writes (zeroed by a VEX.128 one).
    ymm_hi_write: Option<(usize, u128)>,
    /// VZEROUPPER (`false`) or VZEROALL (`true`).
    zero_upper: Option<bool>,
    /// Status flags the instruction leaves undefined.
    undefined: u64,
}

impl Exec<'_, '_, '_> {
    fn unsupported(&self) -> Halt {
        Halt::Unsupported(self.insn.mnemonic())
    }

    /// The effective address of memory operand `i` (ES/CS/SS/DS are flat in 64-bit mode;
    /// FS adds FS.base; GS is refused).
    fn address(&self, s: &InterpState, i: u32) -> Result<u64, Halt> {
        if self.insn.memory_segment() == Register::GS {
            return Err(self.unsupported());
        }
        self.insn
            .virtual_address(i, 0, |reg, _, _| match reg {
                Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
                Register::FS => Some(s.fs_base),
                r => get_reg(s, r),
            })
            .ok_or_else(|| self.unsupported())
    }

    fn read(&mut self, s: &InterpState, i: u32, bits: u32) -> Result<u64, Halt> {
        match self.insn.op_kind(i) {
            OpKind::Register => {
                get_reg(s, self.insn.op_register(i)).ok_or_else(|| self.unsupported())
            }
            OpKind::Memory => {
                let addr = self.address(s, i)?;
                let v = self.session.read_mem(addr, (bits / 8) as usize)?;
                Ok(v & mask(bits))
            }
            k if is_immediate(k) => Ok(self.insn.immediate(i) & mask(bits)),
            _ => Err(self.unsupported()),
        }
    }

    fn write_op(&mut self, s: &mut InterpState, i: u32, bits: u32, v: u64) -> Result<(), Halt> {
        match self.insn.op_kind(i) {
            OpKind::Register => {
                let reg = self.insn.op_register(i);
                if reg.size() as u32 * 8 != bits {
                    return Err(self.unsupported());
                }
                set_reg(s, reg, v).ok_or_else(|| self.unsupported())
            }
            OpKind::Memory => {
                let addr = self.address(s, i)?;
                self.pend_write(addr, bits, v)
            }
            _ => Err(self.unsupported()),
        }
    }

    fn pend_write(&mut self, addr: u64, bits: u32, v: u64) -> Result<(), Halt> {
        if self.write.is_some() {
            return Err(self.unsupported());
        }
        self.write = Some(PendingWrite {
            addr,
            bytes: (bits / 8) as usize,
            value: u128::from(v & mask(bits)),
            value_hi: 0,
        });
        Ok(())
    }

    fn bits(&self, i: u32) -> Result<u32, Halt> {
        operand_bits(self.insn, i).ok_or_else(|| self.unsupported())
    }

    fn push(&mut self, s: &mut InterpState, v: u64) -> Result<(), Halt> {
        let sp = s.gpr[RSP].wrapping_sub(8);
        self.pend_write(sp, 64, v)?;
        s.gpr[RSP] = sp;
        Ok(())
    }

    fn pop(&mut self, s: &mut InterpState) -> Result<u64, Halt> {
        let v = self.session.read_mem(s.gpr[RSP], 8)?;
        s.gpr[RSP] = s.gpr[RSP].wrapping_add(8);
        Ok(v)
    }

    fn apply_alu(&mut self, s: &mut InterpState, op: Op, bits: u32, a: u64, b: u64) -> u64 {
        let out = alu(op, bits, a, b, s.rflags);
        let mut status = out.rflags & STATUS;
        if out.undefined != 0 {
            // What the CPU leaves in them is what the guest, running on it, would see.
            // Only with a register destination: on Intel, `rolb $5,(%rbx)` and `rol $5,%al`
            // leave OF differently. The logic group's AF is the same for every form (the
            // memory forms are in the differential tests).
            let logic = matches!(
                self.insn.mnemonic(),
                Mnemonic::And | Mnemonic::Or | Mnemonic::Xor | Mnemonic::Test
            );
            let reg_dst = self.insn.op0_kind() == OpKind::Register;
            let host = match imm_form(self.insn).filter(|_| reg_dst) {
                Some(form) => host_flags::status_after_imm(form, bits, a, s.rflags),
                None => ((reg_dst || logic) && host_form(self.insn))
                    .then(|| host_flags::status_after(op, bits, a, b, s.rflags))
                    .flatten(),
            };
            match host {
                Some(host) => status = (status & !out.undefined) | (host & out.undefined),
                None => self.undefined |= out.undefined,
            }
        }
        s.rflags = (s.rflags & !STATUS) | status;
        out.value
    }

    /// Executes the instruction on `s` (a copy): RIP already points after it.
    fn run(&mut self, s: &mut InterpState) -> Result<Effect, Halt> {
        let insn = self.insn;
        if insn.has_lock_prefix() || insn.has_xacquire_prefix() || insn.has_xrelease_prefix() {
            return Err(self.unsupported());
        }
        if let Some(r) = self.run_sse(s) {
            return r;
        }
        if let Some(r) = self.run_avx(s) {
            return r;
        }
        if let Some(r) = self.run_outside(s) {
            return r;
        }
        let alu_op = Op::of_two_operand(insn.mnemonic());
        if let Some(op) = alu_op {
            if insn.op_count() != 2 {
                return Err(self.unsupported());
            }
            let bits = self.bits(0)?;
            let a = self.read(s, 0, bits)?;
            let b = self.read(s, 1, bits)?;
            let v = self.apply_alu(s, op, bits, a, b);
            if !matches!(insn.mnemonic(), Mnemonic::Cmp | Mnemonic::Test) {
                self.write_op(s, 0, bits, v)?;
            }
            return Ok(Effect::Next);
        }
        match insn.mnemonic() {
            Mnemonic::Mov => {
                let bits = self.bits(0)?;
                let v = self.read(s, 1, bits)?;
                self.write_op(s, 0, bits, v)?;
            }
            Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd => {
                let (dst, src) = (self.bits(0)?, self.bits(1)?);
                let v = self.read(s, 1, src)?;
                let v = if insn.mnemonic() == Mnemonic::Movzx {
                    v
                } else {
                    sext(v, src) as u64
                };
                self.write_op(s, 0, dst, v & mask(dst))?;
            }
            Mnemonic::Lea => {
                let bits = self.bits(0)?;
                let addr = self.address(s, 1)?;
                self.write_op(s, 0, bits, addr & mask(bits))?;
            }
            Mnemonic::Inc | Mnemonic::Dec | Mnemonic::Neg | Mnemonic::Not => {
                let op = match insn.mnemonic() {
                    Mnemonic::Inc => Op::Inc,
                    Mnemonic::Dec => Op::Dec,
                    Mnemonic::Neg => Op::Neg,
                    _ => Op::Not,
                };
                let bits = self.bits(0)?;
                let a = self.read(s, 0, bits)?;
                let v = self.apply_alu(s, op, bits, a, 0);
                self.write_op(s, 0, bits, v)?;
            }
            Mnemonic::Imul if insn.op_count() >= 2 => {
                let bits = self.bits(0)?;
                let (a, b) = if insn.op_count() == 2 {
                    (self.read(s, 0, bits)?, self.read(s, 1, bits)?)
                } else {
                    (self.read(s, 1, bits)?, self.read(s, 2, bits)?)
                };
                let v = self.apply_alu(s, Op::Imul, bits, a, b);
                self.write_op(s, 0, bits, v)?;
            }
            Mnemonic::Bsf
            | Mnemonic::Bsr
            | Mnemonic::Tzcnt
            | Mnemonic::Lzcnt
            | Mnemonic::Popcnt
                if insn.op0_kind() == OpKind::Register =>
            {
                use host_flags::BitScan;
                let op = match insn.mnemonic() {
                    Mnemonic::Bsf => BitScan::Bsf,
                    Mnemonic::Bsr => BitScan::Bsr,
                    Mnemonic::Tzcnt => BitScan::Tzcnt,
                    Mnemonic::Lzcnt => BitScan::Lzcnt,
                    _ => BitScan::Popcnt,
                };
                let bits = self.bits(0)?;
                let src = self.read(s, 1, bits)?;
                // The whole register: what a zero source leaves in it is the CPU's.
                let full = insn.op0_register().full_register();
                let dst = get_reg(s, full).ok_or_else(|| self.unsupported())?;
                let (v, status) = host_flags::bit_scan(op, bits, dst, src, s.rflags)
                    .ok_or_else(|| self.unsupported())?;
                set_reg(s, full, v).ok_or_else(|| self.unsupported())?;
                s.rflags = (s.rflags & !STATUS) | status;
            }
            Mnemonic::Mul | Mnemonic::Imul | Mnemonic::Div | Mnemonic::Idiv
                if insn.op_count() == 1 =>
            {
                let op = match insn.mnemonic() {
                    Mnemonic::Mul => host_flags::Wide::Mul,
                    Mnemonic::Imul => host_flags::Wide::Imul,
                    Mnemonic::Div => host_flags::Wide::Div,
                    _ => host_flags::Wide::Idiv,
                };
                let bits = self.bits(0)?;
                let src = self.read(s, 0, bits)?;
                // The host runs the same instruction: its values, and the flags the SDM
                // leaves undefined (all of them for DIV/IDIV), are the guest's. A divide
                // that would raise #DE is left to the CPU.
                let (rax, rdx, status) =
                    host_flags::wide(op, bits, s.gpr[0], s.gpr[2], src, s.rflags)
                        .ok_or_else(|| self.unsupported())?;
                s.gpr[0] = rax;
                s.gpr[2] = rdx;
                s.rflags = (s.rflags & !STATUS) | status;
            }
            Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc
                if insn.op0_kind() == OpKind::Register =>
            {
                let op = bit_test_op(insn.mnemonic()).ok_or_else(|| self.unsupported())?;
                let bits = self.bits(0)?;
                let a = self.read(s, 0, bits)?;
                let b = self.read(s, 1, bits)?;
                let v = self.apply_alu(s, op, bits, a, b);
                if op != Op::Bt {
                    self.write_op(s, 0, bits, v)?;
                }
            }
            // (BSWAP of a 16-bit register is undefined: left to the CPU.)
            Mnemonic::Bswap if matches!(insn.code(), Code::Bswap_r32 | Code::Bswap_r64) => {
                let bits = self.bits(0)?;
                let v = self.read(s, 0, bits)?;
                let v = if bits == 32 {
                    u64::from((v as u32).swap_bytes())
                } else {
                    v.swap_bytes()
                };
                self.write_op(s, 0, bits, v)?;
            }
            Mnemonic::Push if insn.stack_pointer_increment() == -8 => {
                let v = self.read(s, 0, 64)?;
                self.push(s, v)?;
            }
            Mnemonic::Pop
                if insn.stack_pointer_increment() == 8
                    && insn.op0_kind() == OpKind::Register
                    && insn.op0_register() != Register::RSP =>
            {
                let v = self.pop(s)?;
                self.write_op(s, 0, 64, v)?;
            }
            Mnemonic::Leave if insn.code() == Code::Leaveq => {
                s.gpr[RSP] = s.gpr[5];
                let v = self.pop(s)?;
                s.gpr[5] = v;
            }
            Mnemonic::Call if insn.is_call_near() => {
                let to = insn.near_branch_target();
                self.push(s, s.rip)?;
                s.rip = to;
                return Ok(branch(BranchKind::CallRel, true, to));
            }
            Mnemonic::Call if insn.code() == Code::Call_rm64 => {
                let to = self.read(s, 0, 64)?;
                self.push(s, s.rip)?;
                s.rip = to;
                return Ok(branch(BranchKind::CallInd, true, to));
            }
            Mnemonic::Ret if matches!(insn.code(), Code::Retnq | Code::Retnq_imm16) => {
                let to = self.pop(s)?;
                if insn.code() == Code::Retnq_imm16 {
                    s.gpr[RSP] = s.gpr[RSP].wrapping_add(u64::from(insn.immediate16()));
                }
                s.rip = to;
                return Ok(branch(BranchKind::Ret, true, to));
            }
            Mnemonic::Jmp if insn.is_jmp_short_or_near() => {
                let to = insn.near_branch_target();
                s.rip = to;
                return Ok(branch(BranchKind::JmpRel, true, to));
            }
            Mnemonic::Jmp if insn.code() == Code::Jmp_rm64 => {
                let to = self.read(s, 0, 64)?;
                s.rip = to;
                return Ok(branch(BranchKind::JmpInd, true, to));
            }
            _ if insn.is_jcc_short_or_near() => {
                let taken = cond_holds(insn.condition_code(), s.rflags)
                    .ok_or_else(|| self.unsupported())?;
                if taken {
                    s.rip = insn.near_branch_target();
                }
                return Ok(branch(BranchKind::Jcc, taken, s.rip));
            }
            _ if is_cmovcc(insn.mnemonic()) => {
                let bits = self.bits(0)?;
                let taken = cond_holds(insn.condition_code(), s.rflags)
                    .ok_or_else(|| self.unsupported())?;
                // The source is read (and may fault) whatever the condition; a 32-bit
                // destination is zero-extended even when nothing moves.
                let v = self.read(s, 1, bits)?;
                let old = self.read(s, 0, bits)?;
                self.write_op(s, 0, bits, if taken { v } else { old })?;
            }
            _ if is_setcc(insn.mnemonic()) => {
                let taken = cond_holds(insn.condition_code(), s.rflags)
                    .ok_or_else(|| self.unsupported())?;
                self.write_op(s, 0, 8, u64::from(taken))?;
            }
            Mnemonic::Xchg
                if insn.op0_kind() == OpKind::Register && insn.op1_kind() == OpKind::Register =>
            {
                let bits = self.bits(0)?;
                let a = self.read(s, 0, bits)?;
                let b = self.read(s, 1, bits)?;
                self.write_op(s, 0, bits, b)?;
                self.write_op(s, 1, bits, a)?;
            }
            Mnemonic::Nop | Mnemonic::Endbr64 | Mnemonic::Pause => {}
            // A hint: never faults, whatever the address (SDM Vol. 2, PREFETCHh), and
            // changes no architectural state.
            m if is_prefetch(m) => {}
            // The fences order this vCPU's memory accesses for the others: the host's
            // MFENCE orders the interpreter's as strictly as any of the three would.
            Mnemonic::Mfence | Mnemonic::Sfence | Mnemonic::Lfence => {
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            }
            Mnemonic::Cbw | Mnemonic::Cwde | Mnemonic::Cdqe => {
                let bits = match insn.mnemonic() {
                    Mnemonic::Cbw => 8,
                    Mnemonic::Cwde => 16,
                    _ => 32,
                };
                let v = sext(s.gpr[0] & mask(bits), bits) as u64;
                let dst = match bits {
                    8 => Register::AX,
                    16 => Register::EAX,
                    _ => Register::RAX,
                };
                set_reg(s, dst, v).ok_or_else(|| self.unsupported())?;
            }
            Mnemonic::Cwd | Mnemonic::Cdq | Mnemonic::Cqo => {
                let (bits, dst) = match insn.mnemonic() {
                    Mnemonic::Cwd => (16, Register::DX),
                    Mnemonic::Cdq => (32, Register::EDX),
                    _ => (64, Register::RDX),
                };
                let fill = if s.gpr[0] & (1 << (bits - 1)) != 0 {
                    u64::MAX
                } else {
                    0
                };
                set_reg(s, dst, fill).ok_or_else(|| self.unsupported())?;
            }
            _ => return Err(self.unsupported()),
        }
        Ok(Effect::Next)
    }
}

/// Whether the host runs `insn` the way [`host_flags`] does, so that its undefined flags
/// can be taken from there: undefined flags depend on the encoding as well as the
/// operation (on Intel, `rol $7` and `rol %cl` with CL = 7 leave OF differently, and so do
/// register and memory destinations), so only the forms it executes qualify, with a
/// register destination: the logic group (AF), shifts and rotates by CL, two-operand IMUL
/// and BT with a register offset, and [`imm_form`]'s stubs. Other forms keep the liveness
/// proof.
fn host_form(insn: &Instruction) -> bool {
    match insn.mnemonic() {
        Mnemonic::And | Mnemonic::Or | Mnemonic::Xor | Mnemonic::Test => true,
        Mnemonic::Shl
        | Mnemonic::Sal
        | Mnemonic::Shr
        | Mnemonic::Sar
        | Mnemonic::Rol
        | Mnemonic::Ror => insn.op_count() == 2 && insn.op1_register() == Register::CL,
        Mnemonic::Imul => {
            insn.op_count() == 2
                && matches!(
                    insn.code(),
                    Code::Imul_r16_rm16 | Code::Imul_r32_rm32 | Code::Imul_r64_rm64
                )
        }
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => matches!(
            insn.code(),
            Code::Bt_rm16_r16
                | Code::Bt_rm32_r32
                | Code::Bt_rm64_r64
                | Code::Bts_rm16_r16
                | Code::Bts_rm32_r32
                | Code::Bts_rm64_r64
                | Code::Btr_rm16_r16
                | Code::Btr_rm32_r32
                | Code::Btr_rm64_r64
                | Code::Btc_rm16_r16
                | Code::Btc_rm32_r32
                | Code::Btc_rm64_r64
        ),
        _ => false,
    }
}

/// The host stub that runs `insn`'s encoding ([`host_flags::ImmForm`]): shifts and
/// rotates by an immediate or by one, BT/BTS/BTR/BTC with an immediate.
fn imm_form(insn: &Instruction) -> Option<host_flags::ImmForm> {
    use host_flags::ImmForm;
    let bt_digit = match insn.code() {
        Code::Bt_rm16_imm8 | Code::Bt_rm32_imm8 | Code::Bt_rm64_imm8 => Some(4),
        Code::Bts_rm16_imm8 | Code::Bts_rm32_imm8 | Code::Bts_rm64_imm8 => Some(5),
        Code::Btr_rm16_imm8 | Code::Btr_rm32_imm8 | Code::Btr_rm64_imm8 => Some(6),
        Code::Btc_rm16_imm8 | Code::Btc_rm32_imm8 | Code::Btc_rm64_imm8 => Some(7),
        _ => None,
    };
    if let Some(digit) = bt_digit {
        return Some(ImmForm::BtImm {
            digit,
            offset: insn.immediate8(),
        });
    }
    let digit = match insn.mnemonic() {
        Mnemonic::Rol => 0,
        Mnemonic::Ror => 1,
        Mnemonic::Shl | Mnemonic::Sal => 4,
        Mnemonic::Shr => 5,
        Mnemonic::Sar => 7,
        _ => return None,
    };
    // SAL (/6) is SHL's alias encoding: the stub is built with /4, so leave /6 alone.
    if insn.mnemonic() == Mnemonic::Sal {
        return None;
    }
    match insn.code() {
        Code::Rol_rm8_1
        | Code::Rol_rm16_1
        | Code::Rol_rm32_1
        | Code::Rol_rm64_1
        | Code::Ror_rm8_1
        | Code::Ror_rm16_1
        | Code::Ror_rm32_1
        | Code::Ror_rm64_1
        | Code::Shl_rm8_1
        | Code::Shl_rm16_1
        | Code::Shl_rm32_1
        | Code::Shl_rm64_1
        | Code::Shr_rm8_1
        | Code::Shr_rm16_1
        | Code::Shr_rm32_1
        | Code::Shr_rm64_1
        | Code::Sar_rm8_1
        | Code::Sar_rm16_1
        | Code::Sar_rm32_1
        | Code::Sar_rm64_1 => Some(ImmForm::ShiftOne { digit }),
        Code::Rol_rm8_imm8
        | Code::Rol_rm16_imm8
        | Code::Rol_rm32_imm8
        | Code::Rol_rm64_imm8
        | Code::Ror_rm8_imm8
        | Code::Ror_rm16_imm8
        | Code::Ror_rm32_imm8
        | Code::Ror_rm64_imm8
        | Code::Shl_rm8_imm8
        | Code::Shl_rm16_imm8
        | Code::Shl_rm32_imm8
        | Code::Shl_rm64_imm8
        | Code::Shr_rm8_imm8
        | Code::Shr_rm16_imm8
        | Code::Shr_rm32_imm8
        | Code::Shr_rm64_imm8
        | Code::Sar_rm8_imm8
        | Code::Sar_rm16_imm8
        | Code::Sar_rm32_imm8
        | Code::Sar_rm64_imm8 => Some(ImmForm::ShiftImm {
            digit,
            count: insn.immediate8(),
        }),
        _ => None,
    }
}

fn is_cmovcc(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Cmovo
            | Cmovno
            | Cmovb
            | Cmovae
            | Cmove
            | Cmovne
            | Cmovbe
            | Cmova
            | Cmovs
            | Cmovns
            | Cmovp
            | Cmovnp
            | Cmovl
            | Cmovge
            | Cmovle
            | Cmovg
    )
}

/// The ALU operation of BT/BTS/BTR/BTC.
fn bit_test_op(m: Mnemonic) -> Option<Op> {
    Some(match m {
        Mnemonic::Bt => Op::Bt,
        Mnemonic::Bts => Op::Bts,
        Mnemonic::Btr => Op::Btr,
        Mnemonic::Btc => Op::Btc,
        _ => return None,
    })
}

/// The software prefetches (PREFETCHNTA/T0/T1/T2, PREFETCHW, AMD's PREFETCH): hints that
/// never fault and change no architectural state, so running them is doing nothing.
fn is_prefetch(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Prefetchnta
            | Mnemonic::Prefetcht0
            | Mnemonic::Prefetcht1
            | Mnemonic::Prefetcht2
            | Mnemonic::Prefetchw
            | Mnemonic::Prefetch
    )
}

fn is_setcc(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Seto | Setno
            | Setb
            | Setae
            | Sete
            | Setne
            | Setbe
            | Seta
            | Sets
            | Setns
            | Setp
            | Setnp
            | Setl
            | Setge
            | Setle
            | Setg
    )
}

fn branch(kind: BranchKind, taken: bool, to: u64) -> Effect {
    Effect::Branch { kind, taken, to }
}

/// Shared by the tests below and the `interp_differential` fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
#[path = "interp/harness.rs"]
pub mod harness;

#[cfg(test)]
#[path = "interp/tests.rs"]
mod tests;

#[cfg(test)]
#[path = "interp/native_tests.rs"]
mod native_tests;

#[cfg(test)]
#[path = "interp/review_tests.rs"]
mod review_tests;

#[cfg(test)]
#[path = "interp/fast_tests.rs"]
mod fast_tests;

#[cfg(test)]
#[path = "interp/avx_tests.rs"]
mod avx_tests;

#[cfg(test)]
#[path = "interp/outside_tests.rs"]
mod outside_tests;
