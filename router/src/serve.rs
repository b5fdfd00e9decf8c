//! `wick serve`: loads the model, starts the scheduler, binds and serves until Ctrl-C or SIGTERM,
//! then stops the backend worker.

use crate::cli::{CliError, ServeArgs};
use crate::scheduler::batcher::BatchConfig;
use crate::scheduler::Scheduler;
use crate::server::{app, AppState};
use crate::template::ChatTemplate;
use crate::validation::{Limits, Validator};
use std::sync::Arc;
use wick_backend::tokenizer::load_tokenizer;
use wick_backend::Backend;

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second call (tests) keeps the first subscriber.
    let _already = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub async fn serve(args: ServeArgs) -> Result<(), CliError> {
    let model_cfg = args.model.backend_config();
    let path = model_cfg.model_path.clone();
    let tok = tokio::task::spawn_blocking(move || load_tokenizer(&path))
        .await
        .map_err(|e| CliError::Config(e.to_string()))??;
    let (backend, info) = tokio::task::spawn_blocking(move || Backend::spawn(model_cfg))
        .await
        .map_err(|e| CliError::Config(e.to_string()))??;
    let template_source = match &args.http.chat_template {
        Some(p) => Some(std::fs::read_to_string(p)?),
        None => info.chat_template.clone(),
    };
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
    };
    if l.max_batch_tokens == 0 || l.max_running_sequences == 0 {
        return Err(CliError::Config(
            "--max-batch-tokens and --max-running-sequences must be at least 1".into(),
        ));
    }
    let tokenizer = Arc::new(tok.tokenizer);
    let scheduler = Scheduler::start(
        backend.clone(),
        tokenizer.clone(),
        BatchConfig {
            max_batch_tokens: l.max_batch_tokens,
            max_running: l.max_running_sequences,
            block_size: info.kv_block_size,
        },
        info.num_kv_blocks,
    );
    let served_name = args
        .http
        .served_model_name
        .clone()
        .unwrap_or_else(|| info.model_id.clone());
    let state = Arc::new(AppState {
        validator: Arc::new(Validator::new(tokenizer, template, info.clone(), limits)),
        scheduler,
        backend: backend.clone(),
        info,
        served_name,
        created: crate::server::now(),
    });
    let listener = tokio::net::TcpListener::bind((args.http.host, args.http.port)).await?;
    let addr = listener.local_addr()?;
    tracing::info!(model = %state.served_name, kv_blocks = state.info.num_kv_blocks, "model loaded");
    // The one line scripts and tests read to find the server.
    println!("wick: listening on http://{addr}");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tokio::task::spawn_blocking(move || backend.shutdown())
        .await
        .map_err(|e| CliError::Config(e.to_string()))?;
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
