//! `moe`: the engine's command-line tool.
//!
//! Arguments are parsed by hand: three subcommands with a handful of flags do not need a
//! parser crate, and the error messages stay ours.

use std::ffi::OsString;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::time::Instant;

use moe_core::sample::{Candidate, Sampler, SamplerConfig};
use moe_std::chat::{ChatTemplate, Message};
use moe_std::checkpoint::Checkpoint;
use moe_std::gpu::GpuOptions;
use moe_std::pool::ThreadPool;
use moe_std::session::{KvType, Session, argmax};
use moe_std::tokenizer::Tokenizer;
use moe_std::{GgufFile, Residency, dequant, inspect};

const USAGE: &str = "\
usage:
  moe inspect FILE [--json [--full]]   header, metadata, tensors, totals, MoE shape
  moe inspect --devices                CUDA devices (none without a driver)
  moe dequant FILE TENSOR [-o OUT]     tensor as little-endian f32 in GGUF order
                                       (ne[0] fastest) to stdout or OUT
  moe tokenize FILE -p TEXT [--ids-only] [--no-bos] [--no-parse-special]
                                       TEXT as the file's tokenizer (llama.cpp's) splits
                                       it: 'id<TAB>piece' lines, or the ids as 1,2,3
  moe run FILE (-p TEXT | -f FILE | --tokens 1,2,3) [-n N] [--threads N] [--ctx N]
          [--batch N] [--kv f32|f16] [--temp T] [--top-k K] [--top-p P] [--min-p P]
          [--repeat-penalty R] [--repeat-last-n N] [--presence-penalty P]
          [--frequency-penalty F] [--seed S] [--chat [--system TEXT]
          [--chat-template-file FILE]] [--ignore-eos] [--no-display-prompt] [--progress]
                                       generate: text prompts (-f - reads stdin) stream
                                       text, --tokens prints the generated ids; stops
                                       after N tokens (default 128, -1: no limit), at an
                                       end-of-generation token or a full context; then
                                       prefill and decode tokens/s and the seed. Sampling
                                       defaults are llama.cpp's (temp 0.8, top-k 40,
                                       top-p 0.95, min-p 0.05); --temp 0 is greedy.
                                       --chat applies the file's chat template
  moe bench FILE [--threads N] [--prompt 128] [--gen 64] [--reps 3] [--kv f32|f16]
          [--json] [--gpu [--gpu-ffn-only] [--gpu-budget BYTES] [--gpu-stats FILE]]
                                       median prefill and decode tokens/s, weight bytes
                                       per decoded token and the GB/s they make
  moe route FILE --tokens 1,2,3 [--json] [--threads N]
                                       per MoE layer: each token's experts and weights,
                                       tokens per expert, load balance, entropy, drops
  moe logits FILE --tokens 1,2,3 [-o OUT] [--threads N]
                                       logits of every position, little-endian f32,
                                       n_tokens x n_vocab, to stdout or OUT
  moe --help | --version

For run, bench, route, logits and tokenize, FILE may also be a Hugging Face checkpoint
directory (config.json and safetensors; Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE,
DeepSeek-V2/V3); text prompts need its tokenizer.json, --chat its tokenizer_config.json.
In --json, arrays longer than 64 elements are cut to their first 8 unless --full.
run, bench, route and logits read the weights into memory (huge pages: faster decoding)
when they take at most half of the available memory, and map the file otherwise;
--no-mmap always reads, --mmap always maps.
run, bench, route and logits take --gpu: the model runs on CUDA device 0 (choose with
CUDA_VISIBLE_DEVICES) — all of it when the GPU kernels cover it, else (DeepSeek's latent
attention, --gpu-ffn-only, route) the FFN blocks with attention on the CPU; needs
libcuda and libnvrtc (or prebuilt kernels, moe-cuda-kernels). With --gpu-budget BYTES
(suffix K, M, G: KiB, MiB, GiB) only that much FFN weight goes to the device: dense FFNs
and shared experts first, then routed experts most-used first by --gpu-stats FILE (the
JSON of `moe route --json` on typical text; without it an even spread over the blocks);
the other experts run on the CPU.
";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("moe: {message}");
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Error(message)) => {
            eprintln!("moe: {message}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// Wrong arguments: message plus usage, exit status 2.
    Usage(String),
    /// The command failed: message (naming the file), exit status 1.
    Error(String),
}

impl From<moe_std::Error> for Failure {
    fn from(e: moe_std::Error) -> Self {
        Failure::Error(e.to_string())
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::Usage(message.into())
}

fn run(args: Vec<OsString>) -> Result<(), Failure> {
    let mut args = args.into_iter();
    let Some(command) = args.next() else {
        return Err(usage("no command given"));
    };
    let rest: Vec<OsString> = args.collect();
    match command.to_str() {
        Some("inspect") => inspect_cmd(rest),
        Some("dequant") => dequant_cmd(rest),
        Some("tokenize") => tokenize_cmd(rest),
        Some("run") => run_cmd(rest),
        Some("logits") => logits_cmd(rest),
        Some("bench") => bench_cmd(rest),
        Some("route") => route_cmd(rest),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some("-V" | "--version") => {
            println!("moe {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => Err(usage(format!(
            "unknown command '{}'",
            command.to_string_lossy()
        ))),
    }
}

/// Splits arguments into flags (starting with `-`, except a lone `-`) and positionals;
/// `--` ends the flags. Flags that take a value take the next argument.
struct Args {
    flags: Vec<(String, Option<OsString>)>,
    positionals: Vec<OsString>,
}

fn parse(args: Vec<OsString>, with_value: &[&str]) -> Result<Args, Failure> {
    let mut flags = Vec::new();
    let mut positionals = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--") => {
                positionals.extend(args);
                break;
            }
            Some(flag) if flag.starts_with('-') && flag.len() > 1 => {
                let (name, inline) = match flag.split_once('=') {
                    Some((n, v)) if n.starts_with("--") => (n, Some(OsString::from(v))),
                    _ => (flag, None),
                };
                let value = if with_value.contains(&name) {
                    match inline {
                        Some(v) => Some(v),
                        None => Some(
                            args.next()
                                .ok_or_else(|| usage(format!("{name} needs a value")))?,
                        ),
                    }
                } else if inline.is_some() {
                    return Err(usage(format!("{name} takes no value")));
                } else {
                    None
                };
                flags.push((name.to_string(), value));
            }
            _ => positionals.push(arg),
        }
    }
    Ok(Args { flags, positionals })
}

