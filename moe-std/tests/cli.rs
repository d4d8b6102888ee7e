//! The `moe` binary against the gguf-py fixtures in `moe-core/tests/fixtures`.
//!
//! - `moe inspect --json` reports what gguf-py's reader reported (`*.inspect.json`): every
//!   field of the fixture JSON must be in ours with the same value.
//! - `moe dequant` equals gguf-py's dequantization (`types/<name>.f32`) bit for bit.
//! - Failures exit non-zero, name the file on stderr and leave no output file behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value as Json;

mod run_moe;

use run_moe::{moe, ok};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../moe-core/tests/fixtures")
}

/// A fresh, empty folder under cargo's per-target temporary directory.
fn scratch(label: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "cli-{label}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn inspect_json(path: &Path, extra: &[&str]) -> Json {
    let path = path.to_str().unwrap();
    let mut args = vec!["inspect", path, "--json"];
    args.extend_from_slice(extra);
    serde_json::from_slice(&ok(&args).stdout).expect("inspect --json prints JSON")
}

/// Every field of `expected` is in `actual` with an equal value (recursively; lists must
/// have the same length). Numbers compare by value: an integer only equals an integer,
/// a float only a float (the `bits` fields carry exact float patterns).
fn assert_contains(actual: &Json, expected: &Json, path: &str, errors: &mut Vec<String>) {
    match (actual, expected) {
        (Json::Object(a), Json::Object(e)) => {
            for (key, e_value) in e {
                match a.get(key) {
                    Some(a_value) => {
                        assert_contains(a_value, e_value, &format!("{path}.{key}"), errors)
                    }
                    None => errors.push(format!("{path}.{key}: missing")),
                }
            }
        }
        (Json::Array(a), Json::Array(e)) => {
            if a.len() != e.len() {
                errors.push(format!(
                    "{path}: {} elements, expected {}",
                    a.len(),
                    e.len()
                ));
                return;
            }
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                assert_contains(a, e, &format!("{path}[{i}]"), errors);
            }
        }
        (Json::Number(a), Json::Number(e)) => {
            let same = match (a.as_u64(), a.as_i64(), e.as_u64(), e.as_i64()) {
                (Some(a), _, Some(e), _) => a == e,
                (_, Some(a), _, Some(e)) => a == e,
                _ => a.is_f64() && e.is_f64() && a.as_f64() == e.as_f64(),
            };
            if !same {
                errors.push(format!("{path}: {a}, expected {e}"));
            }
        }
        (a, e) if a == e => {}
        (a, e) => errors.push(format!("{path}: {a}, expected {e}")),
    }
}

fn check_inspect_against_fixture(name: &str) {
    let dir = fixtures();
    let ours = inspect_json(&dir.join(format!("{name}.gguf")), &[]);
    let text = fs::read_to_string(dir.join(format!("{name}.inspect.json"))).unwrap();
    let expected: Json = serde_json::from_str(&text).unwrap();
    let mut errors = Vec::new();
    assert_contains(&ours, &expected, name, &mut errors);
    assert!(
        errors.is_empty(),
        "{name}: moe inspect --json differs from gguf-py:\n{}",
        errors.join("\n")
    );
}

#[test]
fn inspect_json_matches_gguf_py_on_the_moe_model() {
    check_inspect_against_fixture("model");
    // Spot checks, so a fixture that lost its content would not pass silently.
    let ours = inspect_json(&fixtures().join("model.gguf"), &[]);
    assert_eq!(ours["tensors"].as_array().unwrap().len(), 23);
    assert_eq!(ours["metadata"].as_array().unwrap().len(), 49);
    assert_eq!(ours["architecture"], "llama");
    let moe = &ours["moe"];
    assert_eq!(moe["expert_count"], 8);
    assert_eq!(moe["expert_used_count"], 2);
    assert_eq!(moe["expert_shared_count"], Json::Null);
    assert_eq!(moe["moe_layers"], 2);
    // gate and up: Q4_K [256, 32] per expert = 32 rows × 144 B; down: Q8_0 [32, 256] =
    // 256 rows × 34 B.
    assert_eq!(moe["bytes_per_expert_per_layer"], 2 * 32 * 144 + 256 * 34);
    assert_eq!(moe["bytes_per_expert"], 2 * (2 * 32 * 144 + 256 * 34));
}

#[test]
fn inspect_json_matches_gguf_py_on_nested_arrays_and_alignment() {
    check_inspect_against_fixture("metadata");
}

#[test]
fn inspect_json_matches_gguf_py_on_v2_and_every_type() {
    check_inspect_against_fixture("v2");
    check_inspect_against_fixture("types");
}

