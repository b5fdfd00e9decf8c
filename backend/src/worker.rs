//! The backend worker: a dedicated OS thread that owns the [`Engine`] (model weights and KV cache)
//! and serves commands from a bounded flume channel, and [`Backend`], the cheap handle the router
//! holds.
//!
//! Start-up: [`Backend::spawn`] starts the thread, which loads the model and reports success (with
//! the [`ModelInfo`]) or the [`LoadError`] over a one-shot channel. Shut-down: [`Backend::shutdown`]
//! sends `Shutdown` and joins the thread; dropping every handle closes the channel, which also ends
//! the loop. No tokio runtime lives in the worker.

use crate::draft::Drafter;
use crate::engine::Engine;
use crate::error::{BackendError, LoadError};
use crate::grammar::Constraint;
use crate::kv::{KvCache, KvDType};
use crate::loader;
use crate::model::Model;
use candle_core::Device;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use wick_proto::{ModelInfo, SeqId, Step, StepOutput};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (expected `cpu` or `cuda:N`)")),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    fn open(self) -> Result<Device, LoadError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(_) if !cfg!(feature = "cuda") => Err(LoadError::Device {
                device: self.to_string(),
                reason: "this binary was built without CUDA; build it with `--features cuda`"
                    .into(),
            }),
            DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| LoadError::Device {
                device: self.to_string(),
                reason: format!("no CUDA device answers: {e}"),
            }),
        }
    }
}

/// What the worker loads and how it sizes the cache.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// A GGUF file or a Hugging Face directory.
    pub model_path: PathBuf,
    pub device: DeviceSpec,
    /// Memory budget of the KV cache, in bytes.
    pub kv_cache_bytes: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Element type of the KV cache.
    pub kv_dtype: KvDType,
    /// Compute threads; `None` uses every core.
    pub threads: Option<usize>,
    /// Dequantize every weight to f32 at load (reference runs).
    pub dequantize: bool,
    /// Run the device-generic forward path (candle ops) even on the CPU; always on CUDA.
    pub generic: bool,
    /// A smaller model of the same vocabulary for draft-model speculation. Its KV cache has as
    /// many blocks as the target's, and the two share `kv_cache_bytes`.
    pub draft_model: Option<PathBuf>,
}

impl BackendConfig {
    /// The KV cache's memory unless configured, in MiB (`wick --kv-cache-memory`).
    pub const DEFAULT_KV_CACHE_MIB: usize = 512;
    /// Tokens per KV block unless configured (`wick --block-size`).
    pub const DEFAULT_BLOCK_SIZE: usize = 16;

    /// Whether the model runs the device-generic forward path: when asked, and on every GPU.
    pub fn uses_generic_path(&self) -> bool {
        self.generic || self.device != DeviceSpec::Cpu
    }

    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        BackendConfig {
            model_path: model_path.into(),
            device: DeviceSpec::Cpu,
            kv_cache_bytes: Self::DEFAULT_KV_CACHE_MIB << 20,
            block_size: Self::DEFAULT_BLOCK_SIZE,
            kv_dtype: KvDType::default(),
            threads: None,
            dequantize: false,
            generic: false,
            draft_model: None,
        }
    }
}

/// Hands the heap pages that loading freed back to the operating system. glibc keeps them
/// otherwise: the GGUF's raw tensors, the tokenizer's build-time tables and the repacking's
/// temporaries stayed resident, about 340 MB of a Gemma 3 270M server's 2.1 GB once ready. A
/// no-op off glibc.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free pages to the system; no live allocation moves.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Loads the engine and describes it.
pub fn load_engine(cfg: &BackendConfig) -> Result<(Engine, ModelInfo), LoadError> {
    let device = cfg.device.open()?;
    // A `WICK_KERNEL` this CPU cannot run is a configuration error, not a silent fallback.
    crate::ops::qgemm::kernel_from_env().map_err(|reason| LoadError::Kernel { reason })?;
    let mut weights = loader::load_weights(&cfg.model_path)?;
    if cfg.dequantize {
        weights.dequantize();
    }
    let model = Model::new(weights, cfg.uses_generic_path(), &device)?;
    let draft = (cfg.draft_model.as_deref())
        .map(|path| load_draft(cfg, path, &model, &device))
        .transpose()?;
    // One block of each cache per block id: the budget buys blocks of both.
    let block_bytes = |m: &Model| KvCache::block_bytes(m.cfg(), cfg.block_size, cfg.kv_dtype);
    let per_block = block_bytes(&model) + draft.as_ref().map_or(0, block_bytes);
    let blocks = KvCache::blocks_in_budget(cfg.kv_cache_bytes, cfg.block_size, per_block)?;
    let cache =
        |m: &Model| KvCache::with_blocks(m.cfg(), cfg.block_size, blocks, cfg.kv_dtype, &device);
    let kv = cache(&model)?;
    let drafter = match draft {
        Some(d) => {
            let dkv = cache(&d)?;
            Some(Drafter::new(d, dkv))
        }
        None => None,
    };
    let model_id = cfg
        .model_path
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
        .unwrap_or_else(|| "model".into());
    let info = ModelInfo {
        model_id,
        architecture: model.cfg().architecture.name().into(),
        dtype: model.dtype_name().into(),
        device: cfg.device.to_string(),
        vocab_size: model.cfg().vocab_size,
        max_context: model.cfg().max_context,
        kv_block_size: kv.block_size(),
        num_kv_blocks: kv.num_blocks(),
    };
    let engine = Engine::new(model, kv);
    Ok((
        match drafter {
            Some(d) => engine.with_drafter(d),
            None => engine,
        },
        info,
    ))
}

