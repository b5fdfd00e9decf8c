//! `wick serve`: binds first (so `/ready` answers 503 while loading), loads the model, starts the
//! scheduler, sets the API router, and serves through [`crate::server::listener`] (connection
//! cap and timeouts). On SIGTERM or Ctrl-C: readiness goes 503, new generation requests get 503,
//! in-flight streams get `--shutdown-timeout` to finish (then end with an error event), the
//! listener closes, the worker shuts down, and the process exits 0.

use crate::backend::TokenizerInfo;
use crate::backend::{load_tokenizer, matmul_kernel, release_free_heap, Backend, Grammars};
use crate::cli::{CliError, ServeArgs, Speculate};
use crate::reasoning::Markers;
use crate::request::Vocab;
use crate::scheduler::batcher::BatchConfig;
use crate::scheduler::Scheduler;
use crate::server::keys::ApiKeys;
use crate::server::lifecycle::{outer, BodyLimits, LateRouter, Phase};
use crate::server::listener::{ConnLimits, Listener};
use crate::server::playground::PageConfig;
use crate::server::resume::ResumeKey;
use crate::server::{app, Admission, AppState};
use crate::template::ChatTemplate;
use crate::tools::ToolFormat;
use crate::validation::{Limits, Reasoning, Validator};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wick_proto::ModelInfo;

/// Everything loading produces.
struct Loaded {
    backend: Backend,
    info: ModelInfo,
    tok: TokenizerInfo,
    grammars: Result<Arc<Grammars>, String>,
    /// `system_fingerprint` ([`crate::fingerprint`]).
    fingerprint: String,
}

async fn load(args: &ServeArgs) -> Result<Loaded, CliError> {
    let model_cfg = args.model.backend_config();
    let path = model_cfg.model_path.clone();
    let blocking = |source| CliError::Task {
        task: "loading",
        source,
    };
    let tok = tokio::task::spawn_blocking(move || load_tokenizer(&path))
        .await
        .map_err(blocking)??;
    // The model's checksum is read while the backend loads (the same pages, from the cache).
    let (path, generic) = (model_cfg.model_path.clone(), model_cfg.uses_generic_path());
    let kv = model_cfg.kv_dtype;
    let fingerprint = tokio::task::spawn_blocking(move || {
        crate::fingerprint::fingerprint(&path, matmul_kernel(), generic, kv)
    });
    let (backend, info) = tokio::task::spawn_blocking(move || Backend::spawn(model_cfg))
        .await
        .map_err(blocking)??;
    let fingerprint = fingerprint.await.map_err(blocking)??;
    let (tokenizer, vocab, eos) = (
        tok.tokenizer.clone(),
        info.vocab_size,
        tok.eos_token_ids.clone(),
    );
    let limits = args.limits.grammar_limits();
    let grammars =
        tokio::task::spawn_blocking(move || Grammars::new(&tokenizer, vocab, &eos, limits))
            .await
            .map_err(blocking)?
            .map(Arc::new)
            .map_err(|e| {
                tracing::warn!(error = %e, "structured output is unavailable for this tokenizer");
                e.to_string()
            });
    Ok(Loaded {
        backend,
        info,
        tok,
        grammars,
        fingerprint,
    })
}

