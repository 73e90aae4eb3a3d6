//! Raw perf ABI constants, named as in `include/uapi/linux/perf_event.h`.

/// The first 8 bytes of a (little-endian) perf.data file.
pub const PERF_MAGIC: [u8; 8] = *b"PERFILE2";
/// The first 8 bytes of a big-endian perf.data file.
pub const PERF_MAGIC_SWAPPED: [u8; 8] = *b"2ELIFREP";

// enum perf_event_sample_format
pub const PERF_SAMPLE_IP: u64 = 1 << 0;
pub const PERF_SAMPLE_TID: u64 = 1 << 1;
pub const PERF_SAMPLE_TIME: u64 = 1 << 2;
pub const PERF_SAMPLE_ADDR: u64 = 1 << 3;
pub const PERF_SAMPLE_READ: u64 = 1 << 4;
pub const PERF_SAMPLE_CALLCHAIN: u64 = 1 << 5;
pub const PERF_SAMPLE_ID: u64 = 1 << 6;
pub const PERF_SAMPLE_CPU: u64 = 1 << 7;
pub const PERF_SAMPLE_PERIOD: u64 = 1 << 8;
pub const PERF_SAMPLE_STREAM_ID: u64 = 1 << 9;
pub const PERF_SAMPLE_RAW: u64 = 1 << 10;
pub const PERF_SAMPLE_BRANCH_STACK: u64 = 1 << 11;
pub const PERF_SAMPLE_REGS_USER: u64 = 1 << 12;
pub const PERF_SAMPLE_STACK_USER: u64 = 1 << 13;
pub const PERF_SAMPLE_IDENTIFIER: u64 = 1 << 16;

// enum perf_event_read_format
pub const PERF_FORMAT_TOTAL_TIME_ENABLED: u64 = 1 << 0;
pub const PERF_FORMAT_TOTAL_TIME_RUNNING: u64 = 1 << 1;
pub const PERF_FORMAT_ID: u64 = 1 << 2;
pub const PERF_FORMAT_GROUP: u64 = 1 << 3;
pub const PERF_FORMAT_LOST: u64 = 1 << 4;

// enum perf_branch_sample_type
pub const PERF_SAMPLE_BRANCH_CALL_STACK: u64 = 1 << 11;
pub const PERF_SAMPLE_BRANCH_HW_INDEX: u64 = 1 << 17;

// enum perf_callchain_context (as u64: the negative values wrap)
pub const PERF_CONTEXT_HV: u64 = -32i64 as u64;
pub const PERF_CONTEXT_KERNEL: u64 = -128i64 as u64;
pub const PERF_CONTEXT_USER: u64 = -512i64 as u64;
pub const PERF_CONTEXT_GUEST: u64 = -2048i64 as u64;
pub const PERF_CONTEXT_GUEST_KERNEL: u64 = -2176i64 as u64;
pub const PERF_CONTEXT_GUEST_USER: u64 = -2560i64 as u64;
pub const PERF_CONTEXT_MAX: u64 = -4095i64 as u64;

// struct perf_branch_entry bit fields (little-endian layout)
pub const PERF_BRANCH_MISPRED: u64 = 1 << 0;
pub const PERF_BRANCH_PREDICTED: u64 = 1 << 1;
pub const PERF_BRANCH_IN_TX: u64 = 1 << 2;
pub const PERF_BRANCH_ABORT: u64 = 1 << 3;
pub const PERF_BRANCH_CYCLES_SHIFT: u32 = 4;
pub const PERF_BRANCH_CYCLES_MASK: u64 = 0xffff;
pub const PERF_BRANCH_TYPE_SHIFT: u32 = 20;
pub const PERF_BRANCH_TYPE_MASK: u64 = 0xf;

// enum perf_branch_type
pub const PERF_BR_UNKNOWN: u64 = 0;
pub const PERF_BR_COND: u64 = 1;
pub const PERF_BR_UNCOND: u64 = 2;
pub const PERF_BR_IND: u64 = 3;
pub const PERF_BR_CALL: u64 = 4;
pub const PERF_BR_IND_CALL: u64 = 5;
pub const PERF_BR_RET: u64 = 6;
pub const PERF_BR_SYSCALL: u64 = 7;
pub const PERF_BR_SYSRET: u64 = 8;
pub const PERF_BR_COND_CALL: u64 = 9;
pub const PERF_BR_COND_RET: u64 = 10;
pub const PERF_BR_ERET: u64 = 11;
pub const PERF_BR_IRQ: u64 = 12;
pub const PERF_BR_SERROR: u64 = 13;
pub const PERF_BR_NO_TX: u64 = 14;

// enum perf_event_type, and perf's own (user) record types (tools/perf/util/event.h)
pub const PERF_RECORD_SAMPLE: u32 = 9;
pub const PERF_RECORD_USER_TYPE_START: u32 = 64;
pub const PERF_RECORD_FINISHED_ROUND: u32 = 68;
/// `struct perf_record_id_index`: `u64 nr`, `nr` × `{ id, idx, cpu, tid }`, then
/// (perf 6.0+) `nr` × `{ machine_pid, vcpu }` naming the guest machine of each id.
pub const PERF_RECORD_ID_INDEX: u32 = 69;
pub const PERF_RECORD_AUXTRACE: u32 = 71;
pub const PERF_RECORD_COMPRESSED: u32 = 81;
pub const PERF_RECORD_COMPRESSED2: u32 = 83;

// PERF_RECORD_MISC_* (header.misc)
pub const PERF_RECORD_MISC_MMAP_BUILD_ID: u16 = 1 << 14;

