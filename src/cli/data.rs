//! `anetrain data download|info` and `anetrain tokenize`: the command-line face of
//! [`crate::data::download`], [`crate::data::info`] and [`crate::data::tokenize`]. Results go
//! to stdout, progress bars and warnings to stderr.

use crate::data::download::{self, Progress, TinyStoriesRequest};
use crate::data::info;
use crate::data::tokenize::{self, InputFormat, TokenFormat, TokenizeOptions};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Download a dataset: TinyStories, pretokenized (uint16 shards) or as JSON stories (--raw).
    Download(DownloadArgs),
    /// Summarize a token file: tokens, documents, id range, most frequent ids, vocabulary check.
    Info(InfoArgs),
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Dataset {
    /// TinyStories: pretokenized with the 32000-token Llama 2 tokenizer (enio/TinyStories
    /// tok32000), or the original JSON stories with --raw (roneneldan/TinyStories).
    Tinystories,
}

#[derive(clap::Args)]
pub struct DownloadArgs {
    /// The dataset.
    #[arg(value_enum)]
    pub dataset: Dataset,
    /// Folder for the archive and the extracted shards.
    #[arg(
        long = "out",
        alias = "dir",
        value_name = "DIR",
        default_value = "data"
    )]
    pub dir: PathBuf,
    /// Extract shards 0..N (each pretokenized shard is ~41 MB, ~20 M tokens; at most 50).
    #[arg(long, default_value_t = 1, value_parser = super::at_least_one)]
    pub shards: usize,
    /// The original JSON stories (TinyStories_all_data.tar.gz) instead of token ids.
    #[arg(long)]
    pub raw: bool,
    /// Archive URL (a mirror). Default: $ANETRAIN_TINYSTORIES_URL or, with --raw,
    /// $ANETRAIN_TINYSTORIES_RAW_URL, else Hugging Face.
    #[arg(long)]
    pub url: Option<String>,
    /// Keep the downloaded archive after extracting (it is ~1 GB; deleted by default).
    #[arg(long)]
    pub keep_archive: bool,
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// Token file (flat little-endian uint16 ids).
    pub file: PathBuf,
    /// A llama2.c tokenizer.bin: decode the frequent ids and check ids against its vocabulary.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// How many of the most frequent ids to list.
    #[arg(long, default_value_t = 10, value_parser = super::at_least_one)]
    pub top: usize,
}

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// Tokenizer used to encode: a llama2.c tokenizer.bin, a Hugging Face tokenizer.json, or a
    /// Hugging Face model folder holding one.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Input files: JSON arrays (TinyStories dataNN.json), JSON lines, or text.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output token file; its sidecar OUT.json is written beside it.
    #[arg(short = 'o', long = "out", alias = "output", value_name = "FILE")]
    pub out: PathBuf,
    /// Id width: u16 (llama2.c's format) or u32; default: u16 when the vocabulary fits
    /// (≤ 65536 ids), else u32. Training reads both (the sidecar records the width).
    #[arg(long, value_enum)]
    pub format: Option<TokenFormat>,
    /// How to read the inputs (auto: by extension and first character).
    #[arg(long, value_enum, default_value = "auto")]
    pub input_format: InputFormat,
    /// JSON field holding the document text.
    #[arg(long, default_value = "story")]
    pub field: String,
    /// Text inputs: each file is one document (default: blank-line-separated blocks).
    #[arg(long)]
    pub doc_per_file: bool,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// An indicatif bar per phase on stderr (hidden when stderr is not a terminal).
struct TermProgress {
    bar: Mutex<Option<ProgressBar>>,
}

impl TermProgress {
    fn new() -> TermProgress {
        TermProgress {
            bar: Mutex::new(None),
        }
    }
}