fn inspect_cmd(args: Vec<OsString>) -> Result<(), Failure> {
    let args = parse(args, &[])?;
    let (mut json, mut full, mut devices) = (false, false, false);
    for (flag, _) in &args.flags {
        match flag.as_str() {
            "--json" => json = true,
            "--full" => full = true,
            "--devices" => devices = true,
            other => return Err(usage(format!("inspect: unknown flag {other}"))),
        }
    }
    if devices {
        if !args.positionals.is_empty() || json || full {
            return Err(usage("inspect --devices takes no other arguments"));
        }
        return print_devices();
    }
    if full && !json {
        return Err(usage("--full only applies to --json"));
    }
    let [path] = <[OsString; 1]>::try_from(args.positionals)
        .map_err(|_| usage("inspect needs exactly one FILE"))?;
    let gguf = GgufFile::open(PathBuf::from(path))?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, &inspect::to_json(&gguf, full))
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        inspect::write_text(&gguf, &mut out)
    };
    finish_stdout(written.and_then(|()| out.flush()))
}

fn print_devices() -> Result<(), Failure> {
    let devices = moe_cuda::devices();
    let mut out = io::stdout().lock();
    let written = if devices.is_empty() {
        let why = if moe_cuda::driver_present() {
            "the CUDA driver reports none"
        } else {
            "no CUDA driver library found"
        };
        writeln!(out, "no CUDA devices ({why})")
    } else {
        devices.iter().try_for_each(|d| writeln!(out, "{d}"))
    };
    finish_stdout(written)
}

/// Maps a failed write to stdout to an error, except a closed pipe (`moe … | head`),
/// which just ends the output.
fn finish_stdout(result: io::Result<()>) -> Result<(), Failure> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::Error(format!("<stdout>: {e}"))),
        Ok(()) => Ok(()),
    }
}

fn dequant_cmd(args: Vec<OsString>) -> Result<(), Failure> {
    let args = parse(args, &["-o", "--output"])?;
    let mut output = None;
    for (flag, value) in args.flags {
        match flag.as_str() {
            "-o" | "--output" => output = value.map(PathBuf::from),
            other => return Err(usage(format!("dequant: unknown flag {other}"))),
        }
    }
    let [path, tensor] = <[OsString; 2]>::try_from(args.positionals)
        .map_err(|_| usage("dequant needs FILE and TENSOR"))?;
    let tensor = tensor
        .into_string()
        .map_err(|t| usage(format!("tensor name {t:?} is not UTF-8")))?;
    let gguf = GgufFile::open(PathBuf::from(path))?;
    match output {
        Some(out_path) => {
            dequant::write_f32_file(&gguf, &tensor, &out_path)?;
        }
        None => {
            let stdout = io::stdout();
            let mut out = stdout.lock();
            match dequant::write_f32(&gguf, &tensor, &mut out, "<stdout>".as_ref()) {
                Err(e) if dequant::is_broken_pipe(&e) => {}
                other => {
                    other?;
                }
            }
        }
    }
    Ok(())
}

/// `moe tokenize`: BOS/EOS as the vocabulary asks and special tokens written in the text
/// recognised, unless turned off (the defaults of llama.cpp's `llama-tokenize`).
fn tokenize_cmd(args: Vec<OsString>) -> Result<(), Failure> {
    let args = parse(args, &["-p", "--prompt"])?;
    let (mut text, mut ids_only, mut add_special, mut parse_special) = (None, false, true, true);
    for (flag, value) in args.flags {
        match flag.as_str() {
            "-p" | "--prompt" => {
                let value = value.ok_or_else(|| usage("tokenize: -p needs TEXT"))?;
                text = Some(
                    value
                        .into_string()
                        .map_err(|_| usage("tokenize: TEXT is not UTF-8"))?,
                );
            }
            "--ids-only" => ids_only = true,
            "--no-bos" => add_special = false,
            "--no-parse-special" => parse_special = false,
            other => return Err(usage(format!("tokenize: unknown flag {other}"))),
        }
    }
    let [path] = <[OsString; 1]>::try_from(args.positionals)
        .map_err(|_| usage("tokenize needs exactly one FILE"))?;
    let text = text.ok_or_else(|| usage("tokenize: -p TEXT is required"))?;
    let path = PathBuf::from(path);
    let checkpoint = Checkpoint::open(&path)?;
    let tokenizer = checkpoint.tokenizer().ok_or_else(|| {
        Failure::Error(format!(
            "{}: no tokenizer.json in the directory",
            path.display()
        ))
    })??;
    let ids = tokenizer.encode(&text, add_special, parse_special);
    let mut out = io::stdout().lock();
    let written = if ids_only {
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        writeln!(out, "{}", list.join(","))
    } else {
        // Pieces escaped as Rust strings; bytes that are not UTF-8 on their own (part of
        // a character split over tokens) as `\xNN`.
        ids.iter().try_for_each(|&id| {
            let mut shown = String::new();
            for chunk in tokenizer.piece(id, true).utf8_chunks() {
                shown.extend(chunk.valid().escape_debug());
                chunk
                    .invalid()
                    .iter()
                    .for_each(|b| shown.push_str(&format!("\\x{b:02X}")));
            }
            writeln!(out, "{id}\t{shown}")
        })
    };
    finish_stdout(written.and_then(|()| out.flush()))
}

