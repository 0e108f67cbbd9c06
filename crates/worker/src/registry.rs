//! The function registry: the named Rust functions a worker can run as tasks.

use bytes::Bytes;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// What a function gets besides its arguments and inputs.
#[derive(Clone, Copy, Debug)]
pub struct TaskContext<'a> {
    /// The task's user-visible key.
    pub key: &'a str,
    /// The name of the worker running it.
    pub worker_name: &'a str,
    /// Index of the executor thread running it, `0..nthreads`.
    pub thread: usize,
}

/// What a function returns: its result bytes, or an error message for the user.
pub type TaskResult = Result<Bytes, String>;

/// A registered function: `f(ctx, args, inputs)`, where `args` are the task's argument bytes and
/// `inputs` the results of its dependencies, in the order the task lists them.
pub type TaskFn = dyn Fn(&TaskContext<'_>, &[u8], &[Bytes]) -> TaskResult + Send + Sync + 'static;

/// Named functions a worker can run.
///
/// Cloning is cheap (the table is shared); registering on a clone copies the table once, so a
/// clone handed to an executor never changes under it.
#[derive(Clone, Default)]
pub struct Registry {
    fns: Arc<HashMap<String, Entry>>,
}

#[derive(Clone)]
struct Entry {
    f: Arc<TaskFn>,
    /// Registered with [`Registry::register_quick`].
    quick: bool,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// A registry holding the stock functions (see the `functions` list in the crate docs).
    pub fn stock() -> Registry {
        let mut r = Registry::new();
        crate::functions::register_stock(&mut r);
        r
    }

    /// Register `f` under `name`, replacing any function already registered under it.
    pub fn register<F>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(&TaskContext<'_>, &[u8], &[Bytes]) -> TaskResult + Send + Sync + 'static,
    {
        self.insert(name, Arc::new(f), false)
    }

    /// Register a function that returns within microseconds and never blocks (no I/O, no
    /// locks held by other tasks, no sleeping). When the worker's threads are all idle, it may
    /// run such a task at once on the thread that received it, as executor thread 0, instead
    /// of waking an executor thread for it: one thread hand-off less per task. A panic is
    /// still caught and reported; a slow function registered here holds up the worker's
    /// messages while it runs, so register anything doubtful with [`Registry::register`].
    pub fn register_quick<F>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(&TaskContext<'_>, &[u8], &[Bytes]) -> TaskResult + Send + Sync + 'static,
    {
        self.insert(name, Arc::new(f), true)
    }

    fn insert(&mut self, name: &str, f: Arc<TaskFn>, quick: bool) -> &mut Self {
        Arc::make_mut(&mut self.fns).insert(name.to_owned(), Entry { f, quick });
        self
    }

    /// Whether `name` was registered with [`Registry::register_quick`].
    pub fn is_quick(&self, name: &str) -> bool {
        self.fns.get(name).is_some_and(|e| e.quick)
    }

    /// The function registered under `name`.
    pub fn get(&self, name: &str) -> Option<&TaskFn> {
        self.fns.get(name).map(|e| &*e.f)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.fns.keys().cloned().collect();
        names.sort_unstable();
        names
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("names", &self.names())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> TaskContext<'static> {
        TaskContext {
            key: "k-0",
            worker_name: "w",
            thread: 3,
        }
    }

    #[test]
    fn custom_function_sees_context_args_and_inputs() {
        let mut r = Registry::new();
        r.register("describe", |ctx, args, inputs| {
            Ok(Bytes::from(format!(
                "{} {} {} {} {}",
                ctx.key,
                ctx.worker_name,
                ctx.thread,
                args.len(),
                inputs.len()
            )))
        });
        let f = r.get("describe").unwrap();
        let out = f(&ctx(), b"abc", &[Bytes::new(), Bytes::new()]).unwrap();
        assert_eq!(&out[..], b"k-0 w 3 3 2");
        assert!(r.get("missing").is_none());
    }

    #[test]
    fn register_replaces_and_names_are_sorted() {
        let mut r = Registry::new();
        r.register("b", |_, _, _| Ok(Bytes::from_static(b"1")))
            .register("a", |_, _, _| Ok(Bytes::new()))
            .register("b", |_, _, _| Ok(Bytes::from_static(b"2")));
        assert_eq!(r.names(), ["a", "b"]);
        assert_eq!(&r.get("b").unwrap()(&ctx(), &[], &[]).unwrap()[..], b"2");
    }

    #[test]
    fn clones_are_independent_after_register() {
        let mut a = Registry::new();
        a.register("x", |_, _, _| Ok(Bytes::new()));
        let mut b = a.clone();
        b.register("y", |_, _, _| Ok(Bytes::new()));
        assert_eq!(a.names(), ["x"]);
        assert_eq!(b.names(), ["x", "y"]);
    }

    #[test]
    fn quick_is_per_name_and_replaced_with_the_function() {
        let mut r = Registry::new();
        r.register_quick("q", |_, _, _| Ok(Bytes::new()))
            .register("slow", |_, _, _| Ok(Bytes::new()));
        assert!(r.is_quick("q"));
        assert!(!r.is_quick("slow"));
        assert!(!r.is_quick("missing"));
        r.register("q", |_, _, _| Ok(Bytes::new()));
        assert!(!r.is_quick("q"), "re-registered as not quick");
        let stock = Registry::stock();
        assert!(stock.is_quick("inc") && stock.is_quick("panic"));
        assert!(!stock.is_quick("sleep") && !stock.is_quick("make-bytes"));
    }

    #[test]
    fn registry_is_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Registry>();
    }

    #[test]
    fn stock_has_the_documented_functions() {
        assert_eq!(
            Registry::stock().names(),
            [
                "add",
                "alloc",
                "checksum",
                "fail",
                "identity",
                "inc",
                "len",
                "make-bytes",
                "noop",
                "panic",
                "sleep",
                "sum"
            ]
        );
    }
}
