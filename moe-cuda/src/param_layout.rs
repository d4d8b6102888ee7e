//! The structs the host passes to kernels by value (`FfnParams`, `RouteParams`,
//! `RopeParams`, `AttnParams`) checked against the C structs of the kernel sources: the
//! same struct names, the same field names in the same order, and for every field the
//! same offset, size and kind (signed, unsigned, floating), and the same struct size, as
//! g++ lays the C structs out. NVRTC lays out these structs of plain scalars as the host
//! compiler does on x86-64, so g++ stands in for it. Skipped without `g++`.
//!
//! A launch copies as many bytes as the kernel's parameter has from the Rust value, so a
//! Rust struct that drifts from its C twin hands the kernel wrong numbers (or reads past
//! the value): this test is the only check of that short of a GPU. A second test checks
//! the block sizes and limits the host launches with against the kernels' `#define`s.

use std::collections::BTreeMap;
use std::process::Command;

/// One field of a Rust params struct.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) name: &'static str,
    pub(crate) offset: usize,
    pub(crate) size: usize,
    /// `i` signed integer, `u` unsigned integer, `f` floating point.
    pub(crate) kind: char,
}

/// A Rust params struct: its name (the C struct's), size and fields in order.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) name: &'static str,
    pub(crate) size: usize,
    pub(crate) fields: Vec<Field>,
}

/// The scalar field types a params struct may hold, with their kind.
pub(crate) trait Scalar {
    const KIND: char;
}

impl Scalar for i32 {
    const KIND: char = 'i';
}
impl Scalar for u32 {
    const KIND: char = 'u';
}
impl Scalar for i64 {
    const KIND: char = 'i';
}
impl Scalar for u64 {
    const KIND: char = 'u';
}
impl Scalar for f32 {
    const KIND: char = 'f';
}
impl Scalar for f64 {
    const KIND: char = 'f';
}

/// A field of `S` of type `T` (named by the accessor, whose only use is its type).
pub(crate) fn field<S, T: Scalar>(name: &'static str, offset: usize, _: fn(&S) -> &T) -> Field {
    Field {
        name,
        offset,
        size: std::mem::size_of::<T>(),
        kind: T::KIND,
    }
}

/// `layout!(Struct { a, b, … })`: the [`Layout`] of `Struct`. Every field must be listed
/// (the destructuring below fails to compile otherwise), in declaration order (the test
/// compares the order with the C struct's).
macro_rules! layout {
    ($ty:ident { $($field:ident),+ $(,)? }) => {{
        let _exhaustive = |p: $ty| {
            let $ty { $($field: _),+ } = p;
        };
        $crate::param_layout::Layout {
            name: stringify!($ty),
            size: std::mem::size_of::<$ty>(),
            fields: vec![$(
                $crate::param_layout::field::<$ty, _>(
                    stringify!($field),
                    std::mem::offset_of!($ty, $field),
                    |p| &p.$field,
                )
            ),+],
        }
    }};
}
pub(crate) use layout;

/// The top-level `struct Name { … };` definitions of `source`: name, field names in
/// order, and the definition's text.
fn c_structs(source: &str) -> Vec<(String, Vec<String>, String)> {
    let mut out = Vec::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("struct ")
            .and_then(|rest| rest.strip_suffix(" {"))
        else {
            continue;
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "unexpected struct header: {line}"
        );
        let mut text = format!("{line}\n");
        let mut fields = Vec::new();
        for body in lines.by_ref() {
            text.push_str(body);
            text.push('\n');
            if body.trim() == "};" {
                break;
            }
            let decl = body.split("//").next().unwrap_or("").trim();
            if decl.is_empty() {
                continue;
            }
            assert!(
                decl.ends_with(';') && !decl.contains([',', '[', '(', '{']),
                "struct {name}: this test reads one scalar field per line, not `{decl}`"
            );
            let field = decl
                .trim_end_matches(';')
                .split_whitespace()
                .last()
                .unwrap_or_default();
            fields.push(field.to_string());
        }
        assert!(text.ends_with("};\n"), "struct {name} is not closed");
        out.push((name.to_string(), fields, text));
    }
    out
}

/// Every params struct the host passes by value.
fn rust_layouts() -> Vec<Layout> {
    let mut all = crate::layer::param_layouts();
    all.extend(crate::model::param_layouts());
    all
}

/// A C++ program printing `S struct size` and `F struct field offset size kind` lines.
fn cpp_program(structs: &[(String, Vec<String>, String)]) -> String {
    let mut src = String::from(
        "#include <cstddef>\n#include <cstdio>\n#include <type_traits>\n\n\
         template <class T> char kind() {\n    \
         return std::is_floating_point_v<T> ? 'f' : std::is_signed_v<T> ? 'i' : 'u';\n}\n\n",
    );
    for (_, _, text) in structs {
        src.push_str(text);
        src.push('\n');
    }
    src.push_str("int main() {\n");
    for (name, fields, _) in structs {
        src.push_str(&format!(
            "    std::printf(\"S {name} %zu\\n\", sizeof({name}));\n"
        ));
        for f in fields {
            src.push_str(&format!(
                "    std::printf(\"F {name} {f} %zu %zu %c\\n\", offsetof({name}, {f}), \
                 sizeof({name}::{f}), kind<decltype({name}::{f})>());\n"
            ));
        }
    }
    src.push_str("    return 0;\n}\n");
    src
}