/// The flags `run`, `logits` and `route` share, parsed; the command's own flags are left
/// in `extra` for it.
struct ModelArgs {
    path: PathBuf,
    tokens: Vec<u32>,
    threads: usize,
    context: usize,
    batch: usize,
    output: Option<PathBuf>,
    kv: KvType,
    residency: Residency,
    gpu: GpuFlags,
    extra: Vec<(String, Option<OsString>)>,
}

/// `--gpu`, `--gpu-ffn-only`, `--gpu-budget BYTES`, `--gpu-stats FILE` as given.
#[derive(Default)]
struct GpuFlags {
    on: bool,
    ffn_only: bool,
    budget: Option<u64>,
    stats: Option<PathBuf>,
}

/// The GPU flags that take a value.
const GPU_VALUE_FLAGS: [&str; 2] = ["--gpu-budget", "--gpu-stats"];

impl GpuFlags {
    /// Takes `flag` when it is one of the GPU flags (a budget or statistics imply
    /// `--gpu`).
    fn take(
        &mut self,
        command: &str,
        flag: &str,
        value: &Option<OsString>,
    ) -> Result<bool, Failure> {
        match flag {
            "--gpu" => self.on = true,
            "--gpu-ffn-only" => {
                self.ffn_only = true;
                self.on = true;
            }
            "--gpu-budget" => {
                let bytes = value.as_ref().and_then(|v| v.to_str()).and_then(byte_size);
                self.budget = Some(bytes.ok_or_else(|| {
                    usage(format!("{command}: --gpu-budget needs a size in bytes such as 8000000000, 512M or 20G"))
                })?);
                self.on = true;
            }
            "--gpu-stats" => {
                self.stats = value.as_ref().map(PathBuf::from);
                self.on = true;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The options for [`Session::offload_to_gpu`], reading the statistics file; `None`
    /// without `--gpu`.
    fn options(&self) -> Result<Option<GpuOptions>, Failure> {
        if !self.on {
            return Ok(None);
        }
        let counts = match &self.stats {
            Some(path) => route_counts(path)?,
            None => Vec::new(),
        };
        Ok(Some(GpuOptions {
            ordinal: 0,
            budget: self.budget,
            counts,
            ffn_only: self.ffn_only,
        }))
    }
}

/// `"123"`, `"512K"`, `"1.5G"` (binary units) as bytes.
fn byte_size(text: &str) -> Option<u64> {
    let (number, unit) = match text.trim().char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let scale = match unit {
        'B' => 1u64,
        'K' => 1 << 10,
        'M' => 1 << 20,
        'G' => 1 << 30,
        'T' => 1 << 40,
        _ => return None,
    };
    let value: f64 = number.trim().parse().ok()?;
    let bytes = value * scale as f64;
    (value.is_finite() && value >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// `tokens_per_expert` of each MoE layer in `moe route --json` output, by layer.
fn route_counts(path: &Path) -> Result<Vec<Vec<u64>>, Failure> {
    let fail = |why: String| Failure::Error(format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
    let layers = json["layers"]
        .as_array()
        .ok_or_else(|| fail("no \"layers\" array (write it with `moe route --json`)".into()))?;
    let mut counts: Vec<Vec<u64>> = Vec::new();
    for layer in layers {
        let index = layer["layer"].as_u64().filter(|&l| l < 4096);
        let tokens = layer["tokens_per_expert"].as_array();
        let (Some(index), Some(tokens)) = (index, tokens) else {
            return Err(fail(
                "a layer without \"layer\" or \"tokens_per_expert\"".into(),
            ));
        };
        let per_expert: Option<Vec<u64>> = tokens.iter().map(serde_json::Value::as_u64).collect();
        let index = index as usize;
        if counts.len() <= index {
            counts.resize(index + 1, Vec::new());
        }
        counts[index] =
            per_expert.ok_or_else(|| fail(format!("layer {index}: counts must be integers")))?;
    }
    Ok(counts)
}

/// Moves the session's FFN blocks to the GPU when asked, saying where they went on
/// stderr; returns the one-line summary.
fn offload(session: &mut Session<'_>, gpu: &GpuFlags) -> Result<Option<String>, Failure> {
    let Some(options) = gpu.options()? else {
        return Ok(None);
    };
    let offload = session.offload_to_gpu(&options)?;
    for (layer, why) in offload.skipped() {
        eprintln!("gpu: block {layer} stays on the CPU: {why}");
    }
    let summary = offload.summary();
    eprintln!("{summary}");
    Ok(Some(summary))
}

/// Parses the shared flags; `with_value` and `switches` are the command's own flags
/// (returned in `extra`, in order), anything else is a usage error.
fn model_args(
    command: &str,
    args: Vec<OsString>,
    with_value: &[&str],
    switches: &[&str],
) -> Result<ModelArgs, Failure> {
    let mut takes_value = vec![
        "--tokens",
        "--threads",
        "-t",
        "--ctx",
        "-c",
        "--batch",
        "-b",
        "--kv",
    ];
    takes_value.extend_from_slice(&GPU_VALUE_FLAGS);
    takes_value.extend_from_slice(with_value);
    let args = parse(args, &takes_value)?;
    let mut parsed = ModelArgs {
        path: PathBuf::new(),
        tokens: Vec::new(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        context: 0,
        batch: 512,
        output: None,
        kv: KvType::F32,
        residency: Residency::Auto,
        gpu: GpuFlags::default(),
        extra: Vec::new(),
    };
    for (flag, value) in args.flags {
        if parsed.gpu.take(command, &flag, &value)? {
            continue;
        }
        match flag.as_str() {
            "--tokens" => parsed.tokens = token_list(command, &value)?,
            "--threads" | "-t" => parsed.threads = number(command, &flag, &value)?.max(1),
            "--ctx" | "-c" => parsed.context = number(command, &flag, &value)?,
            "--batch" | "-b" => parsed.batch = number(command, &flag, &value)?.max(1),
            "--kv" => parsed.kv = kv_type(command, &value)?,
            "--mmap" | "--no-mmap" => parsed.residency = residency(&flag),
            "-o" | "--output" if with_value.contains(&"-o") => {
                parsed.output = value.as_ref().map(PathBuf::from)
            }
            own if with_value.contains(&own) || switches.contains(&own) => {
                parsed.extra.push((flag, value))
            }
            other => return Err(usage(format!("{command}: unknown flag {other}"))),
        }
    }
    let [path] = <[OsString; 1]>::try_from(args.positionals)
        .map_err(|_| usage(format!("{command} needs exactly one FILE")))?;
    parsed.path = PathBuf::from(path);
    Ok(parsed)
}

/// A flag's value as a non-negative integer.
fn number(command: &str, flag: &str, value: &Option<OsString>) -> Result<usize, Failure> {
    value
        .as_ref()
        .and_then(|v| v.to_str())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| usage(format!("{command}: {flag} needs a non-negative integer")))
}

/// A flag's value as a number (`f32`; range checks are the sampler's).
fn real(command: &str, flag: &str, value: &Option<OsString>) -> Result<f32, Failure> {
    value
        .as_ref()
        .and_then(|v| v.to_str())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| usage(format!("{command}: {flag} needs a number")))
}

/// A flag's value as UTF-8 text.
fn text(command: &str, flag: &str, value: Option<OsString>) -> Result<String, Failure> {
    value
        .ok_or_else(|| usage(format!("{command}: {flag} needs a value")))?
        .into_string()
        .map_err(|_| usage(format!("{command}: the value of {flag} is not UTF-8")))
}

/// `--mmap`: map the checkpoint; `--no-mmap`: read it into memory. Without either, it is
/// read into memory when it fits in half of the available memory ([`Residency::Auto`]).
fn residency(flag: &str) -> Residency {
    if flag == "--mmap" {
        Residency::Map
    } else {
        Residency::Load
    }
}

/// `f32` or `f16`.
fn kv_type(command: &str, value: &Option<OsString>) -> Result<KvType, Failure> {
    match value.as_ref().and_then(|v| v.to_str()) {
        Some("f32") => Ok(KvType::F32),
        Some("f16") => Ok(KvType::F16),
        _ => Err(usage(format!("{command}: --kv takes f32 or f16"))),
    }
}

/// `1,2,3` as token ids.
fn token_list(command: &str, value: &Option<OsString>) -> Result<Vec<u32>, Failure> {
    let text = value.as_ref().and_then(|v| v.to_str()).unwrap_or("");
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| usage(format!("{command}: '{s}' in --tokens is not a token id")))
        })
        .collect()
}

/// `--tokens` with at least one id, for the commands that take only ids.
fn require_tokens(command: &str, a: &ModelArgs) -> Result<(), Failure> {
    if a.tokens.is_empty() {
        return Err(usage(format!(
            "{command}: --tokens with at least one id is required"
        )));
    }
    Ok(())
}

/// `run`'s own flags that take a value.
const RUN_VALUE_FLAGS: &[&str] = &[
    "-n",
    "--n-predict",
    "-p",
    "--prompt",
    "-f",
    "--file",
    "--temp",
    "--top-k",
    "--top-p",
    "--min-p",
    "--repeat-penalty",
    "--repeat-last-n",
    "--presence-penalty",
    "--frequency-penalty",
    "--seed",
    "-s",
    "--system",
    "--chat-template-file",
];

/// `run`'s own switches.
const RUN_SWITCHES: &[&str] = &[
    "--chat",
    "--ignore-eos",
    "--no-display-prompt",
    "--progress",
];

/// What `run` generates from: token ids (printed back as ids) or text (streamed as text).
enum Prompt {
    Ids(Vec<u32>),
    Text(String),
}

/// `run`'s options beyond the model's.
struct RunOptions {
    prompt: Prompt,
    /// Tokens to generate; `None`: until end of generation or a full context.
    n_predict: Option<usize>,
    sampling: SamplerConfig,
    chat: bool,
    system: Option<String>,
    chat_template_file: Option<PathBuf>,
    ignore_eos: bool,
    display_prompt: bool,
    progress: bool,
}

fn run_options(a: &mut ModelArgs) -> Result<RunOptions, Failure> {
    const C: &str = "run";
    let mut sampling = SamplerConfig::default();
    let mut seed = None;
    let (mut prompt_text, mut file) = (None, None);
    let mut o = RunOptions {
        prompt: Prompt::Ids(std::mem::take(&mut a.tokens)),
        n_predict: Some(128),
        sampling,
        chat: false,
        system: None,
        chat_template_file: None,
        ignore_eos: false,
        display_prompt: true,
        progress: io::stderr().is_terminal(),
    };
    for (flag, value) in std::mem::take(&mut a.extra) {
        match flag.as_str() {
            "-n" | "--n-predict" => {
                o.n_predict = match value.as_ref().and_then(|v| v.to_str()) {
                    Some("-1") => None,
                    _ => Some(number(C, &flag, &value)?),
                }
            }
            "-p" | "--prompt" => prompt_text = Some(text(C, &flag, value)?),
            "-f" | "--file" => file = value.map(PathBuf::from),
            "--temp" => sampling.temperature = real(C, &flag, &value)?,
            "--top-k" => sampling.top_k = number(C, &flag, &value)?,
            "--top-p" => sampling.top_p = real(C, &flag, &value)?,
            "--min-p" => sampling.min_p = real(C, &flag, &value)?,
            "--repeat-penalty" => sampling.repeat_penalty = real(C, &flag, &value)?,
            "--repeat-last-n" => sampling.penalty_last_n = number(C, &flag, &value)?,
            "--presence-penalty" => sampling.presence_penalty = real(C, &flag, &value)?,
            "--frequency-penalty" => sampling.frequency_penalty = real(C, &flag, &value)?,
            "--seed" | "-s" => {
                seed = Some(
                    value
                        .as_ref()
                        .and_then(|v| v.to_str())
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| usage("run: --seed needs a non-negative integer"))?,
                )
            }
            "--system" => o.system = Some(text(C, &flag, value)?),
            "--chat-template-file" => o.chat_template_file = value.map(PathBuf::from),
            "--chat" => o.chat = true,
            "--ignore-eos" => o.ignore_eos = true,
            "--no-display-prompt" => o.display_prompt = false,
            "--progress" => o.progress = true,
            other => return Err(usage(format!("run: unknown flag {other}"))),
        }
    }
    sampling
        .validate()
        .map_err(|e| usage(format!("run: {e}")))?;
    // No seed given: a fresh one (printed with the statistics, so the run can be redone).
    sampling.seed = seed.unwrap_or_else(random_seed);
    o.sampling = sampling;
    let given = [
        !matches!(&o.prompt, Prompt::Ids(ids) if ids.is_empty()),
        prompt_text.is_some(),
        file.is_some(),
    ];
    match given.iter().filter(|&&g| g).count() {
        0 => {
            return Err(usage(
                "run: give a prompt: -p TEXT, -f FILE or --tokens 1,2,3",
            ));
        }
        1 => {}
        _ => return Err(usage("run: -p, -f and --tokens exclude each other")),
    }
    if let Some(path) = file {
        o.prompt = Prompt::Text(read_prompt_file(&path)?);
    } else if let Some(text) = prompt_text {
        o.prompt = Prompt::Text(text);
    }
    if matches!(o.prompt, Prompt::Ids(_))
        && (o.chat || o.system.is_some() || o.chat_template_file.is_some())
    {
        return Err(usage("run: --chat needs a text prompt (-p or -f)"));
    }
    if !o.chat && (o.system.is_some() || o.chat_template_file.is_some()) {
        return Err(usage("run: --system and --chat-template-file need --chat"));
    }
    Ok(o)
}

/// The prompt in `path` (`-`: standard input), which must be UTF-8.
fn read_prompt_file(path: &Path) -> Result<String, Failure> {
    let (name, bytes) = if path == Path::new("-") {
        let mut bytes = Vec::new();
        io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::Error(format!("<stdin>: {e}")))?;
        ("<stdin>".to_string(), bytes)
    } else {
        let bytes =
            std::fs::read(path).map_err(|e| Failure::Error(format!("{}: {e}", path.display())))?;
        (path.display().to_string(), bytes)
    };
    String::from_utf8(bytes).map_err(|e| {
        Failure::Error(format!(
            "{name}: the prompt is not valid UTF-8 (byte offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// A seed for a run that was given none: the clock and the process id, mixed.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = moe_core::sample::Rng::new(nanos ^ (u64::from(std::process::id()) << 32));
    rng.next_u64()
}

/// The prompt's token ids: `--tokens` as given, or the text (through the chat template
/// with `--chat`) tokenized with BOS as the vocabulary asks and special tokens parsed.
fn prompt_ids(
    o: &RunOptions,
    checkpoint: &Checkpoint,
    tokenizer: Option<&Tokenizer>,
) -> Result<Vec<u32>, Failure> {
    let text = match &o.prompt {
        Prompt::Ids(ids) => return Ok(ids.clone()),
        Prompt::Text(text) => text,
    };
    let file = checkpoint.path().display();
    let tokenizer = tokenizer.ok_or_else(|| {
        Failure::Error(format!(
            "{file}: no tokenizer (tokenizer.ggml.* in a GGUF file, tokenizer.json in a directory): give --tokens instead"
        ))
    })?;
    if !o.chat {
        return Ok(tokenizer.encode(text, true, true));
    }
    let token = |id: Option<u32>| {
        id.and_then(|id| tokenizer.token_text(id))
            .unwrap_or("")
            .to_string()
    };
    let (bos, eos) = (token(tokenizer.bos()), token(tokenizer.eos()));
    let template = match &o.chat_template_file {
        Some(path) => {
            let source = std::fs::read_to_string(path)
                .map_err(|e| Failure::Error(format!("{}: {e}", path.display())))?;
            ChatTemplate::new(&source, &bos, &eos)
                .map_err(|e| Failure::Error(format!("{}: {e}", path.display())))?
        }
        None => {
            let source = checkpoint.chat_template()?.ok_or_else(|| {
                Failure::Error(format!(
                    "{file}: no chat template (tokenizer.chat_template, or chat_template in tokenizer_config.json / chat_template.jinja)"
                ))
            })?;
            ChatTemplate::new(&source, &bos, &eos)
                .map_err(|e| Failure::Error(format!("{file}: {e}")))?
        }
    };
    let mut messages = Vec::new();
    if let Some(system) = &o.system {
        messages.push(Message::new("system", system));
    }
    messages.push(Message::new("user", text));
    let rendered = template
        .render(&messages, true)
        .map_err(|e| Failure::Error(format!("{file}: {e}")))?;
    // Templates that write the BOS themselves must not get a second one.
    let has_bos = !bos.is_empty() && rendered.starts_with(&bos);
    Ok(tokenizer.encode(&rendered, !has_bos, true))
}

/// Why generation ended.
#[derive(Clone, Copy)]
enum Stop {
    Length,
    EndOfGeneration,
    ContextFull,
}

fn run_cmd(args: Vec<OsString>) -> Result<(), Failure> {
    let mut a = model_args("run", args, RUN_VALUE_FLAGS, RUN_SWITCHES)?;
    let o = run_options(&mut a)?;
    let checkpoint = Checkpoint::open_with(&a.path, a.residency)?;
    let tokenizer = checkpoint.tokenizer();
    if let (Prompt::Text(_), Some(Err(e))) = (&o.prompt, &tokenizer) {
        return Err(Failure::Error(e.to_string()));
    }
    let tokenizer = tokenizer.and_then(Result::ok);
    let prompt = prompt_ids(&o, &checkpoint, tokenizer.as_ref())?;
    // Refused before the model and its KV cache are built.
    if prompt.is_empty() {
        return Err(Failure::Error(format!(
            "{}: the prompt has no tokens",
            a.path.display()
        )));
    }
    let pool = ThreadPool::new(a.threads);
    let mut session = Session::from_checkpoint(&checkpoint, &pool, a.context, a.batch, a.kv)?;
    offload(&mut session, &a.gpu)?;
    let context = session.context();
    if prompt.len() >= context {
        return Err(Failure::Error(format!(
            "{}: the prompt is {} tokens, which leaves no room in the {context}-token context (--ctx)",
            a.path.display(),
            prompt.len(),
        )));
    }
    let n_vocab = session.model().config().n_vocab;
    let mut logits = vec![0.0f32; n_vocab];
    let mut workspace = vec![Candidate::default(); Sampler::workspace_len(n_vocab)];
    let mut sampler =
        Sampler::new(o.sampling, &mut workspace).map_err(|e| Failure::Error(e.to_string()))?;

    let mut out = io::stdout().lock();
    let text_mode = matches!(o.prompt, Prompt::Text(_));
    if let (Prompt::Text(text), true) = (&o.prompt, o.display_prompt) {
        finish_stdout(write!(out, "{text}").and_then(|()| out.flush()))?;
    }

    // Prefill, a batch at a time so that a long prompt shows its progress.
    let started = Instant::now();
    let batch = a.batch.clamp(1, context);
    let show_progress = o.progress && prompt.len() > batch;
    let terminal = io::stderr().is_terminal();
    for (i, chunk) in prompt.chunks(batch).enumerate() {
        session.eval(chunk, &mut logits)?;
        if show_progress {
            let done = (i * batch + chunk.len()).min(prompt.len());
            // On a terminal one line rewritten in place; in a log one line per batch.
            let end = if terminal { "" } else { "\n" };
            let start = if terminal { "\r" } else { "" };
            eprint!("{start}prompt: {done}/{} tokens{end}", prompt.len());
        }
    }
    if show_progress && terminal {
        eprintln!();
    }
    let prefill = started.elapsed();

    // Decode: sample, emit, evaluate, until the length, an end-of-generation token or a
    // full context.
    let mut history = prompt.clone();
    let mut generated = Vec::new();
    let mut stream = tokenizer.as_ref().map(|t| t.stream_decoder(false));
    let started = Instant::now();
    let stop = loop {
        if o.n_predict.is_some_and(|n| generated.len() >= n) {
            break Stop::Length;
        }
        let next = sampler
            .sample(&logits, &history)
            .map_err(|e| Failure::Error(format!("{}: {e}", a.path.display())))?;
        let ends = tokenizer
            .as_ref()
            .is_some_and(|t| t.is_end_of_generation(next));
        if ends && !o.ignore_eos {
            break Stop::EndOfGeneration;
        }
        generated.push(next);
        history.push(next);
        if let (true, Some(stream)) = (text_mode, stream.as_mut()) {
            let piece = stream.push(next);
            finish_stdout(out.write_all(piece.as_bytes()).and_then(|()| out.flush()))?;
        }
        if o.n_predict.is_some_and(|n| generated.len() >= n) {
            break Stop::Length;
        }
        if session.position() >= context {
            break Stop::ContextFull;
        }
        session.eval(&[next], &mut logits)?;
    };
    let decode = started.elapsed();
    let written = if text_mode {
        let rest = stream.as_mut().map(|s| s.finish()).unwrap_or_default();
        write!(out, "{rest}").and_then(|()| writeln!(out))
    } else {
        let ids: Vec<String> = generated.iter().map(u32::to_string).collect();
        writeln!(out, "{}", ids.join(","))
    };
    finish_stdout(written.and_then(|()| out.flush()))?;

    let rate = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64().max(1e-9);
    // The last generated token is not evaluated (nothing follows it).
    let evaluated = generated.len().saturating_sub(1);
    eprintln!(
        "prefill: {} tokens in {:.3} s ({:.2} tokens/s); decode: {} tokens in {:.3} s ({:.2} tokens/s); stop: {}; seed {}; {} threads, kernels {}",
        prompt.len(),
        prefill.as_secs_f64(),
        rate(prompt.len(), prefill),
        evaluated,
        decode.as_secs_f64(),
        rate(evaluated, decode),
        match stop {
            Stop::Length => "length",
            Stop::EndOfGeneration => "end of generation",
            Stop::ContextFull => "context full",
        },
        o.sampling.seed,
        pool.threads(),
        moe_std::kernels::detect().level()
    );
    Ok(())
}

fn logits_cmd(args: Vec<OsString>) -> Result<(), Failure> {
    let a = model_args("logits", args, &["-o", "--output"], &[])?;
    require_tokens("logits", &a)?;
    let checkpoint = Checkpoint::open_with(&a.path, a.residency)?;
    let pool = ThreadPool::new(a.threads);
    let context = a.context.max(a.tokens.len());
    let mut session = Session::from_checkpoint(&checkpoint, &pool, context, a.batch, a.kv)?;
    offload(&mut session, &a.gpu)?;
    let n_vocab = session.model().config().n_vocab;
    let mut logits = vec![0.0f32; a.tokens.len() * n_vocab];
    session.eval(&a.tokens, &mut logits)?;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    match a.output {
        Some(path) => std::fs::write(&path, &bytes)
            .map_err(|e| Failure::Error(format!("{}: {e}", path.display()))),
        None => {
            let mut out = io::stdout().lock();
            finish_stdout(out.write_all(&bytes).and_then(|()| out.flush()))
        }
    }
}

fn bench_cmd(args: Vec<OsString>) -> Result<(), Failure> {
    let args = parse(
        args,
        &[
            "--threads",
            "-t",
            "--prompt",
            "-p",
            "--gen",
            "-n",
            "--reps",
            "-r",
            "--kv",
            "--gpu-budget",
            "--gpu-stats",
        ],
    )?;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut prompt, mut gen_tokens, mut reps, mut json) = (128usize, 64usize, 3usize, false);
    let mut kv = KvType::F32;
    let mut residency = Residency::Auto;
    let mut gpu = GpuFlags::default();
    for (flag, value) in &args.flags {
        if gpu.take("bench", flag, value)? {
            continue;
        }
        let number = || -> Result<usize, Failure> {
            value
                .as_ref()
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| usage(format!("bench: {flag} needs a non-negative integer")))
        };
        match flag.as_str() {
            "--threads" | "-t" => threads = number()?.max(1),
            "--prompt" | "-p" => prompt = number()?.max(1),
            "--gen" | "-n" => gen_tokens = number()?,
            "--reps" | "-r" => reps = number()?.max(1),
            "--json" => json = true,
            "--kv" => kv = kv_type("bench", value)?,
            "--mmap" | "--no-mmap" => residency = self::residency(flag),
            other => return Err(usage(format!("bench: unknown flag {other}"))),
        }
    }
    let [path] = <[OsString; 1]>::try_from(args.positionals)
        .map_err(|_| usage("bench needs exactly one FILE"))?;
    let checkpoint = Checkpoint::open_with(PathBuf::from(path), residency)?;
    let pool = ThreadPool::new(threads);
    let mut session =
        Session::from_checkpoint(&checkpoint, &pool, prompt + gen_tokens, prompt, kv)?;
    let gpu_summary = offload(&mut session, &gpu)?;
    let n_vocab = session.model().config().n_vocab;
    // A fixed pseudo-random prompt: the same tokens on every run and machine.
    let tokens: Vec<u32> = (0..prompt as u64)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % n_vocab as u64) as u32)
        .collect();
    let mut logits = vec![0.0f32; n_vocab];
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        session.reset();
        let started = Instant::now();
        session.eval(&tokens, &mut logits)?;
        prefill.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        for _ in 0..gen_tokens {
            let next = argmax(&logits);
            session.eval(&[next], &mut logits)?;
        }
        decode.push(started.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let prefill_tps = prompt as f64 / median(&mut prefill).max(1e-12);
    let decode_tps = gen_tokens as f64 / median(&mut decode).max(1e-12);
    let bytes_per_token = session.model().weight_bytes_per_token();
    let decode_gbs = decode_tps * bytes_per_token as f64 / 1e9;
    let mut out = io::stdout().lock();
    let kernels = moe_std::kernels::detect().level();
    let written = if json {
        let report = serde_json::json!({
            "file": checkpoint.path().display().to_string(),
            "threads": pool.threads(),
            "kernels": kernels.name(),
            "prompt_tokens": prompt,
            "gen_tokens": gen_tokens,
            "repetitions": reps,
            "prefill_tokens_per_s": prefill_tps,
            "decode_tokens_per_s": decode_tps,
            "weight_bytes_per_token": bytes_per_token,
            "decode_weight_gb_per_s": decode_gbs,
            "weights": if checkpoint.is_loaded() { "loaded" } else { "mapped" },
            "gpu": gpu_summary,
        });
        writeln!(out, "{report}")
    } else {
        writeln!(
            out,
            "{}: {} threads, kernels {kernels}, weights {}\n  prefill {prompt} tokens: {prefill_tps:.2} tokens/s\n  decode {gen_tokens} tokens: {decode_tps:.2} tokens/s, {bytes_per_token} weight bytes/token = {decode_gbs:.2} GB/s",
            checkpoint.path().display(),
            pool.threads(),
            if checkpoint.is_loaded() {
                "loaded"
            } else {
                "mapped"
            },
        )
        .and_then(|()| match &gpu_summary {
            Some(summary) => writeln!(out, "  {summary}"),
            None => Ok(()),
        })
    };
    finish_stdout(written.and_then(|()| out.flush()))
}

fn route_cmd(args: Vec<OsString>) -> Result<(), Failure> {
    let json = args.iter().any(|a| a == "--json");
    let args: Vec<OsString> = args.into_iter().filter(|a| a != "--json").collect();
    let a = model_args("route", args, &[], &[])?;
    require_tokens("route", &a)?;
    let checkpoint = Checkpoint::open_with(&a.path, a.residency)?;
    let pool = ThreadPool::new(a.threads);
    let mut session = Session::from_checkpoint(&checkpoint, &pool, a.tokens.len(), a.batch, a.kv)?;
    // The routing is the report: only the FFN blocks on the GPU.
    let mut gpu = a.gpu;
    gpu.ffn_only = true;
    offload(&mut session, &gpu)?;
    let n_layer = session.model().config().n_layer;
    let n_expert: Vec<usize> = (0..n_layer)
        .map(|l| {
            let moe = session.model().is_dense(l) == Some(false);
            session
                .model()
                .ffn(l)
                .filter(|_| moe)
                .map_or(0, |f| f.experts().n_expert())
        })
        .collect();
    // Per layer: the statistics' storage, then the statistics over it.
    let mut storage: Vec<[Vec<f64>; 2]> = n_expert
        .iter()
        .map(|&n| [vec![0.0; n], vec![0.0; n]])
        .collect();
    let mut counts: Vec<[Vec<u32>; 2]> =
        n_expert.iter().map(|&n| [vec![0; n], vec![0; n]]).collect();
    let mut stats = Vec::new();
    for ([probs, weights], [tokens, drops]) in storage.iter_mut().zip(counts.iter_mut()) {
        stats.push(
            moe_core::router::RouterStats::new(tokens, drops, probs, weights)
                .map_err(|e| Failure::Error(e.to_string()))?,
        );
    }
    let mut routes: Vec<Vec<Vec<(u32, f32)>>> = vec![vec![Vec::new(); a.tokens.len()]; n_layer];
    let n_vocab = session.model().config().n_vocab;
    let mut logits = vec![0.0f32; n_vocab];
    session.eval_routed(
        &a.tokens,
        &mut logits,
        &mut stats,
        |layer, first, selections| {
            for (i, s) in selections.iter().enumerate() {
                routes[layer][first + i] = s.iter().map(|c| (c.expert, c.weight)).collect();
            }
        },
    )?;

    let mut out = io::stdout().lock();
    let moe_layers = (0..n_layer).filter(|&l| n_expert[l] > 0);
    let written = if json {
        let layers: Vec<serde_json::Value> = moe_layers
            .map(|l| {
                let s = &stats[l];
                serde_json::json!({
                    "layer": l,
                    "tokens": routes[l].iter().map(|r| r.iter().map(|(e, w)| serde_json::json!({"expert": e, "weight": w})).collect::<Vec<_>>()).collect::<Vec<_>>(),
                    "tokens_per_expert": s.tokens_per_expert(),
                    "drops": s.drops(),
                    "load_balancing": s.load_balancing(),
                    "router_entropy": s.router_entropy(),
                    "load_entropy": s.load_entropy(),
                })
            })
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::json!({ "file": checkpoint.path().display().to_string(), "input_tokens": a.tokens, "layers": layers })
        )
    } else {
        moe_layers.into_iter().try_for_each(|l| {
            let s = &stats[l];
            writeln!(out, "layer {l}:")?;
            for (pos, r) in routes[l].iter().enumerate() {
                let picks: Vec<String> = r.iter().map(|(e, w)| format!("{e}:{w:.3}")).collect();
                writeln!(out, "  token {pos} (id {}): {}", a.tokens[pos], picks.join(" "))?;
            }
            writeln!(
                out,
                "  tokens per expert {:?}, drops {}, load balance {:.4}, router entropy {:.4}, load entropy {:.4}",
                s.tokens_per_expert(),
                s.drops(),
                s.load_balancing(),
                s.router_entropy(),
                s.load_entropy()
            )
        })
    };
    finish_stdout(written.and_then(|()| out.flush()))
}
