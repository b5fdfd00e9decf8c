//! The `wick` command line: `wick generate` runs the engine from the terminal (like `llama-cli`);
//! `wick serve` loads the model and serves the HTTP API ([`crate::serve`]).
//!
//! Every flag has a `WICK_*` environment variable. Flags are grouped into `Args` structs and
//! checked once into the backend's typed configuration.

use crate::backend::{load_tokenizer, Backend, BackendConfig, DeviceSpec, KvDType, LoadError};
use crate::generate::{generate, GenerateError};
use crate::request::{OutputText, Vocab};
use crate::template::{ChatMessage, ChatTemplate, TemplateError};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use wick_proto::SamplingParams;

#[derive(Debug, Parser)]
#[command(name = "wick", version, about = "An LLM inference server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text for one prompt from the terminal.
    Generate(Box<GenerateArgs>),
    /// Load the model and serve it.
    Serve(Box<ServeArgs>),
}

/// Which model to load and where.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// GGUF file, a directory with config.json, *.safetensors and tokenizer.json, or a name from
    /// `scripts/fetch-model.sh`'s catalogue (`smollm2-135m`, `gemma3-270m`,
    /// `qwen2.5-coder-0.5b`, `qwen2.5-coder-1.5b`), found in `models/` (or `WICK_MODELS_DIR`).
    #[arg(
        long,
        env = "WICK_MODEL",
        default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )]
    pub model: PathBuf,
    /// Device: `cpu` or `cuda:N`.
    #[arg(long, env = "WICK_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Compute threads (default: every core).
    #[arg(long, env = "WICK_THREADS")]
    pub threads: Option<usize>,
    /// Memory for the KV cache, in MiB.
    #[arg(long, env = "WICK_KV_CACHE_MEMORY", default_value_t = BackendConfig::DEFAULT_KV_CACHE_MIB)]
    pub kv_cache_memory: usize,
    /// Tokens per KV cache block.
    #[arg(long, env = "WICK_BLOCK_SIZE", default_value_t = BackendConfig::DEFAULT_BLOCK_SIZE)]
    pub block_size: usize,
    /// Element type of the KV cache: `f16` (twice the tokens of `f32` in the same memory, and
    /// faster attention), or `f32` (keys and values kept as computed).
    #[arg(long, env = "WICK_KV_CACHE_DTYPE", default_value = "f16")]
    pub kv_cache_dtype: KvDType,
    /// Run the device-generic forward path (candle ops, as on CUDA) on the CPU too, instead of
    /// Wick's CPU kernels: to check the CUDA code path without a GPU.
    #[arg(long, env = "WICK_GENERIC_PATH")]
    pub generic_path: bool,
    /// Draft-model speculation: a smaller model with the same tokenizer (a path or a catalogue
    /// name, as `--model`) proposes tokens that the model verifies in one forward pass; the
    /// output is the same token for token as without it. Its KV cache shares
    /// `--kv-cache-memory`.
    #[arg(long, env = "WICK_DRAFT_MODEL")]
    pub draft_model: Option<PathBuf>,
}

/// `scripts/catalogue.txt`, the model catalogue `scripts/fetch-model.sh` fetches from.
const CATALOGUE_TXT: &str = include_str!("../../scripts/catalogue.txt");

/// The catalogue's `(name, GGUF file)` pairs.
pub fn catalogue() -> impl Iterator<Item = (&'static str, &'static str)> {
    CATALOGUE_TXT
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut fields = l.split('|');
            Some((fields.next()?, fields.next()?))
        })
}

/// Where a catalogue model lives once fetched: `name`'s file in `models_dir`.
pub fn catalogue_path(name: &str, models_dir: &std::path::Path) -> Option<PathBuf> {
    catalogue()
        .find(|(n, _)| *n == name)
        .map(|(_, file)| models_dir.join(file))
}

/// A model argument as a path: a catalogue name (that is not also a path here) resolves to its
/// file in `WICK_MODELS_DIR` or `models/`.
fn resolve(model: &std::path::Path) -> PathBuf {
    if model.exists() {
        return model.to_path_buf();
    }
    let dir = std::env::var_os("WICK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"));
    model
        .to_str()
        .and_then(|name| catalogue_path(name, &dir))
        .unwrap_or_else(|| model.to_path_buf())
}

