//! `reaper agent`: a task run by the daemon, its steps shown as they stream, approvals asked
//! at the terminal; and `reaper agent undo TASK_ID`, done here (it needs no daemon, so it
//! works after a crash too).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use reaper_client::schema::{AgentAction, AgentControl, AgentTask, StepStatus, StepUpdate};
use reaper_client::{AgentControlHandle, CallOptions, Client, Code, Error, Status};
use tokio::signal::unix::{signal, SignalKind};

use crate::chat::stdin_lines;

/// What `reaper agent` was asked.
#[derive(Debug, Clone)]
pub struct AgentArgs {
    /// The task.
    pub instruction: String,
    /// Its working directory (absolute).
    pub cwd: PathBuf,
    /// Approve every step that asks.
    pub yes: bool,
    /// One JSON object per update.
    pub json: bool,
    /// The call's deadline.
    pub deadline: Option<Duration>,
}

/// Runs the task, printing its steps and asking at each approval.
pub async fn run(client: &Client, args: &AgentArgs) -> Result<(), Error> {
    let task = AgentTask {
        instruction: args.instruction.clone(),
        cwd: args.cwd.display().to_string(),
        timeout: args.deadline.map(|d| d.as_secs().max(1) as u32),
    };
    let mut interrupts = signal(SignalKind::interrupt()).map_err(|e| {
        Error::Status(Status::new(
            Code::Internal,
            format!("cannot catch Ctrl-C: {e}"),
        ))
    })?;
    let (mut updates, control) = client
        .agent(
            &task,
            CallOptions {
                deadline: args.deadline,
            },
        )
        .await?;
    let interactive = std::io::stdin().is_terminal();
    let mut answers = None;
    let mut announced = false;
    let mut cancelled = false;
    loop {
        let next = tokio::select! {
            next = updates.next() => next,
            _ = interrupts.recv() => {
                if cancelled {
                    // A second Ctrl-C: stop waiting (dropping the call resets it).
                    return Err(Error::Status(Status::new(Code::Cancelled, "interrupted (Ctrl-C twice)")));
                }
                cancelled = true;
                eprintln!("reaper agent: cancelling (Ctrl-C again to stop waiting)");
                let _ = control.send(&AgentControl { action: AgentAction::Cancel, step: None }).await;
                continue;
            }
        };
        let Some(update) = next else { return Ok(()) };
        let update = update?;
        if !announced && !update.task_id.is_empty() {
            announced = true;
            if !args.json {
                eprintln!(
                    "reaper agent: task {} in {} (undo: reaper agent undo {})",
                    update.task_id, task.cwd, update.task_id
                );
            }
        }
        if args.json {
            println!("{}", serde_json::to_string(&update).unwrap_or_default());
        } else {
            print_update(&update);
        }
        if update.needs_approval {
            let lines = answers.get_or_insert_with(stdin_lines);
            let asking = approve(&update, &control, lines, args, interactive);
            tokio::select! {
                () = asking => {}
                // Ctrl-C at the prompt cancels the task, as anywhere else.
                _ = interrupts.recv() => {
                    cancelled = true;
                    eprintln!();
                    eprintln!("reaper agent: cancelling (Ctrl-C again to stop waiting)");
                    let _ = control.send(&AgentControl { action: AgentAction::Cancel, step: None }).await;
                }
            }
        }
    }
}

/// Asks about one step and sends the answer: yes only for "y" or "yes".
async fn approve(
    update: &StepUpdate,
    control: &AgentControlHandle,
    lines: &mut tokio::sync::mpsc::Receiver<String>,
    args: &AgentArgs,
    interactive: bool,
) {
    let yes = if args.yes {
        if !args.json {
            eprintln!("   approved (--yes)");
        }
        true
    } else {
        if interactive || !args.json {
            eprint!("   run step {}? [y/N] ", update.step);
            let _ = std::io::stderr().flush();
        }
        // End of input denies.
        let answer = lines.recv().await.unwrap_or_default();
        matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
    };
    let action = if yes {
        AgentAction::Approve
    } else {
        AgentAction::Reject
    };
    if let Err(error) = control
        .send(&AgentControl {
            action,
            step: Some(update.step),
        })
        .await
    {
        eprintln!("reaper agent: the answer could not be sent: {error}");
    }
}

fn print_update(update: &StepUpdate) {
    let status = match update.status {
        StepStatus::Planning => "planning",
        StepStatus::Executing => "executing",
        StepStatus::Verifying => "verifying",
        StepStatus::Completed => "completed",
        StepStatus::Failed => "failed",
    };
    println!("[{:>3}] {status:<9} {}", update.step, update.description);
    if let Some(detail) = update.detail.as_deref().filter(|_| update.needs_approval) {
        for line in detail.lines() {
            println!("      {line}");
        }
    }
    if let Some(message) = &update.message {
        for line in message.lines() {
            println!("      {line}");
        }
    }
}

/// Puts back what task `task_id` changed, from its journal in the state directory.
pub fn undo(state_dir: &Path, task_id: &str, json: bool) -> Result<(), Error> {
    let journals = state_dir.join("agent");
    let undone = reaper_agent::journal::undo_task(&journals, task_id).map_err(|error| {
        let code = match error {
            reaper_agent::UndoError::Unknown { .. } => Code::NotFound,
            reaper_agent::UndoError::Io { .. } => Code::Internal,
            _ => Code::FailedPrecondition,
        };
        Error::Status(Status::new(code, error.to_string()))
    })?;
    if json {
        let restored: Vec<String> = undone
            .restored
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let removed: Vec<String> = undone
            .removed
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        println!(
            "{}",
            serde_json::json!({"task_id": task_id, "restored": restored, "removed": removed})
        );
        return Ok(());
    }
    if undone.restored.is_empty() && undone.removed.is_empty() {
        println!("task {task_id} changed nothing");
    }
    for path in &undone.restored {
        println!("restored {}", path.display());
    }
    for path in &undone.removed {
        println!("removed  {} (the task created it)", path.display());
    }
    Ok(())
}