/// `struct perf_file_header`: magic, size, attr_size, then three `perf_file_section`s
/// (attrs, data, event_types), each `{ u64 offset; u64 size; }`.
pub const PERF_FILE_HEADER_DATA_OFFSET: usize = 40;
/// Offset of the attrs `perf_file_section` in `struct perf_file_header`.
pub const PERF_FILE_HEADER_ATTRS_OFFSET: usize = 24;
/// Offset of the event_types `perf_file_section` in `struct perf_file_header`.
pub const PERF_FILE_HEADER_EVENT_TYPES_OFFSET: usize = 56;
/// Size of one `struct perf_file_section` (`{ u64 offset; u64 size; }`).
pub const PERF_FILE_SECTION_LEN: usize = 16;
/// Offset of the `adds_features` bitmap (256 bits) in `struct perf_file_header`.
pub const PERF_FILE_HEADER_FEATURES_OFFSET: usize = 72;
/// Size of `struct perf_file_header`.
pub const PERF_FILE_HEADER_LEN: usize = 104;

// HEADER_* feature bits (tools/perf/util/header.h) whose sections are checked before
// linux-perf-data parses them.
pub const HEADER_HOSTNAME: u32 = 3;
/// The first published `struct perf_event_attr` size.
pub const PERF_ATTR_SIZE_VER0: u64 = 64;
pub const HEADER_OSRELEASE: u32 = 4;
pub const HEADER_VERSION: u32 = 5;
pub const HEADER_ARCH: u32 = 6;
pub const HEADER_CPUDESC: u32 = 8;
pub const HEADER_CPUID: u32 = 9;
pub const HEADER_EVENT_DESC: u32 = 12;

// What the perf.data writer (lbrprof-reports `perfdata_out`) needs beyond the reader.
// HEADER_* feature bits (tools/perf/util/header.h).
pub const HEADER_BUILD_ID: u32 = 2;
pub const HEADER_NRCPUS: u32 = 7;
pub const HEADER_CMDLINE: u32 = 11;
pub const HEADER_BRANCH_STACK: u32 = 15;
pub const HEADER_SAMPLE_TIME: u32 = 21;
/// `NAME_ALIGN` (tools/perf/util/header.h): strings in feature sections are padded
/// to this many bytes.
pub const NAME_ALIGN: usize = 64;
/// `PERF_ATTR_SIZE_VER5`: the `perf_event_attr` size lbrprof writes (every field up
/// to `aux_sample_size`), which perf 4.x and later read.
pub const PERF_ATTR_SIZE_VER5: u32 = 112;

// enum perf_type_id
pub const PERF_TYPE_HARDWARE: u32 = 0;
pub const PERF_TYPE_SOFTWARE: u32 = 1;
// enum perf_hw_id / perf_sw_ids
pub const PERF_COUNT_HW_CPU_CYCLES: u64 = 0;
pub const PERF_COUNT_HW_INSTRUCTIONS: u64 = 1;
pub const PERF_COUNT_HW_BRANCH_INSTRUCTIONS: u64 = 4;
pub const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
pub const PERF_COUNT_SW_TASK_CLOCK: u64 = 1;

// struct perf_event_attr flag bits (the bit field after read_format)
pub const ATTR_FLAG_EXCLUDE_USER: u64 = 1 << 4;
pub const ATTR_FLAG_EXCLUDE_KERNEL: u64 = 1 << 5;
pub const ATTR_FLAG_EXCLUDE_HV: u64 = 1 << 6;
pub const ATTR_FLAG_MMAP: u64 = 1 << 8;
pub const ATTR_FLAG_COMM: u64 = 1 << 9;
pub const ATTR_FLAG_FREQ: u64 = 1 << 10;
pub const ATTR_FLAG_TASK: u64 = 1 << 13;
/// `precise_ip`, two bits.
pub const ATTR_FLAG_PRECISE_IP_SHIFT: u32 = 15;
pub const ATTR_FLAG_SAMPLE_ID_ALL: u64 = 1 << 18;
pub const ATTR_FLAG_EXCLUDE_HOST: u64 = 1 << 19;
pub const ATTR_FLAG_EXCLUDE_GUEST: u64 = 1 << 20;
pub const ATTR_FLAG_MMAP2: u64 = 1 << 23;
pub const ATTR_FLAG_COMM_EXEC: u64 = 1 << 24;

// enum perf_branch_sample_type
pub const PERF_SAMPLE_BRANCH_ANY: u64 = 1 << 3;

// enum perf_event_type
pub const PERF_RECORD_MMAP: u32 = 1;
pub const PERF_RECORD_LOST: u32 = 2;
pub const PERF_RECORD_COMM: u32 = 3;
pub const PERF_RECORD_EXIT: u32 = 4;
pub const PERF_RECORD_THROTTLE: u32 = 5;
pub const PERF_RECORD_FORK: u32 = 7;
pub const PERF_RECORD_MMAP2: u32 = 10;

// PERF_RECORD_MISC_* cpumodes (header.misc & PERF_RECORD_MISC_CPUMODE_MASK) and flags
pub const PERF_RECORD_MISC_CPUMODE_UNKNOWN: u16 = 0;
pub const PERF_RECORD_MISC_KERNEL: u16 = 1;
pub const PERF_RECORD_MISC_USER: u16 = 2;
pub const PERF_RECORD_MISC_HYPERVISOR: u16 = 3;
pub const PERF_RECORD_MISC_GUEST_KERNEL: u16 = 4;
pub const PERF_RECORD_MISC_GUEST_USER: u16 = 5;
pub const PERF_RECORD_MISC_COMM_EXEC: u16 = 1 << 13;
/// In a `HEADER_BUILD_ID` entry: the build-id's length is in byte 20 of its field.
pub const PERF_RECORD_MISC_BUILD_ID_SIZE: u16 = 1 << 15;
