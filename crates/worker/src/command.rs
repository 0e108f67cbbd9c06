//! Command tasks: run an external program, capture its output.

use bytes::Bytes;
use std::io::{self, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use taskwire_protocol::{CommandMsg, CommandOutputMsg, ErrorKindMsg, TaskErrorMsg};

/// How much of a failed command's standard error goes into its task error.
const STDERR_TAIL: usize = 2048;

/// Standard input up to this size is written before waiting, on the calling thread: an empty
/// pipe always takes `PIPE_BUF` bytes without blocking, so no helper thread is needed.
const INLINE_STDIN: usize = 4096;

/// Run `cmd` to completion in `cmd.cwd`, or in `local_dir` when it has none.
///
/// `Ok` holds an encoded [`CommandOutputMsg`] (exit code 0, stdout, stderr). A nonzero exit, a
/// death by signal, or a program that could not start is an error of kind
/// [`ErrorKindMsg::Command`] carrying the exit code (`None` for the last two) and the tail of
/// standard error.
///
/// Standard input is written and closed while stdout and stderr are drained concurrently, so a
/// command that produces a lot of output before it reads its input cannot deadlock.
pub fn run_command(cmd: &CommandMsg, local_dir: &Path) -> Result<Bytes, TaskErrorMsg> {
    let Some((program, args)) = cmd.argv.split_first() else {
        return Err(command_error(
            None,
            String::new(),
            "command has an empty argv".to_owned(),
        ));
    };
    let cwd = cmd.cwd.as_deref().map_or(local_dir, Path::new);
    // No pre_exec and nothing else that forces fork+exec: std uses posix_spawn for this
    // (chdir included, through posix_spawn_file_actions_addchdir_np).
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(if cmd.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| spawn_error(&cmd.argv, cwd, &e))?;

    let output = match (child.stdin.take(), cmd.stdin.as_deref()) {
        (Some(pipe), Some(data)) if data.len() > INLINE_STDIN => std::thread::scope(|s| {
            let writer = std::thread::Builder::new()
                .name("taskwire-stdin".to_owned())
                .spawn_scoped(s, move || write_stdin(pipe, data));
            if let Err(e) = writer {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            // Drains stdout and stderr together (poll on unix), then waits; the scope then
            // joins the writer, which is done by then: the child's exit closed its pipe.
            child.wait_with_output()
        }),
        (Some(pipe), Some(data)) => {
            write_stdin(pipe, data);
            child.wait_with_output()
        }
        _ => child.wait_with_output(),
    };
    let output = output.map_err(|e| {
        let message = format!(
            "lost track of {}: {}",
            display_argv(&cmd.argv),
            io_error_text(&e)
        );
        command_error(None, String::new(), message)
    })?;

    match output.status.code() {
        Some(0) => Ok(taskwire_protocol::encode(&CommandOutputMsg {
            exit_code: 0,
            stdout: output.stdout,
            stderr: output.stderr,
        })),
        Some(code) => {
            let tail = stderr_tail(&output.stderr);
            let mut message = format!("{} exited with status {code}", display_argv(&cmd.argv));
            append_first_line(&mut message, &tail);
            Err(command_error(Some(code), tail, message))
        }
        None => {
            let tail = stderr_tail(&output.stderr);
            let mut message = match signal_of(&output.status) {
                Some(sig) => format!(
                    "{} was killed by signal {sig}{}",
                    display_argv(&cmd.argv),
                    signal_name(sig)
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ),
                None => format!("{} ended without an exit status", display_argv(&cmd.argv)),
            };
            append_first_line(&mut message, &tail);
            Err(command_error(None, tail, message))
        }
    }
}

fn write_stdin(mut pipe: ChildStdin, data: &[u8]) {
    // A command that exits without reading all its input is not an error of ours (EPIPE): its
    // exit status tells the story.
    let _ = pipe.write_all(data);
    // Dropping the pipe closes it: the command sees end of file.
}

fn command_error(exit_code: Option<i32>, stderr_tail: String, message: String) -> TaskErrorMsg {
    TaskErrorMsg {
        kind: ErrorKindMsg::Command {
            exit_code,
            stderr_tail,
        },
        message,
    }
}

fn spawn_error(argv: &[String], cwd: &Path, e: &io::Error) -> TaskErrorMsg {
    // A missing working directory makes the spawn fail with ENOENT too; only look when the
    // spawn failed, so the fast path pays no extra stat.
    let message = if e.kind() == io::ErrorKind::NotFound && !cwd.is_dir() {
        format!(
            "could not start `{}`: working directory {} does not exist",
            argv[0],
            cwd.display()
        )
    } else {
        format!("could not start `{}`: {}", argv[0], io_error_text(e))
    };
    command_error(None, String::new(), message)
}

/// `e`'s text without std's " (os error N)" suffix.
fn io_error_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s,
    }
}

