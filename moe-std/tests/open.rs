//! `GgufFile::open`: maps, validates once, and refuses short files at open.

use std::fs;
use std::path::{Path, PathBuf};

use moe_std::{Error, GgufFile};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../moe-core/tests/fixtures")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("open-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn opens_the_fixture_and_borrows_the_mapping() {
    let gguf = GgufFile::open(fixture("model.gguf")).unwrap();
    let file = gguf.file();
    assert_eq!(file.architecture(), Some("llama"));
    assert_eq!(file.tensor_count(), 23);
    let t = file.tensor("blk.0.ffn_gate_exps.weight").unwrap();
    assert_eq!(t.view.dims(), [256, 32, 8]);
    // Zero-copy: the tensor bytes lie inside the mapping.
    let range = gguf.bytes().as_ptr_range();
    assert!(range.contains(&t.view.data().as_ptr()));
    assert_eq!(
        gguf.bytes().len(),
        fs::metadata(fixture("model.gguf")).unwrap().len() as usize
    );
    // `file()` hands out the same parsed file every time (no re-parse).
    assert!(std::ptr::eq(gguf.file(), gguf.file()));
}

#[test]
fn a_missing_file_is_an_io_error_with_its_path() {
    let path = scratch("does-not-exist.gguf");
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert_eq!(err.path(), path);
    assert!(err.to_string().starts_with(path.to_str().unwrap()));
}

#[test]
fn a_file_shorter_than_its_tensor_table_claims_is_refused_at_open() {
    let bytes = fs::read(fixture("model.gguf")).unwrap();
    let path = scratch("short.gguf");
    // Every cut of the data section is caught at open (one byte short included).
    for cut in [bytes.len() - 1, bytes.len() - 4096, 5000] {
        fs::write(&path, &bytes[..cut]).unwrap();
        let err = GgufFile::open(&path).unwrap_err();
        match &err {
            Error::Gguf { path: p, source } => {
                assert_eq!(p, &path);
                assert!(
                    matches!(
                        **source,
                        moe_core::Error::TensorOutOfBounds { .. }
                            | moe_core::Error::Truncated { .. }
                    ),
                    "cut at {cut}: {source:?}"
                );
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    // An empty file is an error too (memmap2 maps it as an empty slice).
    fs::write(&path, b"").unwrap();
    assert!(GgufFile::open(&path).is_err());
    fs::remove_file(&path).unwrap();
}

#[test]
fn a_directory_is_an_io_error() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    assert!(matches!(
        GgufFile::open(dir),
        Err(Error::Io { .. }) | Err(Error::Gguf { .. })
    ));
}