/// Loads a draft model for `target`, on the same forward path: refused unless its tokenizer is
/// the target's (the same token for every id) and its vocabulary no larger.
fn load_draft(
    cfg: &BackendConfig,
    path: &std::path::Path,
    target: &Model,
    device: &Device,
) -> Result<Model, LoadError> {
    let refuse = |reason: String| LoadError::DraftModel {
        path: path.to_path_buf(),
        reason,
    };
    let vocab = |p: &std::path::Path| -> Result<std::collections::HashMap<String, u32>, LoadError> {
        Ok(crate::tokenizer::load_tokenizer(p)?
            .tokenizer
            .get_vocab(true))
    };
    let (ours, theirs) = (vocab(&cfg.model_path)?, vocab(path)?);
    if ours != theirs {
        let differs = (theirs.iter())
            .find(|(t, id)| ours.get(*t) != Some(id))
            .map(|(t, id)| format!("token {t:?} is id {id} there, {:?} here", ours.get(t)))
            .unwrap_or_else(|| format!("{} tokens there, {} here", theirs.len(), ours.len()));
        return Err(refuse(format!(
            "its tokenizer is not the model's: {differs}"
        )));
    }
    let mut weights = loader::load_weights(path)?;
    if cfg.dequantize {
        weights.dequantize();
    }
    let draft = Model::new(weights, cfg.uses_generic_path(), device)?;
    if draft.cfg().vocab_size > target.cfg().vocab_size {
        return Err(refuse(format!(
            "its vocabulary of {} is larger than the model's {}",
            draft.cfg().vocab_size,
            target.cfg().vocab_size
        )));
    }
    Ok(draft)
}

enum Command {
    Step(Step, flume::Sender<Result<StepOutput, BackendError>>),
    Constrain(SeqId, Box<Constraint>),
    Release(SeqId),
    Ping(flume::Sender<()>),
    Shutdown,
}

/// Commands waiting for the worker. The scheduler sends one step and waits for it, so a handful
/// of slots is plenty; the bound only stops a runaway sender from growing memory.
const COMMAND_CAPACITY: usize = 64;

