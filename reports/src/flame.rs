//! SVG flame graphs through inferno, from the folded stacks of a [`Profile`].
//!
//! Output is deterministic: folded lines are sorted, colours come from a hash of the
//! function name (inferno's `deterministic` mode), and guest frames get a fixed blue so
//! host and guest read apart in one picture.

use std::collections::HashSet;
use std::io::Write;

use inferno::flamegraph::{self, Options, color::Color, color::PaletteMap};

use crate::aggregate::Profile;
use crate::loc::{ModuleKind, ModuleTable};
use crate::render::{StackSource, folded_lines};
use crate::symbols::SymbolTable;

/// Errors while drawing a flame graph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlameError {
    #[error("there are no stacks to draw{0}")]
    Empty(&'static str),
    #[error("cannot write the flame graph")]
    Write(#[source] std::io::Error),
}

/// What to draw.
#[derive(Clone, Debug)]
pub struct FlameOptions {
    pub title: String,
    pub subtitle: Option<String>,
    pub source: StackSource,
    /// Draw icicles (root at the top).
    pub inverted: bool,
}

/// Colour of guest frames (a blue apart from the default warm palette).
const GUEST_COLOR: Color = Color {
    r: 80,
    g: 140,
    b: 230,
};

/// Writes the SVG for `profile`'s stacks.
pub fn write_svg(
    profile: &Profile,
    syms: &SymbolTable,
    opts: &FlameOptions,
    w: impl Write,
) -> Result<(), FlameError> {
    let lines = folded_lines(profile, syms, opts.source);
    if lines.is_empty() {
        return Err(FlameError::Empty(match opts.source {
            StackSource::Lbr => {
                " from LBR call-stack data (record with --call-graph lbr, or a guest with snapshots)"
            }
            StackSource::CallChains => "",
        }));
    }
    // Names of guest frames, coloured apart.
    let modules = &profile.spaces.modules;
    let mut guest: HashSet<String> = HashSet::new();
    let stacks = match opts.source {
        StackSource::CallChains => &profile.stacks,
        StackSource::Lbr => &profile.lbr_stacks,
    };
    for l in stacks.keys().flatten() {
        let kind = modules.get(l.module).kind;
        if kind == ModuleKind::Guest
            || l.module == ModuleTable::GUEST_ROOT
            || l.module == ModuleTable::GUEST_UNKNOWN
        {
            guest.insert(syms.function_name(modules, l).replace([';', '\n'], ":"));
        }
    }
    write_svg_lines(&lines, &guest, opts, w)
}

/// Writes the SVG for ready-made folded `lines` (`root;...;leaf count`), colouring the
/// frames named in `guest` apart (the unified host+guest stacks of [`crate::vm`]).
pub fn write_svg_lines<S: AsRef<str>>(
    lines: &[String],
    guest: impl IntoIterator<Item = S>,
    opts: &FlameOptions,
    w: impl Write,
) -> Result<(), FlameError> {
    if lines.is_empty() {
        return Err(FlameError::Empty(""));
    }
    let mut palette = PaletteMap::default();
    for g in guest {
        palette.insert(g.as_ref(), GUEST_COLOR);
    }
    let mut o = Options::default();
    o.title = opts.title.clone();
    o.subtitle = opts.subtitle.clone();
    o.count_name = "samples".to_owned();
    o.deterministic = true;
    o.hash = true;
    o.palette_map = Some(&mut palette);
    if opts.inverted {
        o.direction = flamegraph::Direction::Inverted;
    }
    flamegraph::from_lines(&mut o, lines.iter().map(String::as_str), w).map_err(FlameError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregateOptions, Aggregator};
    use crate::lbr::tests::snapshot;
    use crate::symbols::{NoSymbols, SymbolTable};
    use lbrprof_data::model::{CpuMode, Event, Frame, HostSample};

    fn profile() -> Profile {
        let mut a = Aggregator::new(AggregateOptions::default());
        for i in 0..20u64 {
            a.add(&Event::Sample(HostSample {
                pid: 1,
                period: 1,
                ip: 0x1000 + i % 3,
                mode: CpuMode::User,
                callchain: vec![
                    Frame {
                        addr: 0x1000 + i % 3,
                        mode: CpuMode::User,
                    },
                    Frame {
                        addr: 0x2000,
                        mode: CpuMode::User,
                    },
                ],
                ..HostSample::default()
            }));
        }
        a.add(&Event::Snapshot(snapshot(0, &[(0x10, 0x20, 0)])));
        a.finish()
    }

    /// Parses the SVG back with an XML parser: it must be well-formed throughout.
    fn assert_well_formed(svg: &[u8]) -> usize {
        let mut reader = quick_xml::Reader::from_reader(svg);
        let mut buf = Vec::new();
        let mut elements = 0;
        loop {
            match reader.read_event_into(&mut buf) {
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(quick_xml::events::Event::Start(_) | quick_xml::events::Event::Empty(_)) => {
                    elements += 1
                }
                Ok(_) => {}
                Err(e) => panic!(
                    "SVG is not well-formed at {}: {e}",
                    reader.buffer_position()
                ),
            }
            buf.clear();
        }
        elements
    }

    #[test]
    fn svg_is_well_formed_deterministic_and_colours_guest_frames() {
        let p = profile();
        let syms = SymbolTable::build(&p, &NoSymbols);
        let opts = FlameOptions {
            title: "t <&> \"q\"".into(),
            subtitle: Some("s".into()),
            source: StackSource::CallChains,
            inverted: false,
        };
        let mut a = Vec::new();
        write_svg(&p, &syms, &opts, &mut a).unwrap();
        let mut b = Vec::new();
        write_svg(&p, &syms, &opts, &mut b).unwrap();
        assert_eq!(a, b);
        assert!(assert_well_formed(&a) > 10);
        let text = String::from_utf8(a).unwrap();
        assert!(text.contains("[guest vcpu0]"));
        assert!(text.contains("rgb(80,140,230)"));
    }

    #[test]
    fn lbr_stacks_missing_is_a_clear_error() {
        let mut a = Aggregator::new(AggregateOptions::default());
        a.add(&Event::Sample(HostSample {
            period: 1,
            ip: 1,
            ..HostSample::default()
        }));
        let p = a.finish();
        let syms = SymbolTable::build(&p, &NoSymbols);
        let opts = FlameOptions {
            title: String::new(),
            subtitle: None,
            source: StackSource::Lbr,
            inverted: false,
        };
        let err = write_svg(&p, &syms, &opts, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("LBR call-stack"), "{err}");
    }
}
