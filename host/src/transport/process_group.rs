//! The processes a host starts, each leading a process group of its own, and the register of those
//! groups that still run.
//!
//! A group is killed whole, so what a wrapper (`sh -c`, `uv run`, `npm start`) started goes with
//! it; and a terminal's Ctrl-C reaches the host, not the group, so the host ends it: gracefully as
//! it stops, or at once, from the register, when the process must exit without stopping its host
//! ([`ProcessGroups::kill_all`]: `std::process::exit` runs no destructor).

use std::collections::HashSet;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use tokio::process::{Child, Command};

/// The process groups of a host's processes, from their start until they were waited for.
#[derive(Debug, Default)]
pub struct ProcessGroups {
    register: Mutex<Register>,
}

#[derive(Debug, Default)]
struct Register {
    /// The ids of the processes that lead them (each group's id).
    leaders: HashSet<u32>,
    /// Set once all were killed: a process started later is killed at once.
    killed: bool,
}

impl ProcessGroups {
    /// Start `command` in a process group of its own, registered until it is waited for.
    pub(crate) fn spawn(self: &Arc<Self>, command: &mut Command) -> std::io::Result<ProcessGroup> {
        let group = ProcessGroup { child: command.process_group(0).spawn()?, groups: self.clone() };
        let leader = group.child.id().expect("a process just started was not waited for");
        let mut register = self.register();
        if register.killed {
            // The group is dropped, so killed, once the register is let go of.
            drop(register);
            return Err(std::io::Error::other("the host is exiting: what it starts is killed"));
        }
        register.leaders.insert(leader);
        Ok(group)
    }

    /// SIGKILL every group still running, and each started from now on: for a process that must
    /// exit without stopping its host.
    pub fn kill_all(&self) {
        let mut register = self.register();
        register.killed = true;
        for leader in register.leaders.drain() {
            kill_group(leader);
        }
    }

    fn forget(&self, leader: u32) {
        self.register().leaders.remove(&leader);
    }

    fn register(&self) -> std::sync::MutexGuard<'_, Register> {
        self.register.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// A process leading a process group of its own, whose group is killed when it is dropped before
/// it was waited for: a shutdown that drops its task kills it.
#[derive(Debug)]
pub(crate) struct ProcessGroup {
    pub(crate) child: Child,
    groups: Arc<ProcessGroups>,
}

impl ProcessGroup {
    /// Wait for the process to exit, then kill what is left of its group (what it started goes
    /// with it, as when the host kills the group), and leave the register: its id, the group's,
    /// may then be another's (not while any process of its group lives: Linux gives no process
    /// the id of a group that has one).
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let leader = self.child.id();
        let waited = self.child.wait().await;
        if let (Some(leader), None) = (leader, self.child.id()) {
            kill_group(leader);
            self.groups.forget(leader);
        }
        waited
    }

    /// Kill every process of the group, unless the process that leads it was waited for.
    pub(crate) fn kill(&mut self) {
        if let Some(leader) = self.child.id() {
            kill_group(leader);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(leader) = self.child.id() {
            kill_group(leader);
            self.groups.forget(leader);
        }
    }
}

/// SIGKILL the process group `leader` leads.
fn kill_group(leader: u32) {
    if let Some(leader) = rustix::process::Pid::from_raw(leader as i32) {
        let _ = rustix::process::kill_process_group(leader, rustix::process::Signal::KILL);
    }
}
