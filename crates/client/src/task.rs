//! The task builder.

use crate::future::Future;
use taskwire_protocol::{CommandMsg, ResourceMsg, TaskKindMsg, TaskSpecMsg};

/// A task to submit: a key, what to run, its dependencies and its options.
///
/// Dependencies are passed to the task in the order they were added. A dependency added with
/// [`Task::dep`] keeps its future alive until the task has been submitted, so the scheduler
/// cannot forget the input in between.
///
/// ```
/// use taskwire_client::Task;
/// let t = Task::function("inc-1", "inc").arg_i64(41).priority(5).retries(2);
/// let spec = t.into_spec();
/// assert_eq!(spec.key, "inc-1");
/// assert_eq!(spec.priority, 5);
/// ```
#[derive(Clone, Debug)]
pub struct Task {
    spec: TaskSpecMsg,
    held: Vec<Future>,
}

impl Task {
    fn new(key: String, kind: TaskKindMsg) -> Task {
        Task {
            spec: TaskSpecMsg {
                key,
                deps: Vec::new(),
                kind,
                resources: Vec::new(),
                workers: Vec::new(),
                priority: 0,
                retries: 0,
            },
            held: Vec::new(),
        }
    }

    /// A call of the worker function `name`, with empty arguments.
    pub fn function(key: impl Into<String>, name: &str) -> Task {
        Task::new(
            key.into(),
            TaskKindMsg::Function {
                name: name.to_string(),
                args: Vec::new(),
            },
        )
    }

    /// An external command: program and arguments.
    pub fn command(key: impl Into<String>, argv: Vec<String>) -> Task {
        Task::new(
            key.into(),
            TaskKindMsg::Command(CommandMsg {
                argv,
                ..CommandMsg::default()
            }),
        )
    }

    /// Set the argument bytes of a function task (ignored for commands).
    pub fn args(mut self, bytes: impl Into<Vec<u8>>) -> Task {
        if let TaskKindMsg::Function { args, .. } = &mut self.spec.kind {
            *args = bytes.into();
        }
        self
    }

    /// Set the arguments to `v` as 8 little-endian bytes (the stock functions' number format).
    pub fn arg_i64(self, v: i64) -> Task {
        self.args(v.to_le_bytes().to_vec())
    }

    /// Set the arguments to `v` as 8 little-endian bytes (counts, sizes, milliseconds).
    pub fn arg_u64(self, v: u64) -> Task {
        self.args(v.to_le_bytes().to_vec())
    }

    /// Add the result of `f` as the next input.
    pub fn dep(mut self, f: &Future) -> Task {
        self.spec.deps.push(f.key().to_string());
        self.held.push(f.clone());
        self
    }

    /// Add the result of the key `key` (in the same graph or already known to the scheduler) as
    /// the next input.
    pub fn dep_key(mut self, key: impl Into<String>) -> Task {
        self.spec.deps.push(key.into());
        self
    }

    /// Require `amount` of the resource `name` while the task runs (`GPU`, `MEM`, any name).
    pub fn resource(mut self, name: &str, amount: f64) -> Task {
        self.spec.resources.push(ResourceMsg {
            name: name.to_string(),
            amount,
        });
        self
    }

    /// Allow the task on this worker (name or address); repeat to allow several.
    pub fn worker(mut self, name_or_addr: &str) -> Task {
        self.spec.workers.push(name_or_addr.to_string());
        self
    }

    /// Higher runs first (default 0).
    pub fn priority(mut self, p: i32) -> Task {
        self.spec.priority = p;
        self
    }

    /// Rerun the task up to `n` times after it fails (default 0).
    pub fn retries(mut self, n: u32) -> Task {
        self.spec.retries = n;
        self
    }

    /// Add an environment variable of a command (ignored for functions).
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Task {
        if let TaskKindMsg::Command(c) = &mut self.spec.kind {
            c.env.push((k.into(), v.into()));
        }
        self
    }

    /// Set the working directory of a command (ignored for functions); the worker's local
    /// directory by default.
    pub fn cwd(mut self, dir: impl Into<String>) -> Task {
        if let TaskKindMsg::Command(c) = &mut self.spec.kind {
            c.cwd = Some(dir.into());
        }
        self
    }

    /// Set the bytes written to a command's standard input (ignored for functions).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Task {
        if let TaskKindMsg::Command(c) = &mut self.spec.kind {
            c.stdin = Some(bytes.into());
        }
        self
    }

    /// The task's key.
    pub fn key(&self) -> &str {
        &self.spec.key
    }

    /// The wire form of the task.
    pub fn into_spec(self) -> TaskSpecMsg {
        self.spec
    }

    /// The wire form plus the futures that must stay alive until it is submitted.
    pub(crate) fn into_parts(self) -> (TaskSpecMsg, Vec<Future>) {
        (self.spec, self.held)
    }

    /// The spec, for planning a submission.
    pub(crate) fn spec(&self) -> &TaskSpecMsg {
        &self.spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_builder_fills_every_field() {
        let spec = Task::function("add-1", "add")
            .arg_i64(-3)
            .dep_key("a")
            .dep_key("b")
            .resource("GPU", 1.0)
            .worker("w1")
            .worker("tcp://127.0.0.1:4000")
            .priority(-2)
            .retries(3)
            .env("IGNORED", "for functions")
            .into_spec();
        assert_eq!(
            spec,
            TaskSpecMsg {
                key: "add-1".into(),
                deps: vec!["a".into(), "b".into()],
                kind: TaskKindMsg::Function {
                    name: "add".into(),
                    args: (-3i64).to_le_bytes().to_vec(),
                },
                resources: vec![ResourceMsg {
                    name: "GPU".into(),
                    amount: 1.0
                }],
                workers: vec!["w1".into(), "tcp://127.0.0.1:4000".into()],
                priority: -2,
                retries: 3,
            }
        );
    }

    #[test]
    fn command_builder_sets_env_cwd_stdin() {
        let t = Task::command("run-0", vec!["/bin/cat".into()])
            .env("A", "1")
            .cwd("/tmp")
            .stdin(b"hello".to_vec())
            .args(b"ignored".to_vec());
        assert_eq!(t.key(), "run-0");
        assert_eq!(
            t.into_spec().kind,
            TaskKindMsg::Command(CommandMsg {
                argv: vec!["/bin/cat".into()],
                env: vec![("A".into(), "1".into())],
                cwd: Some("/tmp".into()),
                stdin: Some(b"hello".to_vec()),
            })
        );
    }

    #[test]
    fn specs_reuse_the_tasks_memory() {
        // `Client::submit_graph` relies on this to avoid touching fresh memory per graph.
        let tasks: Vec<Task> = (0..100)
            .map(|i| Task::function(format!("k-{i}"), "f"))
            .collect();
        let at = tasks.as_ptr() as usize;
        let specs: Vec<TaskSpecMsg> = tasks.into_iter().map(|t| t.into_parts().0).collect();
        assert_eq!(specs.as_ptr() as usize, at);
        assert_eq!(specs[99].key, "k-99");
    }

    #[test]
    fn arg_u64_is_little_endian() {
        let spec = Task::function("s", "sleep").arg_u64(250).into_spec();
        assert_eq!(
            spec.kind,
            TaskKindMsg::Function {
                name: "sleep".into(),
                args: 250u64.to_le_bytes().to_vec()
            }
        );
    }
}
