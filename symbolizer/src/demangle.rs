//! Demangling of symbol-table names, in the conventions of one of the two tools users
//! compare with: LLVM (`llvm-symbolizer`, `llvm-cxxfilt`) or binutils (`addr2line -C`,
//! `c++filt`).
//!
//! Names are demangled by `rustc-demangle` (Rust legacy and v0) and `cpp_demangle`
//! (Itanium C++). `cpp_demangle` prints its own dialect; [`NameStyle::Llvm`] rewrites
//! the parts where it differs from LLVM's demangler, measured on the 47 000 exported C++
//! names of libLLVM-16 and libstdc++ against `llvm-cxxfilt-16` (see
//! `tests/symbolize.rs`):
//! * template argument lists close with `>>`, not `> >`;
//! * typed integer literals print with a suffix (`3u`, `3ul`, `-1l`) where the type has one;
//! * lambdas and unnamed types are `'lambda'(int)`, `'lambda0'(int)`, `'unnamed'`;
//! * thunks are `virtual thunk to X` / `non-virtual thunk to X`;
//! * `std::istream`, `std::ostream` and `std::iostream` keep their abbreviated names
//!   except as constructor and destructor scopes;
//! * a clone suffix (`foo.cold`, `.constprop.0`, `.llvm.123`) is ` (.cold)` after the
//!   demangled name;
//! * an empty template parameter pack leaves no `, ` behind (`cpp_demangle` prints
//!   `f<int, >`).
//!
//! Rust legacy names (`_ZN…17h<hash>E`) are always demangled as Rust, without the hash:
//! LLVM 16 reads them as C++ and prints the hash and the `$LT$`-style escapes, which no
//! one wants to read; that difference is deliberate.

use std::borrow::Cow;

/// Whose conventions names follow.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum NameStyle {
    /// `llvm-symbolizer`: the containing function is named by the symbol table (its
    /// clone suffix shown), demangled the way LLVM's demangler prints it.
    #[default]
    Llvm,
    /// binutils `addr2line -f -i -C`: the containing function is named by the DWARF where
    /// it has a name, demangled the way libiberty prints it.
    Gnu,
}

/// A symbol-table name demangled in `style`. Only names carrying a mangling prefix
/// (`_Z` Itanium C++ and legacy Rust, `_R` Rust v0) are touched: the symbol table does
/// not say the language, and without a prefix a short C name is also a valid C++ *type*
/// encoding (`a` is `signed char`), which a demangler asked blindly would "decode".
///
/// A PLT entry's synthetic `name@plt` is demangled as `name`, then suffixed, as perf
/// names it (`std::locale::locale()@plt`).
pub(crate) fn demangle_symbol(raw: &str, style: NameStyle) -> String {
    if let Some(stem) = raw.strip_suffix("@plt") {
        return demangle_symbol(stem, style) + "@plt";
    }
    if !(raw.starts_with("_Z") || raw.starts_with("_R")) {
        return raw.to_owned();
    }
    match style {
        NameStyle::Gnu => {
            let d = addr2line::demangle_auto(Cow::Borrowed(raw), None);
            if rustc_demangle::try_demangle(raw).is_ok() {
                d.into_owned()
            } else {
                cxx_to_gnu(&d)
            }
        }
        NameStyle::Llvm => llvm(raw),
    }
}

/// Rewrites `cpp_demangle` output into what libiberty (`c++filt`, `addr2line -C`) prints,
/// where the two differ only in spelling: typed integer literals (`0ul`, as LLVM prints
/// them too) and empty template parameter packs (`f<int>`, not `f<int, >` or
/// `f<int, , >`). Differences that are `cpp_demangle` mistakes (a pack expanded into
/// the wrong parameters, `&&` lost in a pack, names it cannot decode) are left alone; see
/// `tests/symbolize_gnu.rs`.
pub(crate) fn cxx_to_gnu(s: &str) -> String {
    let mut s = typed_literals(s);
    while s.contains(", >") {
        s = s.replace(", >", ">");
    }
    s
}