impl Progress for TermProgress {
    fn start(&self, label: &str, total: Option<u64>, done: u64) {
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::no_length(),
        };
        let style = if total.is_some() {
            "{msg:>20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
        } else {
            "{msg:>20} {spinner} {bytes} {bytes_per_sec}"
        };
        bar.set_style(
            ProgressStyle::with_template(style)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        bar.set_position(done);
        bar.reset_eta();
        if let Some(old) = self.bar.lock().unwrap().replace(bar) {
            old.finish_and_clear();
        }
    }
    fn advance(&self, n: u64) {
        if let Some(b) = &*self.bar.lock().unwrap() {
            b.inc(n);
        }
    }
    fn finish(&self) {
        if let Some(b) = self.bar.lock().unwrap().take() {
            b.finish_and_clear();
        }
    }
    fn note(&self, msg: &str) {
        match &*self.bar.lock().unwrap() {
            Some(b) => b.suspend(|| eprintln!("{msg}")),
            None => eprintln!("{msg}"),
        }
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub fn run(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::Download(a) => run_download(a),
        DataCommand::Info(a) => run_info(a),
    }
}

fn run_download(a: DownloadArgs) -> Result<()> {
    let Dataset::Tinystories = a.dataset;
    let req = TinyStoriesRequest {
        dir: a.dir.clone(),
        shards: a.shards,
        raw: a.raw,
        url: a.url.clone(),
        keep_archive: a.keep_archive,
    };
    let url = download::tinystories_url(a.raw, a.url.as_deref());
    let what = if a.raw {
        "TinyStories JSON stories"
    } else {
        "pretokenized TinyStories (Llama 2 tokenizer, 32000 ids, uint16)"
    };
    let which = match a.shards {
        1 => "shard 0".to_string(),
        n => format!("shards 0-{}", n - 1),
    };
    println!("{what}: {which} from {url}");
    let progress = TermProgress::new();
    let t0 = Instant::now();
    let r = download::download_tinystories(&req, &progress)?;
    match &r.fetch {
        None => println!(
            "all {} shards already present in {}; nothing downloaded",
            r.files.len(),
            a.dir.display()
        ),
        Some(f) if f.already_present => println!(
            "using the archive already at {} ({})",
            r.archive.display(),
            mb(f.bytes)
        ),
        Some(f) => {
            let how = if f.resumed_from > 0 {
                format!(", resumed at {}", mb(f.resumed_from))
            } else if f.restarted {
                ", restarted from the beginning".to_string()
            } else {
                String::new()
            };
            println!(
                "downloaded {} ({} received{how}) to {} in {:.1} s",
                mb(f.bytes),
                mb(f.received),
                r.archive.display(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    if r.already_present > 0 && r.fetch.is_some() {
        println!(
            "{} shard(s) were already present and left as they were",
            r.already_present
        );
    }
    println!("shards in {}:", a.dir.display());
    for (p, size) in &r.files {
        if a.raw {
            println!("  {}  {}", p.display(), mb(*size));
        } else {
            println!("  {}  {}  {} tokens", p.display(), mb(*size), size / 2);
        }
    }
    if r.fetch.is_some() {
        if r.archive_kept {
            println!("archive kept at {}", r.archive.display());
        } else {
            println!(
                "deleted the archive {} (pass --keep-archive to keep it)",
                r.archive.display()
            );
        }
    }
    if let Some((first, _)) = r.files.first() {
        if a.raw {
            println!(
                "tokenize with: anetrain tokenize --tokenizer tokenizer.bin {} -o tokens.bin",
                first.display()
            );
        } else {
            println!("train with: anetrain train --data {}", first.display());
            if r.files.len() > 1 {
                println!("(shards are plain concatenable uint16 files: `cat` them into one to train on several)");
            }
        }
    }
    Ok(())
}

fn load_tokenizer(p: &Path) -> Result<Tokenizer> {
    Tokenizer::load(p).with_context(|| format!("{}: cannot load the tokenizer", p.display()))
}

fn run_info(a: InfoArgs) -> Result<()> {
    let tok = a.tokenizer.as_deref().map(load_tokenizer).transpose()?;
    let tk = tok.as_ref().zip(a.tokenizer.as_deref());
    let (text, warnings) = info::describe(&a.file, tk, a.top)?;
    print!("{text}");
    for w in warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

pub fn run_tokenize(a: TokenizeArgs) -> Result<()> {
    use crate::tokenizer::hf::{is_hf_tokenizer, Encode, HfTokenizer};
    let tok: Box<dyn Encode> = if is_hf_tokenizer(&a.tokenizer) {
        Box::new(HfTokenizer::load(&a.tokenizer)?)
    } else {
        Box::new(load_tokenizer(&a.tokenizer)?)
    };
    let tok_file = if a.tokenizer.is_dir() {
        a.tokenizer.join("tokenizer.json")
    } else {
        a.tokenizer.clone()
    };
    let format = a.format.unwrap_or(if tok.vocab_size() > 1 << 16 {
        TokenFormat::U32
    } else {
        TokenFormat::U16
    });
    let opts = TokenizeOptions {
        format,
        input_format: a.input_format,
        field: a.field.clone(),
        doc_per_file: a.doc_per_file,
        threads: a.threads,
    };
    let progress = TermProgress::new();
    let t0 = Instant::now();
    let sc =
        tokenize::tokenize_files(tok.as_ref(), &tok_file, &a.inputs, &a.out, &opts, &progress)?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{} documents, {} tokens ({} per document) from {} in {:.1} s ({:.0} tokens/s)",
        sc.documents,
        sc.tokens,
        if sc.documents > 0 {
            format!("{:.1}", sc.tokens as f64 / sc.documents as f64)
        } else {
            "-".into()
        },
        mb(sc.input_bytes),
        secs,
        sc.tokens as f64 / secs.max(1e-9)
    );
    if sc.skipped_empty > 0 {
        println!("{} empty documents skipped", sc.skipped_empty);
    }
    println!(
        "wrote {} ({}, {} bytes per id) and {}",
        a.out.display(),
        sc.format.name(),
        sc.format.bytes_per_id(),
        tokenize::sidecar_path(&a.out).display()
    );
    Ok(())
}
