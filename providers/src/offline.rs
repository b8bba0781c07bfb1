//! `offline`: the embedded model behind the same interface as the remote providers.
//!
//! It completes from the index of the request's workspace (its git root) and of the
//! configured roots, taking the most confident prediction; when the text has no evidence, it
//! completes the identifier at the cursor from the editor's LSP symbols. It needs no network
//! and no key, so it is always available: the pool's last resort. Its work is a few hundred
//! microseconds of CPU, done in place on the task that asks (a thread hop would cost more).
//!
//! Done in place, that work holds a worker thread of the provider runtime while it runs, so
//! the requests that cost most — a long `context.lsp_symbols` (up to 256 KiB, about 5 ms in a
//! release build) — take turns: at most half the workers (one of two) run heavy requests at
//! once, and the rest wait without holding a thread, so a flood of them leaves workers for
//! every other completion. Each step checks the call's deadline and stops once it has passed
//! (the loop has then answered DEADLINE_EXCEEDED already, and aborting the task cannot
//! interrupt work that never yields).

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use reaper_core::config::OfflineConfig;
use reaper_core::schema::CompletionRequest;
use reaper_offline::{IndexLimits, Workspace, Workspaces};

use crate::error::ProviderError;
use crate::provider::{
    BoxFuture, Capabilities, ChatInput, ChatStream, CompletionInput, ProbeReport, Proposal,
    Provider,
};

/// The embedded provider.
#[derive(Debug)]
pub struct OfflineProvider {
    workspaces: Workspaces,
    roots: Vec<Arc<Workspace>>,
    /// `[providers.offline] deny`, with the built-in credentials rules.
    deny: reaper_offline::Deny,
    /// Turns for heavy requests: half the provider runtime's workers, made at the first one.
    heavy: OnceLock<tokio::sync::Semaphore>,
}

/// A request whose symbol list is longer than this is heavy: it costs more than the rest of
/// the work together (25,000 symbols, 250 KB: 4.7 ms, against 0.3 ms for the text with a
/// 1 MiB prefix and suffix).
pub const HEAVY_SYMBOLS_BYTES: usize = 16 * 1024;

/// Whether `request` is heavy ([`HEAVY_SYMBOLS_BYTES`]).
fn is_heavy(request: &CompletionRequest) -> bool {
    request
        .context
        .as_ref()
        .and_then(|c| c.lsp_symbols.as_deref())
        .is_some_and(|s| s.len() > HEAVY_SYMBOLS_BYTES)
}

impl OfflineProvider {
    /// The offline provider for `config`; its roots start indexing now.
    pub fn new(config: &OfflineConfig) -> OfflineProvider {
        // The patterns were checked at start (reaperd refuses a config whose `deny` does not
        // parse); a pattern that still fails is dropped here with the rest, loudly.
        let deny = reaper_offline::Deny::new(&config.deny).unwrap_or_else(|error| {
            tracing::error!(%error, "[providers.offline] deny ignored");
            reaper_offline::Deny::default()
        });
        let workspaces = Workspaces::with_budget(
            IndexLimits {
                max_file_bytes: config.max_file_bytes.get() as u64,
                max_workspace_bytes: config.max_workspace_bytes.get() as usize,
            },
            deny.clone(),
            config.max_index_bytes.get() as usize,
        );
        // Canonical, like every workspace root, so that a file's root can be compared with them.
        let roots = config
            .roots
            .iter()
            .map(|r| {
                Path::new(r)
                    .canonicalize()
                    .unwrap_or_else(|_| Path::new(r).to_path_buf())
            })
            .filter_map(|r| workspaces.open_pinned(r))
            .collect();
        OfflineProvider {
            workspaces,
            roots,
            deny,
            heavy: OnceLock::new(),
        }
    }

    /// Memory the indexes take now, and how many workspaces are indexed.
    pub fn index_usage(&self) -> (u64, u32) {
        let all = self.workspaces.all();
        let bytes = all
            .iter()
            .filter_map(|w| w.corpus())
            .map(|c| c.memory_bytes() as u64)
            .sum();
        (bytes, all.len() as u32)
    }