fn llvm(raw: &str) -> String {
    // Legacy Rust names spell `::` inside identifiers as `..`: only rustc-demangle knows
    // where such a name ends (and it drops a `.llvm.` suffix).
    if raw.starts_with("_ZN")
        && let Ok(d) = rustc_demangle::try_demangle(raw)
    {
        return format!("{d:#}");
    }
    // A suffix after the mangled name: `.cold`, `.constprop.0`, `.llvm.1234`, `.0`.
    let (name, suffix) = match raw.find('.') {
        Some(i) => (&raw[..i], Some(&raw[i..])),
        None => (raw, None),
    };
    // Transactional-memory clones: LLVM 16 does not demangle them.
    if name.starts_with("_ZGT") {
        return raw.to_owned();
    }
    let with_suffix = |s: String| match suffix {
        Some(suffix) => format!("{s} ({suffix})"),
        None => s,
    };
    if name.starts_with("_R") {
        return match rustc_demangle::try_demangle(name) {
            Ok(d) => with_suffix(format!("{d:#}")),
            Err(_) => raw.to_owned(),
        };
    }
    match cpp_demangle::Symbol::new(name.as_bytes())
        .ok()
        .and_then(|s| s.demangle_with_options(&Default::default()).ok())
    {
        Some(d) => with_suffix(cxx_to_llvm(&d, name)),
        None => raw.to_owned(),
    }
}

/// Rewrites `cpp_demangle` output into what LLVM's Itanium demangler prints.
fn cxx_to_llvm(s: &str, mangled: &str) -> String {
    let s = thunk(s).unwrap_or_else(|| s.to_owned());
    let s = closing_angles(&s)
        .replace("operator<< <", "operator<<<")
        .replace("operator< <", "operator<<");
    let s = s.replace(", >", ">");
    let s = typed_literals(&s);
    let s = lambdas(&s);
    let s = generic_auto(&s);
    let s = structors(&s);
    // Abbreviated only where the mangled name used the abbreviation (`Si`, `So`, `Sd`),
    // not where it spelled the class out (a dependent name like `basic_istream<char, T_>`).
    let s = if mangled.contains("basic_istream")
        || mangled.contains("basic_ostream")
        || mangled.contains("basic_iostream")
    {
        s
    } else {
        abbreviations(&s)
    };
    function_types(&s)
}

/// `cpp_demangle` names the constructors and destructors of the abbreviated standard
/// classes by the abbreviation (`std::string::string(`); LLVM spells the class out.
fn structors(s: &str) -> String {
    const NAMES: [(&str, &str); 4] = [
        (
            "std::string::",
            "std::basic_string<char, std::char_traits<char>, std::allocator<char>>::",
        ),
        (
            "std::istream::",
            "std::basic_istream<char, std::char_traits<char>>::",
        ),
        (
            "std::ostream::",
            "std::basic_ostream<char, std::char_traits<char>>::",
        ),
        (
            "std::iostream::",
            "std::basic_iostream<char, std::char_traits<char>>::",
        ),
    ];
    let mut s = s.to_owned();
    for (short, long) in NAMES {
        let class = short.trim_end_matches("::").trim_start_matches("std::");
        for tilde in ["", "~"] {
            let from = format!("{short}{tilde}{class}");
            if let Some(i) = s.find(&from)
                && s[i + from.len()..].starts_with(['(', '<'])
            {
                let to = format!("{long}{tilde}basic_{class}");
                s = format!("{}{to}{}", &s[..i], &s[i + from.len()..]);
            }
        }
    }
    s
}

