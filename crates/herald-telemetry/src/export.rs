//! From an ended span to the collector: a bounded queue and one task.
//!
//! The SDK's own batch processor runs on a thread (or task) of its own and
//! reports drops only in its internal log. This one hands ended spans to a
//! bounded channel with `try_send` (a span that does not fit is dropped and
//! counted, so an unreachable collector never slows the node), and one task
//! on the node's tracker sends them in batches, each request bounded by
//! `telemetry.export_timeout`. When the node's token is cancelled it sends
//! what is queued, waiting at most [`SHUTDOWN_FLUSH`], and stops.

use crate::{TelemetryError, TelemetrySettings, MAX_EXPORT_BATCH};
use metrics::{counter, describe_counter};
use opentelemetry::Context;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest a stopping node waits for its last spans to be sent (the
/// node waits about 2 s for all its tasks after cancelling them).
pub const SHUTDOWN_FLUSH: Duration = Duration::from_millis(1500);

const DROPPED: &str = "herald_trace_spans_dropped_total";
const EXPORTED: &str = "herald_trace_spans_exported_total";

fn describe() {
    describe_counter!(
        DROPPED,
        "Sampled spans not delivered to the collector, by reason: queue_full (the export \
         queue, telemetry.queue_size, was full), export_failed (the collector refused or did \
         not answer within telemetry.export_timeout), shutdown (ended after the exporter stopped)"
    );
    describe_counter!(
        EXPORTED,
        "Spans the collector accepted (OTLP/HTTP answered 2xx)"
    );
    for reason in ["queue_full", "export_failed", "shutdown"] {
        counter!(DROPPED, "reason" => reason).increment(0);
    }
    counter!(EXPORTED).increment(0);
}

/// The processor the provider ends spans into, and the task that exports.
pub(crate) fn pipeline(
    settings: &TelemetrySettings,
    resource: &Resource,
) -> Result<(QueueProcessor, ExportTask), TelemetryError> {
    describe();
    let url = crate::traces_url(&settings.endpoint).map_err(|message| TelemetryError::Invalid {
        key: "telemetry.otlp_endpoint",
        message,
    })?;
    // The workspace's reqwest (rustls); the request timeout is the
    // exporter's, and a collector that never accepts the connection is
    // bounded by the same.
    let client = reqwest::Client::builder()
        .timeout(settings.export_timeout)
        .connect_timeout(settings.export_timeout)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(url)
        .with_timeout(settings.export_timeout)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    exporter.set_resource(resource);
    let (tx, rx) = mpsc::channel(settings.queue_size);
    Ok((
        QueueProcessor { tx },
        ExportTask {
            rx,
            exporter,
            interval: settings.export_interval,
            timeout: settings.export_timeout,
            last_warning: None,
        },
    ))
}

/// Hands ended, sampled spans to the export task without waiting.
#[derive(Debug)]
pub(crate) struct QueueProcessor {
    tx: mpsc::Sender<SpanData>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                counter!(DROPPED, "reason" => "queue_full").increment(1);
            }
            Err(TrySendError::Closed(_)) => {
                counter!(DROPPED, "reason" => "shutdown").increment(1);
            }
        }
    }

    // Flushing is the export task's (on the node's token); the provider's
    // own calls have nothing to wait for.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Sends queued spans in batches until the node stops.
pub(crate) struct ExportTask {
    rx: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    interval: Duration,
    timeout: Duration,
    /// When a failed export was last logged (one line per [`WARN_EVERY`]).
    last_warning: Option<Instant>,
}

/// A collector that stays away is logged once per this period, not once
/// per batch.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl ExportTask {
    fn failed(&mut self, spans: u64, error: &str) {
        counter!(DROPPED, "reason" => "export_failed").increment(spans);
        if self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.last_warning = Some(Instant::now());
            tracing::warn!(
                error,
                spans,
                "trace export failed; spans are dropped until the collector answers \
                 (herald_trace_spans_dropped_total)"
            );
        }
    }

    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_EXPORT_BATCH);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set once the node is stopping: everything left must be sent by then.
        let mut deadline = None;
        while deadline.is_none() {
            let due = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                received = self.rx.recv_many(&mut batch, MAX_EXPORT_BATCH) => {
                    if received == 0 {
                        // Every sender is gone: the provider was dropped.
                        break;
                    }
                    batch.len() >= MAX_EXPORT_BATCH
                }
                _ = tick.tick() => !batch.is_empty(),
            };
            if due {
                let spans = std::mem::take(&mut batch);
                self.send(spans, &cancel, &mut deadline).await;
            }
        }
        self.flush(batch, deadline).await;
    }

    /// Sends what is left by the deadline ([`SHUTDOWN_FLUSH`] from now
    /// unless one was set); spans ended after this are counted as dropped
    /// (`shutdown`).
    async fn flush(mut self, mut batch: Vec<SpanData>, deadline: Option<Instant>) {
        self.rx.close();
        let mut deadline = Some(deadline.unwrap_or_else(|| Instant::now() + SHUTDOWN_FLUSH));
        let cancel = CancellationToken::new();
        loop {
            while batch.len() < MAX_EXPORT_BATCH {
                match self.rx.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
            let spans = std::mem::take(&mut batch);
            if !self.send(spans, &cancel, &mut deadline).await {
                let rest = std::iter::from_fn(|| self.rx.try_recv().ok()).count();
                counter!(DROPPED, "reason" => "export_failed").increment(rest as u64);
                return;
            }
        }
    }

    /// Exports one batch within the export timeout (and `deadline`, once
    /// the node is stopping). When `cancel` fires meanwhile, the deadline
    /// is set to [`SHUTDOWN_FLUSH`] from then and the batch gets until
    /// then. False when the deadline passed: nothing more can be sent.
    async fn send(
        &mut self,
        batch: Vec<SpanData>,
        cancel: &CancellationToken,
        deadline: &mut Option<Instant>,
    ) -> bool {
        let n = batch.len() as u64;
        let mut until = Instant::now() + self.timeout;
        if let Some(d) = *deadline {
            until = until.min(d);
        }
        let outcome = {
            let export = tokio::time::timeout_at(until, self.exporter.export(batch));
            tokio::pin!(export);
            if deadline.is_some() {
                export.await.ok()
            } else {
                tokio::select! {
                    r = &mut export => r.ok(),
                    _ = cancel.cancelled() => {
                        let d = Instant::now() + SHUTDOWN_FLUSH;
                        *deadline = Some(d);
                        tokio::time::timeout_at(d, export).await.ok().and_then(Result::ok)
                    }
                }
            }
        };
        match outcome {
            Some(Ok(())) => {
                counter!(EXPORTED).increment(n);
                true
            }
            Some(Err(e)) => {
                // A refused batch is not retried: the next one may fare
                // better, and the node keeps no backlog of spans.
                self.failed(n, &e.to_string());
                true
            }
            None => {
                self.failed(n, "no answer within telemetry.export_timeout");
                deadline.is_none_or(|d| Instant::now() < d)
            }
        }
    }
}