    /// Checks `[providers.offline] deny` (for `--check-config` and the start): the error names
    /// the pattern that does not parse.
    pub fn check_deny(config: &OfflineConfig) -> Result<(), String> {
        reaper_offline::Deny::new(&config.deny).map(|_| ())
    }

    /// Whether `file` must never be read or shown: credentials, or what `deny` names.
    pub fn excludes(&self, file: &Path) -> bool {
        self.deny.excludes(&canonical_file(file))
    }

    /// The workspace of `file`, its index started if it is new. With `roots` configured, only
    /// a repository inside one of them is read: the roots say what the daemon may index.
    pub fn workspace_of(&self, file: &Path) -> Option<Arc<Workspace>> {
        if self.roots.is_empty() {
            return self.workspaces.for_file(file);
        }
        let root = reaper_offline::workspace::workspace_root(file)?;
        if !self.roots.iter().any(|r| root.starts_with(r.root())) {
            return None;
        }
        self.workspaces.open(root)
    }

    /// The most confident completion of `request` (synchronous: it is CPU work).
    pub fn predict(&self, request: &CompletionRequest) -> Proposal {
        self.predict_by(request, None)
    }

    /// [`OfflineProvider::predict`], giving up on what is left once `deadline` has passed.
    fn predict_by(&self, request: &CompletionRequest, deadline: Option<Instant>) -> Proposal {
        let late = || deadline.is_some_and(|d| Instant::now() >= d);
        let own_path = request.file_path.as_deref().filter(|p| !p.is_empty());
        let own = own_path.and_then(|p| self.workspace_of(Path::new(p)));
        let mut corpora: Vec<_> = own
            .iter()
            .chain(&self.roots)
            .filter_map(|w| w.corpus())
            .collect();
        corpora.dedup_by(|a, b| Arc::ptr_eq(a, b));
        // As the index names it (canonically), so that its saved copy is recognised however
        // the editor spelled the path.
        let own_path = own_path.map(|p| canonical_file(Path::new(p)));
        let own_path = own_path.as_deref();
        let mut best: Option<reaper_offline::Prediction> = None;
        let mut consider = |corpus| {
            if late() {
                return;
            }
            if let Some(p) =
                reaper_offline::predict(corpus, &request.prefix, &request.suffix, own_path)
            {
                if best.as_ref().is_none_or(|b| p.confidence > b.confidence) {
                    best = Some(p);
                }
            }
        };
        if corpora.is_empty() {
            // Nothing indexed (yet): the buffer itself is still evidence.
            consider(None);
        }
        for corpus in &corpora {
            consider(Some(&**corpus));
        }
        // The editor's symbols, when the text alone has nothing: they name identifiers the
        // workspace may not contain yet (a dependency's, a generated one's).
        if best.is_none() && !late() {
            let symbols = request
                .context
                .as_ref()
                .and_then(|c| c.lsp_symbols.as_deref());
            best = symbols
                .and_then(|s| reaper_offline::symbols::complete_identifier(&request.prefix, s));
        }
        best.map_or_else(Proposal::nothing, |p| Proposal {
            text: p.text,
            confidence: p.confidence,
        })
    }
}

/// `file` with its directory resolved (`..`, symlinks), whether or not the file exists yet.
pub(crate) fn canonical_file(file: &Path) -> std::path::PathBuf {
    match (file.parent().map(Path::canonicalize), file.file_name()) {
        (Some(Ok(dir)), Some(name)) => dir.join(name),
        _ => file.to_path_buf(),
    }
}

impl Provider for OfflineProvider {
    fn name(&self) -> &str {
        reaper_core::config::OFFLINE
    }

