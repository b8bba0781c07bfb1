//! `offline`: the embedded model behind the same interface as the remote providers.
//!
//! It completes from the index of the request's workspace (its git root) and of the
//! configured roots, taking the most confident prediction; when the text has no evidence, it
//! completes the identifier at the cursor from the editor's LSP symbols. It needs no network
//! and no key, so it is always available: the pool's last resort. Its work is a few hundred
//! microseconds of CPU, done in place on the task that asks (a thread hop would cost more).

use std::path::Path;
use std::sync::Arc;

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
        if best.is_none() {
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
        Box::pin(async move { Ok(self.predict(input.request)) })
    }

    fn chat<'a>(
        &'a self,
        _: ChatInput<'a>,
    ) -> BoxFuture<'a, Result<ChatStream<'a>, ProviderError>> {
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