#[test]
fn params_structs_match_the_kernels_c_structs() {
    let source = crate::kernels::program_source();
    let structs = c_structs(&source);
    let rust = rust_layouts();

    // Every C struct has its Rust twin and back: a new params struct on either side
    // must join this test.
    let c_names: Vec<&str> = structs.iter().map(|s| s.0.as_str()).collect();
    let mut rust_names: Vec<&str> = rust.iter().map(|l| l.name).collect();
    let mut sorted_c = c_names.clone();
    sorted_c.sort_unstable();
    rust_names.sort_unstable();
    assert_eq!(sorted_c, rust_names, "C structs vs Rust params structs");

    // Field names in order (no compiler needed).
    for (name, fields, _) in &structs {
        let r = rust.iter().find(|l| l.name == name).expect("checked above");
        let rust_fields: Vec<&str> = r.fields.iter().map(|f| f.name).collect();
        assert_eq!(rust_fields, *fields, "fields of {name}");
    }

    if !Command::new("g++")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("skipped: no g++ (field names checked, offsets not)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("moe-param-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cpp = dir.join("layout.cpp");
    let bin = dir.join("layout");
    std::fs::write(&cpp, cpp_program(&structs)).unwrap();
    let built = Command::new("g++")
        .args(["-std=c++17", "-Wall", "-o"])
        .arg(&bin)
        .arg(&cpp)
        .output()
        .expect("g++ ran for --version");
    let log = String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success(), "g++ failed:\n{log}");
    let run = Command::new(&bin)
        .output()
        .expect("the layout program runs");
    std::fs::remove_dir_all(&dir).ok();
    assert!(run.status.success());
    let printed = String::from_utf8(run.stdout).unwrap();

    // struct -> size; (struct, field) -> (offset, size, kind).
    let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
    let mut fields: BTreeMap<(String, String), (usize, usize, char)> = BTreeMap::new();
    for line in printed.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| w[i].parse::<usize>().unwrap();
        match w[..] {
            ["S", name, _] => {
                sizes.insert(name.into(), num(2));
            }
            ["F", name, field, _, _, kind] => {
                let kind = kind.chars().next().unwrap();
                fields.insert((name.into(), field.into()), (num(3), num(4), kind));
            }
            _ => panic!("unexpected line: {line}"),
        }
    }
    for l in &rust {
        for f in &l.fields {
            let got = fields[&(l.name.to_string(), f.name.to_string())];
            assert_eq!(
                (f.offset, f.size, f.kind),
                got,
                "{}.{}: (offset, size, kind) in Rust vs C",
                l.name,
                f.name
            );
        }
        assert_eq!(l.size, sizes[l.name], "size of {}", l.name);
    }
    println!("{printed}");
}

#[test]
fn c_structs_reads_fields_and_skips_templates() {
    let src = "template <> struct W<1> {\n    static const int a = 1;\n};\n\
               struct P {\n    int a;    // one\n    unsigned long long b; // two\n\n};\n";
    let got = c_structs(src);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "P");
    assert_eq!(got[0].1, ["a", "b"]);
}

/// The value of `#define NAME value` in `source`.
fn c_define(source: &str, name: &str) -> usize {
    let prefix = format!("#define {name} ");
    let line = source
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no #define {name}"));
    let value = line[prefix.len()..].split_whitespace().next().unwrap_or("");
    value
        .parse()
        .unwrap_or_else(|_| panic!("#define {name} is not a number: {line}"))
}

/// The block sizes and limits the host launches with are the ones the kernels assume:
/// the FFN, projection and shared-gate kernels take one row per warp of
/// `ROWS_PER_BLOCK` warps, `model_rms_norm` reduces over exactly `NORM_THREADS`
/// threads, `model_attention` merges exactly `ATTN_WARPS` warps' partial sums and holds
/// heads of at most `ATTN_MAX_DIM`, and `moe_router_select` keeps at most `MAX_K`
/// choices per token and at most 64 groups (one bit each of an `unsigned long long`),
/// as moe-core's router validation allows.
#[test]
fn launch_constants_match_the_kernels_defines() {
    let src = crate::kernels::program_source();
    let d = |name: &str| c_define(&src, name);
    let host = [
        ("ROWS_PER_BLOCK", crate::layer::ROWS_PER_BLOCK as usize),
        ("MODEL_ROWS_PER_BLOCK", crate::model::ROWS_PER_BLOCK),
        ("NORM_THREADS", crate::model::NORM_THREADS as usize),
        (
            "ATTN_WARPS",
            crate::model::ATTN_THREADS as usize / d("WARP"),
        ),
        ("ATTN_MAX_DIM", crate::model::ATTN_MAX_DIM),
    ];
    for (name, value) in host {
        assert_eq!(value, d(name), "the host's {name} vs the kernels'");
    }
    assert_eq!(crate::model::ATTN_THREADS as usize % d("WARP"), 0);
    assert!(
        moe_core::router::MAX_K <= d("MAX_K"),
        "the router allows more choices than moe_router_select holds"
    );
    const { assert!(moe_core::router::MAX_GROUPS <= u64::BITS as usize) };
}