    fn kind(&self) -> &'static str {
        reaper_core::config::OFFLINE
    }

    fn model(&self) -> &str {
        "workspace index"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            completion: true,
            fim: true,
            ..Capabilities::default()
        }
    }

    fn complete<'a>(
        &'a self,
        input: CompletionInput<'a>,
    ) -> BoxFuture<'a, Result<Proposal, ProviderError>> {
        Box::pin(async move {
            let request = input.request;
            if !is_heavy(request) {
                return Ok(self.predict_by(request, Some(input.deadline)));
            }
            let turns = self.heavy.get_or_init(|| {
                let workers =
                    tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
                tokio::sync::Semaphore::new((workers / 2).max(1))
            });
            // Never closed; the wait ends with the call (the loop aborts it at its deadline).
            let Ok(_turn) = turns.acquire().await else {
                return Ok(Proposal::nothing());
            };
            Ok(self.predict_by(request, Some(input.deadline)))
        })
    }

    fn chat<'a>(&'a self, _: ChatInput<'a>) -> BoxFuture<'a, Result<ChatStream, ProviderError>> {
        Box::pin(async {
            Err(ProviderError::Unsupported {
                what: "chat with the offline model",
            })
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<ProbeReport, ProviderError>> {
        Box::pin(async { Ok(ProbeReport::default()) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use reaper_core::schema::ContextMetadata;

    use super::*;
    use crate::prompt::RepoContext;

    /// A request the symbols alone can complete, `symbols` bytes of them.
    fn request(symbols: usize) -> CompletionRequest {
        let list: String = (0..symbols / 6).map(|i| format!("zq{i:03x},")).collect();
        CompletionRequest {
            prefix: "fn f() {\n    let x = zq".into(),
            suffix: "\n}\n".into(),
            language: "rust".into(),
            file_path: None,
            context: Some(ContextMetadata {
                lsp_symbols: Some(list),
                git_status: None,
                project_files: None,
            }),
        }
    }

    #[test]
    fn work_stops_at_the_deadline() {
        let provider = OfflineProvider::new(&OfflineConfig::default());
        let request = request(4096);
        assert!(!provider.predict(&request).text.is_empty());
        let passed = provider.predict_by(&request, Some(Instant::now()));
        assert!(passed.text.is_empty(), "{passed:?}");
    }

    /// Issue 13, finding 3: requests with long symbol lists could take every worker. They take
    /// turns on half of them now, so another completion is answered while they queue: spawned
    /// after eight of them on two workers, it finishes before most (with every worker theirs,
    /// it would wait for six).
    #[test]
    fn heavy_requests_leave_workers_for_the_rest() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let provider = Arc::new(OfflineProvider::new(&OfflineConfig::default()));
        let heavy = Arc::new(request(250_000));
        assert!(is_heavy(&heavy));
        let (started, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let context = Arc::new(RepoContext::default());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (provider, heavy, context) = (provider.clone(), heavy.clone(), context.clone());
            let (started, done) = (started.clone(), done.clone());
            // From outside the runtime: onto its shared queue, in order.
            tasks.push(runtime.spawn(async move {
                started.fetch_add(1, Ordering::SeqCst);
                let input = CompletionInput {
                    request: &heavy,
                    deadline: Instant::now() + Duration::from_secs(60),
                    context: &context,
                };
                let answer = provider.complete(input).await.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
                answer
            }));
        }
        let begin = Instant::now();
        while started.load(Ordering::SeqCst) == 0 {
            assert!(begin.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(1));
        }
        let light = {
            let (provider, context, done) = (provider.clone(), context.clone(), done.clone());
            runtime.spawn(async move {
                let request = request(600);
                let input = CompletionInput {
                    request: &request,
                    deadline: Instant::now() + Duration::from_secs(60),
                    context: &context,
                };
                let answer = provider.complete(input).await.unwrap();
                (answer, done.load(Ordering::SeqCst))
            })
        };
        let (answer, heavy_done) = runtime.block_on(light).unwrap();
        assert!(!answer.text.is_empty());
        for task in tasks {
            assert!(!runtime.block_on(task).unwrap().text.is_empty());
        }
        assert!(
            heavy_done <= 2,
            "the light request waited for {heavy_done} heavy ones"
        );
    }
}