/// The last `STDERR_TAIL` bytes, started at a line boundary when the cut leaves room for one.
fn stderr_tail(stderr: &[u8]) -> String {
    let mut start = stderr.len().saturating_sub(STDERR_TAIL);
    if start > 0 {
        if let Some(nl) = stderr[start..].iter().position(|&b| b == b'\n')
            && start + nl + 1 < stderr.len()
        {
            start += nl + 1;
        }
        // Never start inside a UTF-8 sequence.
        while start < stderr.len() && (stderr[start] & 0b1100_0000) == 0b1000_0000 {
            start += 1;
        }
    }
    String::from_utf8_lossy(&stderr[start..]).into_owned()
}

fn append_first_line(message: &mut String, tail: &str) {
    if let Some(line) = tail.lines().map(str::trim).find(|l| !l.is_empty()) {
        message.push_str(": ");
        message.push_str(line);
    }
}

/// argv as a user would type it, in backquotes, shortened when very long.
fn display_argv(argv: &[String]) -> String {
    const MAX: usize = 200;
    let mut s = String::from("command `");
    for (i, a) in argv.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let plain = !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
        if plain {
            s.push_str(a);
        } else {
            s.push('\'');
            s.push_str(&a.replace('\'', r"'\''"));
            s.push('\'');
        }
        if s.len() > MAX {
            let mut cut = MAX;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push_str("...");
            break;
        }
    }
    s.push('`');
    s
}

