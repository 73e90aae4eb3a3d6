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
    let mut palette = PaletteMap::default();
    for g in &guest {
        palette.insert(g, GUEST_COLOR);
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
