//! `lbrprof-symbolizer`: turns addresses from host processes, the host kernel and guest
//! images into frames (function, offset, file:line, inlined frames), from ELF and DWARF.
//!
//! Non-goals: no I/O policy beyond opening the files it is pointed at, no CLI flags.