/// Handle to the worker thread. Cheap to clone; every clone talks to the same worker.
#[derive(Clone)]
pub struct Backend {
    tx: flume::Sender<Command>,
    /// Joined by `shutdown`; `None` once joined.
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Backend {
    /// Starts the worker thread and waits until the model is loaded (or failed to load).
    pub fn spawn(cfg: BackendConfig) -> Result<(Backend, ModelInfo), LoadError> {
        let (tx, rx) = flume::bounded(COMMAND_CAPACITY);
        let (ready_tx, ready_rx) = flume::bounded(1);
        let thread = std::thread::Builder::new()
            .name("wick-backend".into())
            .spawn(move || {
                let pool = match rayon::ThreadPoolBuilder::new()
                    .num_threads(cfg.threads.unwrap_or(0))
                    .thread_name(|i| format!("wick-compute-{i}"))
                    .build()
                {
                    Ok(pool) => pool,
                    Err(e) => {
                        let _unheard = ready_tx.send(Err(LoadError::Device {
                            device: "cpu".into(),
                            reason: format!("thread pool: {e}"),
                        }));
                        return;
                    }
                };
                // The step's parallel work runs on a compute team of as many threads as the
                // pool (this one included); rayon's threads serve what candle runs itself.
                pool.install(|| {
                    let threads = rayon::current_num_threads();
                    let ran = crate::team::install(threads, || match load_engine(&cfg) {
                        Ok((engine, info)) => {
                            if ready_tx.send(Ok(info)).is_ok() {
                                run(engine, rx);
                            }
                        }
                        // If nobody waits for the result there is nobody to tell.
                        Err(e) => drop(ready_tx.send(Err(e))),
                    });
                    if let Err(e) = ran {
                        let _unheard = ready_tx.send(Err(LoadError::Device {
                            device: "cpu".into(),
                            reason: format!("compute threads: {e}"),
                        }));
                    }
                })
            })
            .map_err(|e| LoadError::io("wick-backend thread", e))?;
        let info = ready_rx.recv().map_err(|_| LoadError::WorkerGone)??;
        Ok((
            Backend {
                tx,
                thread: Arc::new(Mutex::new(Some(thread))),
            },
            info,
        ))
    }

    /// Runs one step and waits for its output (blocking).
    pub fn step(&self, step: Step) -> Result<StepOutput, BackendError> {
        let (reply, rx) = flume::bounded(1);
        self.tx
            .send(Command::Step(step, reply))
            .map_err(|_| BackendError::WorkerGone)?;
        rx.recv().map_err(|_| BackendError::WorkerGone)?
    }

    /// Runs one step and waits for its output without blocking an async runtime.
    pub async fn step_async(&self, step: Step) -> Result<StepOutput, BackendError> {
        let (reply, rx) = flume::bounded(1);
        self.tx
            .send_async(Command::Step(step, reply))
            .await
            .map_err(|_| BackendError::WorkerGone)?;
        rx.recv_async()
            .await
            .map_err(|_| BackendError::WorkerGone)?
    }

    /// Constrains the later samplings of `seq` (send before the first step that samples it;
    /// commands are served in order).
    pub async fn constrain_async(
        &self,
        seq: SeqId,
        constraint: Constraint,
    ) -> Result<(), BackendError> {
        self.tx
            .send_async(Command::Constrain(seq, Box::new(constraint)))
            .await
            .map_err(|_| BackendError::WorkerGone)
    }

    /// Tells the worker a sequence is finished, so it can drop its sampling and grammar state.
    pub fn release(&self, seq: SeqId) -> Result<(), BackendError> {
        self.tx
            .send(Command::Release(seq))
            .map_err(|_| BackendError::WorkerGone)
    }

    /// Like [`Backend::release`], without blocking an async runtime.
    pub async fn release_async(&self, seq: SeqId) -> Result<(), BackendError> {
        self.tx
            .send_async(Command::Release(seq))
            .await
            .map_err(|_| BackendError::WorkerGone)
    }

    /// A round trip through the worker's queue (liveness).
    pub async fn ping(&self) -> Result<(), BackendError> {
        let (reply, rx) = flume::bounded(1);
        self.tx
            .send_async(Command::Ping(reply))
            .await
            .map_err(|_| BackendError::WorkerGone)?;
        rx.recv_async().await.map_err(|_| BackendError::WorkerGone)
    }

    /// Stops the worker after the commands already queued, and waits for the thread to end.
    pub fn shutdown(&self) {
        // A worker that is already gone needs no message.
        let _already_stopped = self.tx.send(Command::Shutdown);
        let handle = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(handle) = handle {
            // A panic in the worker has already been reported by the panic hook.
            let _panicked = handle.join();
        }
    }
}

/// The worker loop: one command at a time until shutdown or until every handle is gone.
fn run(mut engine: Engine, rx: flume::Receiver<Command>) {
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Command::Step(step, reply) => {
                // A caller that gave up on this step hears nothing; its sequences are released
                // by separate commands.
                let _unheard = reply.send(engine.step(&step));
            }
            Command::Constrain(seq, c) => engine.constrain(seq, *c),
            Command::Release(seq) => engine.release(seq),
            Command::Ping(reply) => drop(reply.send(())),
            Command::Shutdown => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda:1".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(1)));
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn a_missing_model_is_a_load_error_not_a_hang() {
        let err = Backend::spawn(BackendConfig::new("/nonexistent/model.gguf"))
            .err()
            .expect("loading must fail");
        assert!(matches!(err, LoadError::Io { .. }), "{err}");
    }
}
