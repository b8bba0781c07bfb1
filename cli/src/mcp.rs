//! `reaper mcp list`: each MCP server of reaper.toml, started here the way the daemon starts
//! it, with its state, version and tools; then stopped. It needs no daemon: it is how a user
//! checks a server's table before a task needs it.

use reaper_client::{Code, Error, Status};
use reaper_core::config::Config;
use reaper_mcp::{McpServers, Root};

/// Lists the servers; an error if the configuration cannot be read.
pub async fn list(json: bool) -> Result<(), Error> {
    let (config, origin) = Config::locate(
        None,
        |k| std::env::var(k).ok(),
        |p| std::fs::read_to_string(p),
    )
    .map_err(|e| Error::Status(Status::new(Code::FailedPrecondition, e.to_string())))?;
    let configured = config.mcp.servers.0.len();
    let servers = McpServers::new(&config.mcp);
    if let Ok(dir) = std::env::current_dir() {
        servers.set_roots(vec![Root::directory(&dir)]).await;
    }
    let all = servers.status().await;
    servers.shutdown().await;
    if json {
        for s in &all {
            println!(
                "{}",
                serde_json::json!({"name": s.name, "state": s.state, "version": s.version, "protocol": s.protocol, "tools": s.tools})
            );
        }
        return Ok(());
    }
    if all.is_empty() {
        let disabled = configured.saturating_sub(all.len());
        println!(
            "no MCP servers enabled in {origin}{}: add one as [mcp.servers.NAME] with command = \"...\"",
            if disabled > 0 { format!(" ({disabled} disabled)") } else { String::new() }
        );
        return Ok(());
    }
    for s in &all {
        let version = s.version.as_deref().unwrap_or("-");
        let protocol = s
            .protocol
            .as_deref()
            .map_or(String::new(), |p| format!(" (protocol {p})"));
        println!(
            "{:<16} {:<8} {version}{protocol}",
            s.name,
            if s.state == "running" {
                "running"
            } else {
                "failed"
            }
        );
        if s.state != "running" {
            println!("    {}", s.state);
        }
        if !s.tools.is_empty() {
            println!("    {} tools: {}", s.tools.len(), s.tools.join(", "));
        }
    }
    Ok(())
}