#[cfg(unix)]
fn signal_of(status: &std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

#[cfg(not(unix))]
fn signal_of(_: &std::process::ExitStatus) -> Option<i32> {
    None
}

/// Names of the signals that commonly end a task; numbers as on Linux for the rest.
fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cmd(argv: &[&str]) -> CommandMsg {
        CommandMsg {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn sh(script: &str) -> CommandMsg {
        cmd(&["sh", "-c", script])
    }

    fn ok(c: &CommandMsg) -> CommandOutputMsg {
        let bytes = run_command(c, &std::env::temp_dir()).unwrap();
        taskwire_protocol::decode::<CommandOutputMsg>(&bytes).unwrap()
    }

    fn err(c: &CommandMsg) -> (Option<i32>, String, String) {
        match run_command(c, &std::env::temp_dir()).unwrap_err() {
            TaskErrorMsg {
                kind:
                    ErrorKindMsg::Command {
                        exit_code,
                        stderr_tail,
                    },
                message,
            } => (exit_code, stderr_tail, message),
            other => panic!("not a command error: {other:?}"),
        }
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "taskwire-worker-command-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn echo_captures_stdout_and_stderr() {
        let out = ok(&sh("echo hello; echo oops >&2"));
        assert_eq!(
            out,
            CommandOutputMsg {
                exit_code: 0,
                stdout: b"hello\n".to_vec(),
                stderr: b"oops\n".to_vec()
            }
        );
    }

    #[test]
    fn stdin_round_trips_small_and_large() {
        let mut c = cmd(&["cat"]);
        c.stdin = Some(b"small input".to_vec());
        assert_eq!(ok(&c).stdout, b"small input");
        // Larger than any pipe buffer, in both directions at once: cat writes back while we
        // are still writing, which deadlocks unless stdin has its own thread.
        let big: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 253) as u8).collect();
        c.stdin = Some(big.clone());
        assert_eq!(ok(&c).stdout, big);
    }

    #[test]
    fn without_stdin_the_command_reads_eof() {
        assert_eq!(ok(&cmd(&["cat"])).stdout, b"");
    }

    #[test]
    fn command_that_ignores_large_stdin_still_succeeds() {
        let mut c = cmd(&["true"]);
        c.stdin = Some(vec![7; 1 << 20]);
        assert_eq!(ok(&c).exit_code, 0);
    }

    #[test]
    fn env_vars_are_passed() {
        let mut c = sh("printf '%s' \"$TW_A-$TW_B\"");
        c.env = vec![
            ("TW_A".into(), "one".into()),
            ("TW_B".into(), "two words".into()),
        ];
        assert_eq!(ok(&c).stdout, b"one-two words");
    }

    #[test]
    fn cwd_defaults_to_local_dir_and_can_be_set() {
        let local = scratch_dir("local");
        let other = scratch_dir("other");
        let bytes = run_command(&cmd(&["pwd"]), &local).unwrap();
        let out = taskwire_protocol::decode::<CommandOutputMsg>(&bytes).unwrap();
        assert_eq!(
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim_end()),
            local.canonicalize().unwrap()
        );
        let mut c = cmd(&["pwd"]);
        c.cwd = Some(other.to_str().unwrap().to_owned());
        let out = taskwire_protocol::decode::<CommandOutputMsg>(&run_command(&c, &local).unwrap())
            .unwrap();
        assert_eq!(
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim_end()),
            other.canonicalize().unwrap()
        );
        let _ = std::fs::remove_dir_all(&local);
        let _ = std::fs::remove_dir_all(&other);
    }

    #[test]
    fn missing_cwd_is_named() {
        let mut c = cmd(&["true"]);
        c.cwd = Some("/nonexistent/taskwire-dir".into());
        let (code, _, message) = err(&c);
        assert_eq!(code, None);
        assert_eq!(
            message,
            "could not start `true`: working directory /nonexistent/taskwire-dir does not exist"
        );
    }

    #[test]
    fn nonzero_exit_carries_code_and_stderr_tail() {
        let (code, tail, message) = err(&sh(
            "echo progress; echo 'bad seed' >&2; echo detail >&2; exit 2",
        ));
        assert_eq!(code, Some(2));
        assert_eq!(tail, "bad seed\ndetail\n");
        assert_eq!(
            message,
            "command `sh -c 'echo progress; echo '\\''bad seed'\\'' >&2; echo detail >&2; exit 2'` exited with status 2: bad seed"
        );
        let (code, tail, message) = err(&cmd(&["false"]));
        assert_eq!(
            (code, tail.as_str(), message.as_str()),
            (Some(1), "", "command `false` exited with status 1")
        );
    }

    #[test]
    fn stderr_tail_keeps_the_last_2_kib_from_a_line_start() {
        // A simulation that logs a lot and fails at the end: the user needs the end.
        let (code, tail, message) = err(&sh(
            "i=0; while [ $i -lt 500 ]; do echo \"line $i\" >&2; i=$((i+1)); done; exit 3",
        ));
        assert_eq!(code, Some(3));
        assert!(tail.len() <= STDERR_TAIL, "{}", tail.len());
        assert!(tail.starts_with("line "), "{tail:?}");
        assert!(tail.ends_with("line 499\n"));
        let first = tail.lines().next().unwrap();
        assert!(
            message.ends_with(&format!("exited with status 3: {first}")),
            "{message}"
        );
    }

    #[test]
    fn stderr_tail_never_splits_utf8() {
        let mut s = vec![b'x'];
        s.extend("é".repeat(STDERR_TAIL).bytes());
        let tail = stderr_tail(&s);
        assert!(!tail.contains('\u{fffd}'));
        assert!(tail.chars().all(|c| c == 'é'));
    }

    #[test]
    fn program_not_found() {
        let (code, tail, message) = err(&cmd(&["taskwire-no-such-program", "x"]));
        assert_eq!((code, tail.as_str()), (None, ""));
        assert_eq!(
            message,
            "could not start `taskwire-no-such-program`: No such file or directory"
        );
    }

    #[test]
    fn empty_argv_is_an_error() {
        let (code, _, message) = err(&CommandMsg::default());
        assert_eq!(code, None);
        assert_eq!(message, "command has an empty argv");
    }

    #[test]
    fn large_output_does_not_deadlock() {
        // 10 MiB on stdout and 1 MiB on stderr, interleaved, far beyond the pipe buffers.
        let out = ok(&sh(
            "head -c 10485760 /dev/zero; head -c 1048576 /dev/zero >&2; head -c 1000 /dev/zero",
        ));
        assert_eq!(out.stdout.len(), 10 * 1024 * 1024 + 1000);
        assert_eq!(out.stderr.len(), 1024 * 1024);
    }

    #[test]
    fn killed_by_signal() {
        let (code, tail, message) = err(&sh("echo dying >&2; kill -9 $$"));
        assert_eq!(code, None);
        assert_eq!(tail, "dying\n");
        assert_eq!(
            message,
            "command `sh -c 'echo dying >&2; kill -9 $$'` was killed by signal 9 (SIGKILL): dying"
        );
    }

    #[test]
    fn long_argv_is_shortened_in_messages() {
        let long: Vec<String> = (0..100).map(|i| format!("arg{i}")).collect();
        let s = display_argv(&long);
        assert!(s.len() < 220 && s.ends_with("...`"), "{s}");
    }
}