fn build_state(args: &ServeArgs, loaded: Loaded, phase: Arc<Phase>) -> Result<AppState, CliError> {
    let Loaded {
        backend,
        info,
        tok,
        grammars,
        fingerprint,
    } = loaded;
    let template_source = match &args.http.chat_template {
        Some(p) => Some(std::fs::read_to_string(p)?),
        None => tok.chat_template.clone(),
    };
    let tool_format = args
        .http
        .tool_call_format
        .unwrap_or_else(|| ToolFormat::detect(template_source.as_deref()));
    let markers = match &args.http.reasoning_markers {
        Some(flag) => Markers::parse(flag).map_err(|_| CliError::Flag {
            flag: "--reasoning-markers",
            rule: "`none` or two markers as `OPEN,CLOSE`",
        })?,
        None => Markers::detect(template_source.as_deref()),
    };
    let reasoning = markers.map(|markers| Reasoning { markers });
    let template =
        match ChatTemplate::new(template_source.as_deref(), tok.bos_token(), tok.eos_token()) {
            Ok(t) => Some(t),
            Err(crate::template::TemplateError::Missing) => None,
            Err(e) => return Err(e.into()),
        };
    let capacity = info.max_context.min(info.kv_capacity_tokens());
    let l = &args.limits;
    let max_total_tokens = l.max_total_tokens.unwrap_or(capacity).min(capacity);
    let limits = Limits {
        max_total_tokens,
        max_input_tokens: l
            .max_input_tokens
            .unwrap_or(max_total_tokens.saturating_sub(1))
            .min(max_total_tokens.saturating_sub(1)),
        max_n: l.max_n,
        max_stop: l.max_stop_sequences,
        max_top_logprobs: l.max_top_logprobs,
        max_logprob_entries: l.max_logprob_entries,
    };
    let vocab = Vocab::from(tok);
    let scheduler = Scheduler::start(
        backend.clone(),
        vocab.tokenizer.clone(),
        BatchConfig {
            max_batch_tokens: l.max_batch_tokens,
            max_running: l.max_running_sequences,
            block_size: info.kv_block_size,
            prefix_caching: !l.no_prefix_cache,
            max_context: info.max_context,
            speculate: args.spec.config(args.model.draft_model.is_some()),
            target_step: l.target_inter_token_ms.map(Duration::from_millis),
        },
        info.num_kv_blocks,
    );
    let ops = &args.ops;
    let max_queue_time = ops.max_queue_time.map(Duration::from_secs_f64);
    Ok(AppState {
        validator: Arc::new(
            Validator::new(
                vocab,
                template,
                info.clone(),
                limits,
                grammars,
                args.http.special_tokens_in_content,
            )
            .with_tool_format(tool_format)
            .with_reasoning(reasoning),
        ),
        scheduler,
        backend,
        served_name: args
            .http
            .served_model_name
            .clone()
            .unwrap_or_else(|| info.model_id.clone()),
        info,
        fingerprint,
        created: crate::server::now(),
        phase,
        admission: Admission::new(
            ops.max_concurrent_requests,
            ops.max_queued_requests,
            max_queue_time,
        ),
        // Checked in `check`.
        resume_key: (ops.resume_key.as_deref())
            .and_then(|k| ResumeKey::new(k.as_bytes()))
            .map(Arc::new),
    })
}

fn check(args: &ServeArgs) -> Result<(), CliError> {
    args.model.check_fetched()?;
    if args.model.draft_model.is_some() && args.spec.speculate == Speculate::Ngram {
        return Err(CliError::Flag {
            flag: "--speculate ngram",
            rule: "left out with --draft-model (one source of proposals)",
        });
    }
    let (l, ops) = (&args.limits, &args.ops);
    let positive = [
        ("--max-batch-tokens", l.max_batch_tokens),
        ("--max-running-sequences", l.max_running_sequences),
        ("--max-concurrent-requests", ops.max_concurrent_requests),
        ("--max-queued-requests", ops.max_queued_requests),
        ("--max-connections", ops.max_connections),
        ("--max-n", l.max_n),
        ("--max-grammar-depth", l.max_grammar_depth),
    ];
    if let Some((flag, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(CliError::Flag {
            flag,
            rule: "at least 1",
        });
    }
    let seconds = "a positive number of seconds";
    if !(l.grammar_compile_timeout > 0.0 && l.grammar_compile_timeout < 1e6) {
        return Err(CliError::Flag {
            flag: "--grammar-compile-timeout",
            rule: seconds,
        });
    }
    let timeouts = [
        ("--body-read-timeout", ops.body_read_timeout),
        ("--header-read-timeout", ops.header_read_timeout),
        ("--keep-alive-timeout", ops.keep_alive_timeout),
    ];
    if let Some(&(flag, _)) = timeouts.iter().find(|(_, v)| !(*v > 0.0 && *v < 1e6)) {
        return Err(CliError::Flag {
            flag,
            rule: seconds,
        });
    }
    if ops.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        return Err(CliError::Flag {
            flag: "--api-key",
            rule: "a key when given (leave the flag out to serve without one)",
        });
    }
    if ops
        .max_queue_time
        .is_some_and(|t| !(t > 0.0 && t.is_finite()))
    {
        return Err(CliError::Flag {
            flag: "--max-queue-time",
            rule: seconds,
        });
    }
    if ops
        .resume_key
        .as_deref()
        .is_some_and(|k| ResumeKey::new(k.as_bytes()).is_none())
    {
        return Err(CliError::Flag {
            flag: "--resume-key",
            rule: "a secret of 16 bytes or more",
        });
    }
    if !(ops.shutdown_timeout >= 0.0 && ops.shutdown_timeout.is_finite()) {
        return Err(CliError::Flag {
            flag: "--shutdown-timeout",
            rule: "a number of seconds, 0 or more",
        });
    }
    Ok(())
}