/// A function type in a template argument list is `R (A)`; `cpp_demangle` leaves the
/// space out when `R` is a class type. (A parameter list followed by `::` belongs to a
/// function naming a local entity: left alone.)
fn function_types(s: &str) -> String {
    if !s.contains('<') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    for (i, c) in s.char_indices() {
        // `<` and `>` of an operator's name open and close nothing.
        let in_operator = ["operator", "operator<", "operator>", "operator-"]
            .iter()
            .any(|k| out.ends_with(k));
        match c {
            '<' if !in_operator => depth += 1,
            '>' if !in_operator => depth = depth.saturating_sub(1),
            '(' if depth > 0
                && i > 0
                && (bytes[i - 1] == b'>'
                    || bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_')
                && !["decltype", "sizeof", "alignof", "noexcept", "operator"]
                    .iter()
                    .any(|k| out.ends_with(k)) =>
            {
                // Find the matching `)`: a scope follows a function's parameters.
                let mut d = 0usize;
                let mut end = None;
                for (j, c2) in s[i..].char_indices() {
                    match c2 {
                        '(' => d += 1,
                        ')' => {
                            d -= 1;
                            if d == 0 {
                                end = Some(i + j);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let scope = end.is_some_and(|e| {
                    let after = &s[e + 1..];
                    after.starts_with("::") || after.starts_with(" const::")
                });
                if !scope {
                    out.push(' ');
                }
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// `{virtual override thunk({offset(-8)}, X)}` is `non-virtual thunk to X`;
/// `{virtual override thunk({virtual offset(0, -24)}, X)}` is `virtual thunk to X`.
fn thunk(s: &str) -> Option<String> {
    let rest = s
        .strip_prefix("{virtual override thunk({")?
        .strip_suffix(")}")?;
    let (kind, target) = rest.split_once("}, ")?;
    let prefix = if kind.starts_with("virtual offset") {
        "virtual thunk to "
    } else if kind.starts_with("offset") {
        "non-virtual thunk to "
    } else {
        return None;
    };
    Some(format!("{prefix}{target}"))
}

/// `a<b<c> >` → `a<b<c>>`.
fn closing_angles(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    for (i, c) in s.char_indices() {
        if c == ' ' && i > 0 && bytes[i - 1] == b'>' && bytes.get(i + 1) == Some(&b'>') {
            // Not `operator> >`-like text: the previous `>` closes a template list when
            // it is not itself preceded by `operator`.
            if !out.ends_with("operator>") {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// `(unsigned int)3` → `3u`, as LLVM prints literals of types with a suffix.
fn typed_literals(s: &str) -> String {
    const SUFFIXES: [(&str, &str); 6] = [
        ("(int)", ""),
        ("(unsigned int)", "u"),
        ("(long)", "l"),
        ("(unsigned long)", "ul"),
        ("(long long)", "ll"),
        ("(unsigned long long)", "ull"),
    ];
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    'outer: while let Some(i) = rest.find('(') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        // Only a literal in an argument list: after `<`, `, ` or `(`.
        let literal_position = out.ends_with('<') || out.ends_with(", ");
        if literal_position {
            for (cast, suffix) in SUFFIXES {
                if let Some(after) = rest.strip_prefix(cast) {
                    let digits = after
                        .char_indices()
                        .take_while(|(j, c)| c.is_ascii_digit() || (*j == 0 && *c == '-'))
                        .count();
                    if digits > 0 && after[..digits].chars().any(|c| c.is_ascii_digit()) {
                        out.push_str(&after[..digits]);
                        out.push_str(suffix);
                        rest = &after[digits..];
                        continue 'outer;
                    }
                }
            }
        }
        out.push('(');
        rest = &rest[1..];
    }
    out.push_str(rest);
    out
}

/// `{lambda(int)#1}` → `'lambda'(int)`, `#2` → `'lambda0'`; `{unnamed type#1}` →
/// `'unnamed'`.
fn lambdas(s: &str) -> String {
    if !s.contains("{lambda(") && !s.contains("{unnamed type#") {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("{unnamed type#")
            && let Some(end) = after.find('}')
            && let Ok(n) = after[..end].parse::<u32>()
        {
            out.push_str(&numbered("unnamed", n));
            rest = &after[end + 1..];
            continue;
        }
        if let Some(after) = rest.strip_prefix("{lambda") {
            // The parameter list, with nested parentheses (and nested lambdas).
            let mut depth = 0usize;
            let mut close = None;
            for (j, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            close = Some(j);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            if let Some(close) = close
                && let Some(tail) = after[close + 1..].strip_prefix('#')
                && let Some(end) = tail.find('}')
                && let Ok(n) = tail[..end].parse::<u32>()
            {
                out.push_str(&numbered("lambda", n));
                out.push_str(&lambdas(&after[..=close]));
                rest = &tail[end + 1..];
                continue;
            }
        }
        out.push('{');
        rest = &rest[1..];
    }
    out.push_str(rest);
    out
}

/// A generic lambda's parameters are `auto`, not `auto:1`.
fn generic_auto(s: &str) -> String {
    if !s.contains("auto:") {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("auto:") {
        out.push_str(&rest[..i + 4]);
        let after = &rest[i + 5..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            out.push(':');
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// `'lambda'` for the first, `'lambda0'` for the second, ...
fn numbered(what: &str, n: u32) -> String {
    match n {
        0 | 1 => format!("'{what}'"),
        n => format!("'{what}{}'", n - 2),
    }
}

/// `std::basic_istream<char, std::char_traits<char>>` → `std::istream` (and `ostream`,
/// `iostream`), except as the scope of its own constructor or destructor.
fn abbreviations(s: &str) -> String {
    const NAMES: [(&str, &str, &str); 3] = [
        (
            "std::basic_istream<char, std::char_traits<char>>",
            "std::istream",
            "basic_istream",
        ),
        (
            "std::basic_ostream<char, std::char_traits<char>>",
            "std::ostream",
            "basic_ostream",
        ),
        (
            "std::basic_iostream<char, std::char_traits<char>>",
            "std::iostream",
            "basic_iostream",
        ),
    ];
    let mut s = s.to_owned();
    for (long, short, ctor) in NAMES {
        if !s.contains(long) {
            continue;
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        while let Some(i) = rest.find(long) {
            out.push_str(&rest[..i]);
            let after = &rest[i + long.len()..];
            let structor = after
                .strip_prefix("::")
                .map(|a| a.strip_prefix('~').unwrap_or(a))
                .is_some_and(|a| a.starts_with(ctor) && a[ctor.len()..].starts_with('('));
            // Part of a longer name (`std::basic_istream<char, std::char_traits<char>>`
            // inside another's arguments is a type and abbreviated too).
            out.push_str(if structor { long } else { short });
            rest = after;
        }
        out.push_str(rest);
        s = out;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnu_style_spells_literals_and_empty_packs_like_libiberty() {
        // std::pair<int const, long>::pair<int const&, 0ul>(...): c++filt prints `0ul`.
        let s = cxx_to_gnu("f<int const&, (unsigned long)0, , >(std::tuple<>&)");
        assert_eq!(s, "f<int const&, 0ul>(std::tuple<>&)");
        assert_eq!(
            cxx_to_gnu("g<std::vector<int> >()"),
            "g<std::vector<int> >()"
        );
        // Through demangle_symbol: C++ gets the rewrite, Rust legacy names do not need it.
        let mangled = "_Z1fIJiEEvDpT_";
        assert_eq!(demangle_symbol(mangled, NameStyle::Gnu), "void f<int>(int)");
    }

    #[test]
    fn plt_entries_are_demangled_before_their_suffix() {
        for style in [NameStyle::Llvm, NameStyle::Gnu] {
            assert_eq!(
                demangle_symbol("_ZNSt6localeC1Ev@plt", style),
                "std::locale::locale()@plt"
            );
            assert_eq!(demangle_symbol("puts@plt", style), "puts@plt");
            assert_eq!(
                demangle_symbol("*ABS*+0xb0d70@plt", style),
                "*ABS*+0xb0d70@plt"
            );
        }
    }

    #[test]
    fn plain_names_are_left_alone() {
        for style in [NameStyle::Llvm, NameStyle::Gnu] {
            for plain in ["a", "b", "i", "main", "Sv", "St", "_start"] {
                assert_eq!(demangle_symbol(plain, style), plain);
            }
        }
    }

    #[test]
    fn gnu_style_is_binutils() {
        let g = |s| demangle_symbol(s, NameStyle::Gnu);
        assert_eq!(g("_Z3fooi"), "foo(int)");
        assert_eq!(
            g("_ZN4core3ptr13drop_in_place17h0123456789abcdefE"),
            "core::ptr::drop_in_place"
        );
        assert_eq!(g("_RNvCs1234_7mycrate3foo"), "mycrate::foo");
    }

    /// Each expected string is what `llvm-cxxfilt-16` prints for the name.
    #[test]
    fn llvm_style_is_llvm_cxxfilt() {
        let cases = [
            ("_Z1fRSi", "f(std::istream&)"),
            ("_ZNSi6ignoreEv", "std::istream::ignore()"),
            ("_ZN1aUlvE_clEv", "a::'lambda'()::operator()()"),
            ("_ZN1aUlvE0_clEv", "a::'lambda0'()::operator()()"),
            (
                "_ZZ4mainENKUlRiE_clES_",
                "main::'lambda'(int&)::operator()(int&) const",
            ),
            (
                "_ZTv0_n24_NSdD1Ev",
                "virtual thunk to std::basic_iostream<char, std::char_traits<char>>::~basic_iostream()",
            ),
            ("_ZThn8_N1A1fEv", "non-virtual thunk to A::f()"),
            ("_Z3foov.cold", "foo() (.cold)"),
            ("_ZN1a1bEv.constprop.0", "a::b() (.constprop.0)"),
            ("_Z1fILm3EEvv", "void f<3ul>()"),
            ("_Z1fILx3EEvv", "void f<3ll>()"),
            ("_Z1fILj3EEvv", "void f<3u>()"),
            ("_Z1fILin3EEvv", "void f<-3>()"),
            ("_Z1fILs3EEvv", "void f<(short)3>()"),
            ("_Z1fIN1aUt_EEvv", "void f<a::'unnamed'>()"),
            ("_Z1fIiJEEvv", "void f<int>()"),
            (
                "_ZZ4mainENKUlRT_RT0_E_clEv",
                "main::'lambda'(auto&, auto&)::operator()() const",
            ),
            (
                "_ZNKSt8functionIFviEEclEi",
                "std::function<void (int)>::operator()(int) const",
            ),
            (
                "_ZNSt6vectorIiSaIiEE9push_backEOi",
                "std::vector<int, std::allocator<int>>::push_back(int&&)",
            ),
            ("_RNvCs1234_7mycrate3foo", "mycrate::foo"),
            (
                "_RNvCs1234_7mycrate3foo.llvm.123",
                "mycrate::foo (.llvm.123)",
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(demangle_symbol(raw, NameStyle::Llvm), want, "{raw}");
        }
        // Legacy Rust: demangled as Rust (LLVM 16 prints the C++ reading with the hash).
        assert_eq!(
            demangle_symbol(
                "_ZN4core3ptr13drop_in_place17h0123456789abcdefE",
                NameStyle::Llvm
            ),
            "core::ptr::drop_in_place"
        );
        // `..` inside a legacy identifier is not a suffix.
        assert_eq!(
            demangle_symbol(
                "_ZN5alloc11collections5btree4node41Handle$LT$alloc..collections..NodeRef$GT$6insert17h0123456789abcdefE",
                NameStyle::Llvm
            ),
            "alloc::collections::btree::node::Handle<alloc::collections::NodeRef>::insert"
        );
    }
}