impl ModelArgs {
    /// `--model` as a path: a catalogue name (that is not also a path here) resolves to its
    /// file in `WICK_MODELS_DIR` or `models/`.
    pub fn model_path(&self) -> PathBuf {
        resolve(&self.model)
    }

    /// `--draft-model` as a path, resolved as `--model` is.
    pub fn draft_model_path(&self) -> Option<PathBuf> {
        self.draft_model.as_deref().map(resolve)
    }

    /// A clear error for a catalogue model that has not been fetched.
    pub fn check_fetched(&self) -> Result<(), CliError> {
        for model in std::iter::once(&self.model).chain(&self.draft_model) {
            let path = resolve(model);
            match model.to_str() {
                Some(name) if !path.exists() && catalogue().any(|(n, _)| n == name) => {
                    return Err(CliError::NotFetched {
                        name: name.to_string(),
                        path,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn backend_config(&self) -> BackendConfig {
        BackendConfig {
            device: self.device,
            threads: self.threads,
            kv_cache_bytes: self.kv_cache_memory << 20,
            block_size: self.block_size,
            kv_dtype: self.kv_cache_dtype,
            generic: self.generic_path,
            draft_model: self.draft_model_path(),
            ..BackendConfig::new(self.model_path())
        }
    }
}

/// How tokens are chosen.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// 0 is greedy.
    #[arg(long, env = "WICK_TEMPERATURE", default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    #[arg(long, env = "WICK_TOP_K", default_value_t = 0)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p.
    #[arg(long, env = "WICK_TOP_P", default_value_t = 1.0)]
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely.
    #[arg(long, env = "WICK_MIN_P", default_value_t = 0.0)]
    pub min_p: f32,
    /// Penalty on tokens already seen (1.0: off).
    #[arg(long, env = "WICK_REPETITION_PENALTY", default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Penalty per occurrence of a token in the output.
    #[arg(long, env = "WICK_FREQUENCY_PENALTY", default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Penalty on any token present in the output.
    #[arg(long, env = "WICK_PRESENCE_PENALTY", default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Seed of the sampling stream.
    #[arg(long, env = "WICK_SEED", default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Raw prompt text (no chat template).
    #[arg(long, conflicts_with = "chat", required_unless_present = "chat")]
    pub prompt: Option<String>,
    /// A user message, rendered with the model's chat template.
    #[arg(long)]
    pub chat: Option<String>,
    /// A system message to put before `--chat`.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, env = "WICK_MAX_TOKENS", default_value_t = 256)]
    pub max_tokens: usize,
    /// Keep going past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print the prompt and generated token ids as JSON instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub trace: crate::telemetry::TraceArgs,
}

/// Speculative decoding.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Speculative decoding: `ngram` proposes the tokens that follow the place in the prompt
    /// (or the output) that the output is copying, found as the latest earlier occurrence of
    /// its last few tokens, with the substitutions it was seen to make (a renamed variable)
    /// applied; they are verified in one forward pass, and the output is the same token for
    /// token as without it. `none` by default.
    #[arg(long, env = "WICK_SPECULATE", value_enum, default_value_t = Speculate::None)]
    pub speculate: Speculate,
    /// Most proposals per sequence and step (each sequence adapts its own up to this by how
    /// many of its proposals are accepted).
    #[arg(long, env = "WICK_NUM_DRAFT_TOKENS", default_value_t = 8)]
    pub num_draft_tokens: usize,
    /// Longest and shortest n-gram matched, as `MAX,MIN`.
    #[arg(long, env = "WICK_NGRAM", default_value = "4,2", value_parser = parse_ngram)]
    pub ngram: (usize, usize),
    /// Most proposals in one step across the batch: a full batch does not pay for rejected
    /// proposals.
    #[arg(long, env = "WICK_SPEC_STEP_BUDGET", default_value_t = 32)]
    pub spec_step_budget: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Speculate {
    None,
    Ngram,
}

fn parse_ngram(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("expected `MAX,MIN` with MAX >= MIN >= 1, got `{s}`");
    let (max, min) = s.split_once(',').ok_or_else(bad)?;
    let (max, min) = (
        max.trim().parse().map_err(|_| bad())?,
        min.trim().parse().map_err(|_| bad())?,
    );
    (max >= min && min >= 1)
        .then_some((max, min))
        .ok_or_else(bad)
}

impl SpecArgs {
    /// The scheduler's speculation settings (`None` when off): n-gram lookup, or the backend's
    /// draft model when one is loaded.
    pub fn config(&self, draft_model: bool) -> Option<crate::scheduler::speculate::SpecConfig> {
        use crate::scheduler::speculate::{Proposer, SpecConfig};
        let proposer = match (draft_model, self.speculate) {
            (true, _) => Proposer::DraftModel,
            (false, Speculate::Ngram) => Proposer::Ngram,
            (false, Speculate::None) => return None,
        };
        (self.num_draft_tokens > 0).then_some({
            SpecConfig {
                proposer,
                max_draft: self.num_draft_tokens,
                ngram_max: self.ngram.0,
                ngram_min: self.ngram.1,
                step_budget: self.spec_step_budget,
            }
        })
    }
}

/// Overload, security and lifecycle settings.
#[derive(Debug, Args)]
pub struct OpsArgs {
    /// Most sequences in flight (a request with `n` choices counts `n`); past it, 429 with
    /// Retry-After.
    #[arg(long, env = "WICK_MAX_CONCURRENT_REQUESTS", default_value_t = 128)]
    pub max_concurrent_requests: usize,
    /// Most requests waiting for admission to the running batch; past it, 429 with Retry-After.
    #[arg(long, env = "WICK_MAX_QUEUED_REQUESTS", default_value_t = 128)]
    pub max_queued_requests: usize,
    /// Seconds a request may wait for admission before it is answered 503 (default: no limit).
    #[arg(long, env = "WICK_MAX_QUEUE_TIME")]
    pub max_queue_time: Option<f64>,
    /// API key that generation routes require as `Authorization: Bearer <key>`.
    #[arg(long, env = "WICK_API_KEY")]
    pub api_key: Option<String>,
    /// File of API keys, one per line, each optionally followed by its name for metrics and its
    /// limits: `KEY name=alice rpm=60 tpm=20000 streams=4` (requests and tokens per minute,
    /// concurrent streams; 429 with Retry-After past them). Blank lines and `#` comments ignored.
    #[arg(long, env = "WICK_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Secret (16 bytes or more) shared by the replicas: streams still running when
    /// `--shutdown-timeout` ends get a resume token signed with it, which `POST /v1/resume`
    /// continues on any replica with the same key and system_fingerprint.
    #[arg(long, env = "WICK_RESUME_KEY", hide_env_values = true)]
    pub resume_key: Option<String>,
    /// Log format.
    #[arg(long, env = "WICK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Seconds in-flight streams get to finish after SIGTERM before they end with an error.
    #[arg(long, env = "WICK_SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    pub shutdown_timeout: f64,
    /// Largest request body, in bytes (413 past it, from `Content-Length` when declared).
    #[arg(long, env = "WICK_MAX_BODY_BYTES", default_value_t = crate::server::lifecycle::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Seconds a request body may take to arrive (408 and the connection closed past it).
    #[arg(long, env = "WICK_BODY_READ_TIMEOUT", default_value_t = 30.0)]
    pub body_read_timeout: f64,
    /// Seconds a client may take to send a request's headers (the connection is closed past it).
    #[arg(long, env = "WICK_HEADER_READ_TIMEOUT", default_value_t = 10.0)]
    pub header_read_timeout: f64,
    /// Seconds a kept-alive connection may sit with no request in flight before it is closed.
    #[arg(long, env = "WICK_KEEP_ALIVE_TIMEOUT", default_value_t = 5.0)]
    pub keep_alive_timeout: f64,
    /// Most open HTTP connections; past it, new ones get a 503 and are closed at once. Keep it
    /// below the process's file-descriptor limit.
    #[arg(long, env = "WICK_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where and as what the server listens.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Address to bind.
    #[arg(long, env = "WICK_HOST", default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port to bind (0 picks a free one; the chosen address is printed).
    #[arg(long, env = "WICK_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Model name clients use (default: the model file's name).
    #[arg(long, env = "WICK_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// A Jinja chat template file to use instead of the model's.
    #[arg(long, env = "WICK_CHAT_TEMPLATE")]
    pub chat_template: Option<PathBuf>,
    /// Read control-token text in chat message content (`<|im_start|>`, ...) as control tokens,
    /// as the template's own are. Only for trusted clients: it lets a message forge turns. By
    /// default such text stays text.
    #[arg(long, env = "WICK_SPECIAL_TOKENS_IN_CONTENT")]
    pub special_tokens_in_content: bool,
    /// How the model writes tool calls: `hermes` (`<tool_call>` tags, Qwen 2.5), `mistral`
    /// (`[TOOL_CALLS] [...]`), `llama3` (a bare call object with `parameters`) or `json` (Wick's
    /// own bare call object). Default: read from the chat template (`<tool_call>`,
    /// `[TOOL_CALLS]`, the `ipython` role), else `json`.
    #[arg(long, env = "WICK_TOOL_CALL_FORMAT", value_enum)]
    pub tool_call_format: Option<crate::tools::ToolFormat>,
    /// Where a reasoning model's reasoning is: `none`, or its two markers as `OPEN,CLOSE`; it
    /// is answered as `reasoning_content`. Default: `<think>,</think>` when the chat template
    /// mentions `<think>`.
    #[arg(long, env = "WICK_REASONING_MARKERS")]
    pub reasoning_markers: Option<String>,
    /// Serve no web playground (by default a chat page at `/ui/`, `/` redirecting there).
    #[arg(long, env = "WICK_NO_UI")]
    pub no_ui: bool,
}

/// What one request and one step may hold.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Longest prompt, in tokens (default: the context, less one).
    #[arg(long, env = "WICK_MAX_INPUT_TOKENS")]
    pub max_input_tokens: Option<usize>,
    /// Longest prompt plus generation, in tokens (default: the context, capped by KV capacity).
    #[arg(long, env = "WICK_MAX_TOTAL_TOKENS")]
    pub max_total_tokens: Option<usize>,
    /// Most tokens (prefill plus decode) in one forward step. Long prompts are prefilled in
    /// chunks that fit, so this bounds how long a prefill holds back the other sequences' next
    /// tokens (about 0.4 s per step at 256 on two CPU cores).
    #[arg(long, env = "WICK_MAX_BATCH_TOKENS", default_value_t = 256)]
    pub max_batch_tokens: usize,
    /// Plan steps by time: while sequences are decoding, prefill chunks shrink so that each step
    /// is predicted to take at most this many milliseconds (one prompt a step still gets 16
    /// tokens), by a model of step time fitted to a few steps timed at start-up and to every
    /// step served since (its tokens, their context lengths, its sampled rows); `/ready`
    /// answers once those start-up steps have run. Off by default: chunks take what
    /// `--max-batch-tokens` leaves.
    #[arg(long, env = "WICK_TARGET_INTER_TOKEN_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub target_inter_token_ms: Option<u64>,
    /// Most sequences running at once.
    #[arg(long, env = "WICK_MAX_RUNNING_SEQUENCES", default_value_t = 64)]
    pub max_running_sequences: usize,
    /// Turn off automatic prefix caching (reuse of the KV blocks of shared prompt prefixes).
    #[arg(long, env = "WICK_NO_PREFIX_CACHE")]
    pub no_prefix_cache: bool,
    /// Largest `n` (choices per request).
    #[arg(long, env = "WICK_MAX_N", default_value_t = 8)]
    pub max_n: usize,
    /// Most `stop` strings per request.
    #[arg(long, env = "WICK_MAX_STOP_SEQUENCES", default_value_t = 8)]
    pub max_stop_sequences: usize,
    /// Largest `top_logprobs`.
    #[arg(long, env = "WICK_MAX_TOP_LOGPROBS", default_value_t = 20)]
    pub max_top_logprobs: usize,
    /// Most log-probability entries one request may ask for: `n` x `max_tokens` x
    /// (1 + `top_logprobs`) when it asks for log-probabilities (each entry costs ~100 bytes
    /// until the reply is sent).
    #[arg(long, env = "WICK_MAX_LOGPROB_ENTRIES", default_value_t = 1 << 20)]
    pub max_logprob_entries: usize,
    /// Largest grammar (`response_format`, tools, TGI `grammar`), in bytes of Lark or regex
    /// text or compact JSON schema.
    #[arg(long, env = "WICK_MAX_GRAMMAR_BYTES", default_value_t = 64 << 10)]
    pub max_grammar_bytes: usize,
    /// Deepest grammar nesting: JSON schema levels (following `$ref`s), Lark rule chains and
    /// brackets, regex groups.
    #[arg(long, env = "WICK_MAX_GRAMMAR_DEPTH", default_value_t = 128)]
    pub max_grammar_depth: usize,
    /// Seconds a grammar may take to compile before the request is refused.
    #[arg(long, env = "WICK_GRAMMAR_COMPILE_TIMEOUT", default_value_t = 5.0)]
    pub grammar_compile_timeout: f64,
}

impl LimitArgs {
    /// The grammar limits these flags set (checked by `serve`).
    pub fn grammar_limits(&self) -> crate::backend::GrammarLimits {
        crate::backend::GrammarLimits {
            source: crate::backend::SourceLimits {
                max_bytes: self.max_grammar_bytes,
                max_depth: self.max_grammar_depth,
            },
            compile_timeout: std::time::Duration::from_secs_f64(self.grammar_compile_timeout),
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A flag's value outside what it accepts.
    #[error("{flag} must be {rule}")]
    Flag {
        flag: &'static str,
        rule: &'static str,
    },
    #[error("OpenTelemetry exporter: {0}")]
    Telemetry(String),
    #[error("--api-key-file {} holds no key", path.display())]
    NoKeyInFile { path: PathBuf },
    #[error("--api-key-file {}, line {line}: {message}", path.display())]
    KeyFile {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("model `{name}` is not fetched yet ({} is missing); run scripts/fetch-model.sh {name}", path.display())]
    NotFetched { name: String, path: PathBuf },
    /// A start-up or shut-down task panicked or was cancelled.
    #[error("a {task} task failed: {source}")]
    Task {
        task: &'static str,
        source: tokio::task::JoinError,
    },
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Generate(args) => run_generate(*args),
        Command::Serve(args) => run_serve(*args),
    }
}

fn run_generate(args: GenerateArgs) -> Result<(), CliError> {
    args.model.check_fetched()?;
    let tok = load_tokenizer(&args.model.model_path())?;
    let (backend, info) = Backend::spawn(args.model.backend_config())?;
    let (text, templated) = match (&args.prompt, &args.chat) {
        (Some(p), _) => (p.clone(), false),
        (None, Some(user)) => {
            let template = ChatTemplate::new(
                tok.chat_template.as_deref(),
                tok.bos_token(),
                tok.eos_token(),
            )?;
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(ChatMessage::new("system", system.clone()));
            }
            messages.push(ChatMessage::new("user", user.clone()));
            (template.render(&messages, true)?, true)
        }
        (None, None) => unreachable!("clap requires --prompt or --chat"),
    };
    let vocab = Vocab::from(tok);
    let prompt = vocab.encode(&text, templated).map_err(CliError::Tokenize)?;
    let criteria = vocab.criteria(args.max_tokens, Vec::new(), args.ignore_eos);
    // The server's incremental detokenizer; `generate` decides when to stop by the same criteria.
    let mut stream = OutputText::new(vocab.tokenizer.clone(), criteria.clone());
    let mut out = std::io::stdout().lock();
    let json = args.json;
    let result = generate(
        &backend,
        &info,
        &prompt,
        &args.sampling.params(),
        &criteria,
        |token| {
            if !json {
                let piece = stream.push(token).text;
                // A closed stdout ends nothing here; the generation finishes on its own.
                let _closed = write!(out, "{piece}").and_then(|_| out.flush());
            }
        },
    );
    backend.shutdown();
    let generated = result?;
    if json {
        let value = serde_json::json!({
            "prompt_ids": prompt,
            "ids": generated.tokens,
            "finish_reason": generated.finish_reason.as_openai(),
        });
        writeln!(out, "{value}")?;
    } else {
        writeln!(out)?;
    }
    Ok(())
}

fn run_serve(args: ServeArgs) -> Result<(), CliError> {
    args.trace.check()?;
    let telemetry = crate::telemetry::init(args.ops.log_format, &args.trace)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wick-http")
        .build()?;
    let served = runtime.block_on(crate::serve::serve(args));
    telemetry.shutdown();
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_names_resolve_to_their_files() {
        let dir = std::path::Path::new("/srv/models");
        assert_eq!(
            catalogue_path("qwen2.5-coder-0.5b", dir),
            Some(dir.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
        );
        assert_eq!(catalogue_path("gpt-5", dir), None);
    }

    #[test]
    fn an_unfetched_catalogue_model_names_the_fetch_command() {
        let cli = Cli::parse_from(["wick", "serve", "--model", "gemma3-270m"]);
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        std::env::set_var("WICK_MODELS_DIR", "/nonexistent/models");
        let err = args.model.check_fetched().unwrap_err().to_string();
        assert!(err.contains("scripts/fetch-model.sh gemma3-270m"), "{err}");
    }
}