pub async fn serve(args: ServeArgs) -> Result<(), CliError> {
    check(&args)?;
    let keys = Arc::new(ApiKeys::load(
        args.ops.api_key.as_deref(),
        args.ops.api_key_file.as_deref(),
    )?);
    let mut signal = std::pin::pin!(shutdown_signal());
    let phase = Arc::new(Phase::default());
    let late = LateRouter::default();
    let listener = tokio::net::TcpListener::bind((args.http.host, args.http.port)).await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ops = &args.ops;
    let router = outer(
        phase.clone(),
        late.clone(),
        BodyLimits {
            max_bytes: ops.max_body_bytes,
            timeout: Duration::from_secs_f64(ops.body_read_timeout),
        },
        (!args.http.no_ui).then_some(PageConfig {
            api_key_required: !keys.is_empty(),
        }),
    );
    let listener = Listener::new(
        listener,
        ConnLimits {
            max_connections: ops.max_connections,
            header_timeout: Duration::from_secs_f64(ops.header_read_timeout),
            keep_alive: Duration::from_secs_f64(ops.keep_alive_timeout),
        },
    );
    let server = tokio::spawn(listener.serve(router, async {
        // A dropped sender also means stop.
        let _ = stop_rx.await;
    }));
    // The one line scripts and tests read to find the server.
    println!("wick: listening on http://{addr}");

    let loaded = tokio::select! {
        loaded = load(&args) => loaded?,
        _ = &mut signal => {
            tracing::info!("signal received while loading; exiting");
            return stop(stop_tx, server).await;
        }
    };
    let state = Arc::new(build_state(&args, loaded, phase.clone())?);
    let _ = late.0.set(app(state.clone(), keys));
    // What loading freed goes back to the system before the server reports ready.
    release_free_heap();
    // With a time target, the scheduler's start-up steps run first (requests sent meanwhile
    // wait for them); a signal meanwhile stops the server as one while loading does.
    tokio::select! {
        () = state.scheduler.serving() => {}
        _ = &mut signal => {
            tracing::info!("signal received while timing the start-up steps; exiting");
            return stop(stop_tx, server).await;
        }
    }
    phase.set_ready();
    tracing::info!(
        model = %state.served_name,
        kv_blocks = state.info.num_kv_blocks,
        device = %state.info.device,
        generic_path = args.model.backend_config().uses_generic_path(),
        matmul_kernel = matmul_kernel(),
        system_fingerprint = %state.fingerprint,
        "ready"
    );

    signal.await;
    phase.set_draining();
    let in_flight = state.admission.in_flight();
    tracing::info!(in_flight, "draining");
    let deadline = Instant::now() + Duration::from_secs_f64(args.ops.shutdown_timeout);
    while state.admission.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if state.admission.in_flight() > 0 {
        tracing::warn!(
            in_flight = state.admission.in_flight(),
            "shutdown timeout: ending the remaining streams"
        );
        state.scheduler.abort_all().await;
        while state.admission.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop(stop_tx, server).await?;
    let backend = state.backend.clone();
    tokio::task::spawn_blocking(move || backend.shutdown())
        .await
        .map_err(|source| CliError::Task {
            task: "worker shut-down",
            source,
        })?;
    tracing::info!("stopped");
    Ok(())
}

/// Closes the listener and waits for the open connections to finish.
async fn stop(
    stop_tx: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
) -> Result<(), CliError> {
    // The server may have ended on its own already.
    let _ = stop_tx.send(());
    server.await.map_err(|source| CliError::Task {
        task: "listener",
        source,
    })??;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
