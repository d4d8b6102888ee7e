//! `moe-synth-model`: writes a random-weight, Mixtral-shaped whole model (architecture
//! `llama`) as a GGUF file, so that a machine without Python or llama.cpp can create the
//! whole-model benchmark file itself (the same shape as
//! `benches/llamacpp/make_perf_model.py` writes, every matrix of one type).
//!
//! ```text
//! moe-synth-model OUT.gguf [--type q4_0|q8_0] [--embd 2048] [--layers 8] [--heads 16]
//!     [--kv-heads 4] [--experts 8] [--used 2] [--ff 5632] [--vocab 32000] [--ctx 4096]
//!     [--seed N]
//! ```
//!
//! Prints one JSON line: `{"path", "bytes" (the file's size), "routed_expert_bytes" (all
//! blocks' `ffn_{gate,up,down}_exps` tensors), "type"}`. Bad arguments exit with status 2,
//! other failures with 1.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use moe_benches::synth::write_random_file;
use moe_benches::{LlamaMoeShape, is_routed_expert_stack, llama_moe};
use moe_core::TensorType;

const USAGE: &str = "usage: moe-synth-model OUT.gguf [--type q4_0|q8_0] [--embd 2048] [--layers 8] \
[--heads 16] [--kv-heads 4] [--experts 8] [--used 2] [--ff 5632] [--vocab 32000] [--ctx 4096] [--seed N]";

/// The base seed of the fixtures and of `make_perf_model.py`.
const DEFAULT_SEED: u64 = 0x4D6F45;

#[derive(Debug)]
struct Args {
    out: PathBuf,
    ty: TensorType,
    shape: LlamaMoeShape,
    seed: u64,
}

fn parse(args: Vec<OsString>) -> Result<Option<Args>, String> {
    let mut out = None;
    let mut ty = TensorType::Q4_0;
    let mut shape = LlamaMoeShape::default();
    let mut seed = DEFAULT_SEED;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let arg = arg
            .into_string()
            .map_err(|a| format!("argument {a:?} is not valid UTF-8"))?;
        if arg == "--help" || arg == "-h" {
            return Ok(None);
        }
        if !arg.starts_with("--") || arg == "--" {
            if out.is_some() {
                return Err(format!("unexpected argument {arg:?} (one OUT.gguf only)"));
            }
            out = Some(PathBuf::from(arg));
            continue;
        }
        let (flag, value) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), v.to_string()),
            None => {
                let value = it
                    .next()
                    .ok_or_else(|| format!("{arg} needs a value"))?
                    .into_string()
                    .map_err(|v| format!("{arg}: value {v:?} is not valid UTF-8"))?;
                (arg, value)
            }
        };
        let number = || -> Result<u32, String> {
            value.parse().map_err(|_| {
                format!("{flag} needs a non-negative integer below 2^32, not {value:?}")
            })
        };
        match flag.as_str() {
            "--type" => {
                ty = match value.to_ascii_lowercase().as_str() {
                    "q4_0" => TensorType::Q4_0,
                    "q8_0" => TensorType::Q8_0,
                    _ => return Err(format!("--type must be q4_0 or q8_0, not {value:?}")),
                }
            }
            "--embd" => shape.n_embd = number()?,
            "--layers" => shape.n_layer = number()?,
            "--heads" => shape.n_head = number()?,
            "--kv-heads" => shape.n_head_kv = number()?,
            "--experts" => shape.n_expert = number()?,
            "--used" => shape.n_expert_used = number()?,
            "--ff" => shape.n_ff = number()?,
            "--vocab" => shape.n_vocab = number()?,
            "--ctx" => shape.n_ctx_train = number()?,
            "--seed" => {
                seed = value
                    .parse()
                    .map_err(|_| format!("--seed needs a non-negative integer, not {value:?}"))?
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let out = out.ok_or("missing OUT.gguf")?;
    shape.check(ty)?;
    Ok(Some(Args {
        out,
        ty,
        shape,
        seed,
    }))
}

fn main() -> ExitCode {
    let args = match parse(std::env::args_os().skip(1).collect()) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("moe-synth-model: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let spec = llama_moe(&args.shape, args.ty);
    let started = Instant::now();
    let bytes = match write_random_file(&spec, args.seed, &args.out) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("moe-synth-model: writing {}: {e}", args.out.display());
            // Leave no partial model behind (best effort: it may not exist).
            let _ = std::fs::remove_file(&args.out);
            return ExitCode::FAILURE;
        }
    };
    let routed_expert_bytes: u64 = spec
        .tensors
        .iter()
        .filter(|t| is_routed_expert_stack(&t.name))
        .map(|t| t.n_bytes())
        .sum();
    eprintln!(
        "moe-synth-model: {} bytes in {:.1} s",
        bytes,
        started.elapsed().as_secs_f64()
    );
    let line = format!(
        "{{\"path\":{},\"bytes\":{bytes},\"routed_expert_bytes\":{routed_expert_bytes},\"type\":{}}}",
        json_string(&args.out.to_string_lossy()),
        json_string(&args.ty.name().to_ascii_lowercase()),
    );
    println!("{line}");
    ExitCode::SUCCESS
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("/tmp/x.gguf"), r#""/tmp/x.gguf""#);
        assert_eq!(json_string("a\"b\\c\nd"), r#""a\"b\\c\u000ad""#);
    }

    #[test]
    fn defaults_are_the_perf_shape() {
        let a = parse(args("x.gguf")).unwrap().unwrap();
        assert_eq!(a.shape, LlamaMoeShape::default());
        assert_eq!(a.ty, TensorType::Q4_0);
        assert_eq!(a.seed, DEFAULT_SEED);
    }

    #[test]
    fn flags_set_the_shape() {
        let a = parse(args(
            "--type q8_0 --embd 256 --layers 2 --heads 4 --kv-heads 2 --experts 4 --used 1 \
             --ff 512 --vocab 300 --ctx=128 --seed 7 out.gguf",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(a.out, PathBuf::from("out.gguf"));
        assert_eq!(a.ty, TensorType::Q8_0);
        let s = a.shape;
        assert_eq!(
            (s.n_embd, s.n_layer, s.n_head, s.n_head_kv, s.n_expert),
            (256, 2, 4, 2, 4)
        );
        assert_eq!(
            (s.n_expert_used, s.n_ff, s.n_vocab, s.n_ctx_train),
            (1, 512, 300, 128)
        );
        assert_eq!(a.seed, 7);
    }

    #[test]
    fn bad_arguments_are_errors() {
        for (line, says) in [
            ("", "missing OUT"),
            ("a.gguf b.gguf", "unexpected argument"),
            ("x --type q4_k", "--type"),
            ("x --embd", "needs a value"),
            ("x --embd -5", "--embd"),
            ("x --bogus 1", "unknown flag"),
            ("x --heads 3", "heads (3) must divide"),
            ("x --embd 2000 --heads 8", "must be a multiple"),
            ("x --kv-heads 3", "kv-heads"),
            ("x --used 9", "used (9)"),
            ("x --layers 0", "layers must be"),
            ("x --ff 100", "ff (100)"),
        ] {
            let err = parse(args(line)).unwrap_err();
            assert!(err.contains(says), "{line}: {err}");
        }
    }
}