#[test]
fn inspect_text_names_the_moe_shape() {
    let out = ok(&["inspect", fixtures().join("model.gguf").to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "architecture   llama",
        "llama.expert_count",
        "blk.1.ffn_down_exps.weight",
        "[32, 256, 8]",
        "totals by type",
        "[STRING; 32]",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// A GGUF v3 file with one `UINT32` array of `n` elements and no tensors.
fn gguf_with_long_array(n: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // metadata pairs
    let key = b"test.long";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&9u32.to_le_bytes()); // ARRAY
    b.extend_from_slice(&4u32.to_le_bytes()); // of UINT32
    b.extend_from_slice(&u64::from(n).to_le_bytes());
    for i in 0..n {
        b.extend_from_slice(&i.to_le_bytes());
    }
    b
}

#[test]
fn long_arrays_are_summarised_unless_full() {
    let dir = scratch("long");
    let path = dir.join("long.gguf");
    fs::write(&path, gguf_with_long_array(100)).unwrap();

    let short = inspect_json(&path, &[]);
    let entry = &short["metadata"][0];
    assert_eq!(entry["len"], 100);
    assert_eq!(entry["truncated"], true);
    assert_eq!(entry["value"], serde_json::json!([0, 1, 2, 3, 4, 5, 6, 7]));

    let full = inspect_json(&path, &["--full"]);
    let entry = &full["metadata"][0];
    assert_eq!(entry["len"], 100);
    assert_eq!(entry.get("truncated"), None);
    let values: Vec<u64> = entry["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(values, (0..100).collect::<Vec<u64>>());

    // 64 elements are still printed whole.
    fs::write(&path, gguf_with_long_array(64)).unwrap();
    let entry = &inspect_json(&path, &[])["metadata"][0];
    assert_eq!(entry["value"].as_array().unwrap().len(), 64);
    fs::remove_dir_all(dir).unwrap();
}

/// The tensors of types.gguf, each named after its type.
const TYPES: [&str; 15] = [
    "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k",
    "q6_k", "iq4_nl", "iq4_xs",
];

#[test]
fn dequant_equals_gguf_py_bit_for_bit() {
    let dir = scratch("dequant");
    let types = fixtures().join("types.gguf");
    let types = types.to_str().unwrap();
    // The fixture really has these tensors and no others.
    let listed = inspect_json(Path::new(types), &[]);
    let names: Vec<&str> = listed["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, TYPES);

    for name in TYPES {
        let expected = fs::read(fixtures().join(format!("types/{name}.f32"))).unwrap();
        assert_eq!(expected.len(), 512 * 3 * 4, "{name}.f32");

        let stdout = ok(&["dequant", types, name]).stdout;
        assert!(stdout == expected, "{name}: stdout differs from gguf-py");

        let out = dir.join(format!("{name}.f32"));
        ok(&["dequant", types, name, "-o", out.to_str().unwrap()]);
        assert!(
            fs::read(&out).unwrap() == expected,
            "{name}: -o file differs"
        );
    }
    // Nothing but the outputs was left in the folder (no temporary files).
    assert_eq!(fs::read_dir(&dir).unwrap().count(), TYPES.len());
    fs::remove_dir_all(dir).unwrap();
}

/// Runs a failing command and returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = moe(args);
    assert!(!out.status.success(), "moe {args:?} should fail");
    assert_eq!(out.status.code(), Some(1), "moe {args:?}: exit status");
    assert!(out.stdout.is_empty(), "moe {args:?} printed to stdout");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn errors_exit_non_zero_name_the_file_and_leave_no_output() {
    let dir = scratch("errors");
    let out = dir.join("out.f32");
    let out_s = out.to_str().unwrap();

    // Missing file.
    let missing = dir.join("missing.gguf");
    let missing_s = missing.to_str().unwrap();
    assert!(fails(&["inspect", missing_s]).contains(missing_s));
    assert!(fails(&["dequant", missing_s, "f32", "-o", out_s]).contains(missing_s));

    // A copy cut in the middle of its tensor data: refused at open.
    let model = fs::read(fixtures().join("model.gguf")).unwrap();
    let truncated = dir.join("truncated.gguf");
    fs::write(&truncated, &model[..model.len() / 2]).unwrap();
    let truncated_s = truncated.to_str().unwrap();
    let err = fails(&["inspect", truncated_s]);
    assert!(
        err.contains(truncated_s) && err.contains("past the end"),
        "{err}"
    );
    let err = fails(&["dequant", truncated_s, "token_embd.weight", "-o", out_s]);
    assert!(err.contains(truncated_s), "{err}");

    // A copy cut inside the metadata.
    fs::write(&truncated, &model[..1000]).unwrap();
    assert!(fails(&["inspect", truncated_s]).contains("truncated"));

    // Unknown tensor.
    let types = fixtures().join("types.gguf");
    let types_s = types.to_str().unwrap();
    let err = fails(&["dequant", types_s, "no.such.tensor", "-o", out_s]);
    assert!(
        err.contains(types_s) && err.contains("no.such.tensor"),
        "{err}"
    );

    // Big-endian files are refused with a clear message.
    let be = fixtures().join("bigendian.gguf");
    assert!(fails(&["inspect", be.to_str().unwrap()]).contains("big-endian"));

    // Not one output or temporary file was created.
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left.len(),
        1,
        "only the truncated input may remain: {left:?}"
    );
    assert!(!out.exists());

    // An existing output file is left untouched by a failed dequant.
    fs::write(&out, b"keep").unwrap();
    fails(&["dequant", types_s, "no.such.tensor", "-o", out_s]);
    assert_eq!(fs::read(&out).unwrap(), b"keep");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["inspect"][..],
        &["inspect", "a", "b"][..],
        &["dequant", "a"][..],
        &["inspect", "x.gguf", "--bogus"][..],
        &["frobnicate"][..],
    ] {
        assert_eq!(moe(args).status.code(), Some(2), "moe {args:?}");
    }
}

#[test]
fn devices_never_fail() {
    let out = ok(&["inspect", "--devices"]);
    let text = String::from_utf8(out.stdout).unwrap();
    if text.starts_with("no CUDA devices") {
        println!("skipped: no CUDA device");
    } else {
        assert!(text.contains("cuda:0"), "{text}");
    }
}
