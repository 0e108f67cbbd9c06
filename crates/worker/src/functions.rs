//! The stock functions every worker ships, for tests, demos and benchmarks.
//!
//! Value conventions: a number is an `i64` as 8 little-endian bytes ([`encode_i64`],
//! [`decode_i64`]); counts and durations in `args` are `u64` as 8 little-endian bytes.
//!
//! | name         | args                    | result                                                 |
//! |--------------|-------------------------|--------------------------------------------------------|
//! | `noop`       | ignored                 | empty                                                  |
//! | `sleep`      | u64 milliseconds        | empty, after sleeping that long                        |
//! | `inc`        | i64 x (used without inputs) | x + 1, where x is the first input if there is one  |
//! | `add`, `sum` | i64 or empty            | sum of all inputs (i64 each), plus args if non-empty   |
//! | `make-bytes` | u64 n                   | n bytes, byte `i` = `i % 251` ([`pattern_bytes`])      |
//! | `len`        | ignored with inputs     | byte length of the first input (of args without inputs), as i64 |
//! | `fail`       | utf-8 message           | error with that message                                |
//! | `panic`      | utf-8 message           | panics with that message (the worker survives)         |
//! | `identity`   | bytes                   | the first input, or args without inputs                |
//! | `checksum`   | bytes                   | FNV-1a 64 ([`fnv1a64`]) of the inputs concatenated (of args without inputs), as u64 LE |
//! | `alloc`      | u64 n [, u64 ms]        | n as i64, after allocating and touching n bytes and holding them ms milliseconds |
//!
//! Arithmetic overflow is an error, never a wrap.
//!
//! `noop`, `inc`, `add`, `sum`, `len`, `fail`, `panic` and `identity` are registered as quick
//! ([`Registry::register_quick`]): a lone one on an idle worker runs on its event loop.

use crate::registry::{Registry, TaskContext, TaskResult};
use bytes::Bytes;
use std::time::Duration;

/// Encode `v` the way stock functions exchange numbers: 8 little-endian bytes.
pub fn encode_i64(v: i64) -> Bytes {
    Bytes::copy_from_slice(&v.to_le_bytes())
}

/// Decode a number written by [`encode_i64`].
pub fn decode_i64(b: &[u8]) -> Result<i64, String> {
    match <[u8; 8]>::try_from(b) {
        Ok(a) => Ok(i64::from_le_bytes(a)),
        Err(_) => Err(format!("expected 8-byte i64, got {} bytes", b.len())),
    }
}

fn decode_u64(b: &[u8], what: &str) -> Result<u64, String> {
    match <[u8; 8]>::try_from(b) {
        Ok(a) => Ok(u64::from_le_bytes(a)),
        Err(_) => Err(format!("expected 8-byte u64 {what}, got {} bytes", b.len())),
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn fnv1a64_extend(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The 64-bit FNV-1a hash of `data`, as the stock `checksum` function computes it.
pub fn fnv1a64(data: &[u8]) -> u64 {
    fnv1a64_extend(FNV_OFFSET, data)
}

/// The period of the `make-bytes` pattern: prime, so that a shifted or reordered block changes
/// the checksum.
const PATTERN_PERIOD: usize = 251;

/// `n` bytes of the deterministic pattern the stock `make-bytes` function returns: byte `i` is
/// `i % 251`.
pub fn pattern_bytes(n: usize) -> Result<Bytes, String> {
    // One block holding whole periods, copied over and over: memcpy speed, so 64 MiB and more
    // cost milliseconds.
    const BLOCK: usize = PATTERN_PERIOD * 64;
    let mut block = [0u8; BLOCK];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i % PATTERN_PERIOD) as u8;
    }
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| format!("cannot allocate {n} bytes"))?;
    while v.len() < n {
        let take = (n - v.len()).min(BLOCK);
        v.extend_from_slice(&block[..take]);
    }
    Ok(Bytes::from(v))
}

pub(crate) fn register_stock(r: &mut Registry) {
    // Quick: a few arithmetic operations on small inputs (see `Registry::register_quick`).
    r.register_quick("noop", noop)
        .register("sleep", sleep)
        .register_quick("inc", inc)
        .register_quick("add", |c, a, i| sum_named("add", c, a, i))
        .register_quick("sum", |c, a, i| sum_named("sum", c, a, i))
        .register("make-bytes", make_bytes)
        .register_quick("len", len)
        .register_quick("fail", fail)
        .register_quick("panic", panic)
        .register_quick("identity", identity)
        .register("checksum", checksum)
        .register("alloc", alloc);
}

fn noop(_: &TaskContext<'_>, _: &[u8], _: &[Bytes]) -> TaskResult {
    Ok(Bytes::new())
}

fn sleep(_: &TaskContext<'_>, args: &[u8], _: &[Bytes]) -> TaskResult {
    let ms = decode_u64(args, "milliseconds").map_err(|e| format!("sleep: {e}"))?;
    std::thread::sleep(Duration::from_millis(ms));
    Ok(Bytes::new())
}

fn inc(_: &TaskContext<'_>, args: &[u8], inputs: &[Bytes]) -> TaskResult {
    let x = inputs.first().map_or(args, |b| &b[..]);
    let x = decode_i64(x).map_err(|e| format!("inc: {e}"))?;
    let y = x
        .checked_add(1)
        .ok_or_else(|| format!("inc: {x} + 1 overflows i64"))?;
    Ok(encode_i64(y))
}

fn sum_named(name: &str, _: &TaskContext<'_>, args: &[u8], inputs: &[Bytes]) -> TaskResult {
    let mut total: i64 = 0;
    let extra = (!args.is_empty()).then_some(args);
    for (i, b) in inputs.iter().map(|b| &b[..]).chain(extra).enumerate() {
        let v = decode_i64(b).map_err(|e| {
            if i < inputs.len() {
                format!("{name}: input {i}: {e}")
            } else {
                format!("{name}: args: {e}")
            }
        })?;
        total = total
            .checked_add(v)
            .ok_or_else(|| format!("{name}: sum overflows i64"))?;
    }
    Ok(encode_i64(total))
}

fn make_bytes(_: &TaskContext<'_>, args: &[u8], _: &[Bytes]) -> TaskResult {
    let n = decode_u64(args, "length").map_err(|e| format!("make-bytes: {e}"))?;
    let n = usize::try_from(n).map_err(|_| format!("make-bytes: cannot allocate {n} bytes"))?;
    pattern_bytes(n).map_err(|e| format!("make-bytes: {e}"))
}

fn len(_: &TaskContext<'_>, args: &[u8], inputs: &[Bytes]) -> TaskResult {
    let n = inputs.first().map_or(args.len(), Bytes::len);
    // A length always fits: no allocation exceeds isize::MAX bytes.
    Ok(encode_i64(n as i64))
}

fn fail(_: &TaskContext<'_>, args: &[u8], _: &[Bytes]) -> TaskResult {
    if args.is_empty() {
        Err("fail: failed on purpose".to_owned())
    } else {
        Err(String::from_utf8_lossy(args).into_owned())
    }
}

fn panic(_: &TaskContext<'_>, args: &[u8], _: &[Bytes]) -> TaskResult {
    panic!("{}", String::from_utf8_lossy(args))
}

fn identity(_: &TaskContext<'_>, args: &[u8], inputs: &[Bytes]) -> TaskResult {
    Ok(match inputs.first() {
        Some(b) => b.clone(),
        None => Bytes::copy_from_slice(args),
    })
}

fn checksum(_: &TaskContext<'_>, args: &[u8], inputs: &[Bytes]) -> TaskResult {
    let h = if inputs.is_empty() {
        fnv1a64(args)
    } else {
        inputs.iter().fold(FNV_OFFSET, |h, b| fnv1a64_extend(h, b))
    };
    Ok(Bytes::copy_from_slice(&h.to_le_bytes()))
}

/// Allocate and touch `n` bytes, hold them, return `n`: memory pressure on demand, for tests
/// of memory limits (the nanny kills a worker whose RSS crosses 95% of its limit).
fn alloc(_: &TaskContext<'_>, args: &[u8], _: &[Bytes]) -> TaskResult {
    let (n, hold) = match args.len() {
        8 => (decode_u64(args, "byte count")?, 0),
        16 => (
            decode_u64(&args[..8], "byte count")?,
            decode_u64(&args[8..], "milliseconds")?,
        ),
        other => {
            return Err(format!(
                "alloc: expected u64 byte count and optional u64 milliseconds (8 or 16 bytes), \
                 got {other} bytes"
            ));
        }
    };
    let len = usize::try_from(n)
        .ok()
        .filter(|&l| l <= isize::MAX as usize)
        .ok_or_else(|| format!("alloc: cannot allocate {n} bytes"))?;
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| format!("alloc: cannot allocate {n} bytes"))?;
    // Write every byte (not just one per page): the pages become resident whatever the
    // allocator and the kernel's zero-page tricks would otherwise do.
    v.resize(len, 1);
    std::hint::black_box(&mut v);
    std::thread::sleep(Duration::from_millis(hold));
    std::hint::black_box(&v);
    Ok(encode_i64(n as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &[u8], inputs: &[Bytes]) -> TaskResult {
        let r = Registry::stock();
        let ctx = TaskContext {
            key: "k",
            worker_name: "w",
            thread: 0,
        };
        r.get(name).unwrap()(&ctx, args, inputs)
    }

    fn i(v: i64) -> Bytes {
        encode_i64(v)
    }

    fn num(r: TaskResult) -> i64 {
        decode_i64(&r.unwrap()).unwrap()
    }

    fn u64_le(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    #[test]
    fn i64_round_trip_and_bad_length() {
        for v in [0, 1, -1, i64::MAX, i64::MIN] {
            assert_eq!(decode_i64(&encode_i64(v)).unwrap(), v);
        }
        assert_eq!(
            decode_i64(b"abc").unwrap_err(),
            "expected 8-byte i64, got 3 bytes"
        );
    }

    #[test]
    fn noop_returns_empty() {
        assert!(call("noop", b"whatever", &[i(1)]).unwrap().is_empty());
    }

    #[test]
    fn sleep_sleeps_and_checks_args() {
        let t = std::time::Instant::now();
        assert!(call("sleep", &u64_le(20), &[]).unwrap().is_empty());
        assert!(t.elapsed() >= Duration::from_millis(20));
        assert_eq!(
            call("sleep", b"", &[]).unwrap_err(),
            "sleep: expected 8-byte u64 milliseconds, got 0 bytes"
        );
    }

    #[test]
    fn inc_uses_first_input_else_args() {
        assert_eq!(num(call("inc", &[], &[i(41), i(100)])), 42);
        assert_eq!(num(call("inc", &i(-1), &[])), 0);
        assert_eq!(num(call("inc", &i(7), &[i(1)])), 2);
        assert_eq!(
            call("inc", b"abc", &[]).unwrap_err(),
            "inc: expected 8-byte i64, got 3 bytes"
        );
        assert_eq!(
            call("inc", &[], &[Bytes::from_static(b"ab")]).unwrap_err(),
            "inc: expected 8-byte i64, got 2 bytes"
        );
        assert_eq!(
            call("inc", &i(i64::MAX), &[]).unwrap_err(),
            format!("inc: {} + 1 overflows i64", i64::MAX)
        );
    }

    #[test]
    fn add_and_sum_total_inputs_plus_args() {
        for name in ["add", "sum"] {
            assert_eq!(num(call(name, &[], &[])), 0);
            assert_eq!(num(call(name, &[], &[i(1), i(2), i(3)])), 6);
            assert_eq!(num(call(name, &i(10), &[i(1), i(-2)])), 9);
            assert_eq!(num(call(name, &i(5), &[])), 5);
            assert_eq!(
                call(name, &[], &[i(1), Bytes::from_static(b"xyz")]).unwrap_err(),
                format!("{name}: input 1: expected 8-byte i64, got 3 bytes")
            );
            assert_eq!(
                call(name, b"x", &[i(1)]).unwrap_err(),
                format!("{name}: args: expected 8-byte i64, got 1 bytes")
            );
            assert_eq!(
                call(name, &[], &[i(i64::MAX), i(1)]).unwrap_err(),
                format!("{name}: sum overflows i64")
            );
        }
    }

    #[test]
    fn make_bytes_pattern_and_errors() {
        let b = call("make-bytes", &u64_le(600), &[]).unwrap();
        assert_eq!(b.len(), 600);
        assert!(b.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8));
        assert!(call("make-bytes", &u64_le(0), &[]).unwrap().is_empty());
        assert_eq!(
            call("make-bytes", b"12", &[]).unwrap_err(),
            "make-bytes: expected 8-byte u64 length, got 2 bytes"
        );
        assert!(
            call("make-bytes", &u64_le(u64::MAX), &[])
                .unwrap_err()
                .starts_with("make-bytes: cannot allocate")
        );
    }

    #[test]
    fn make_bytes_is_fast_and_exact_for_64_mib() {
        let n = 64 << 20;
        let b = call("make-bytes", &u64_le(n as u64), &[]).unwrap();
        assert_eq!(b.len(), n);
        assert_eq!(b[n - 1], ((n - 1) % 251) as u8);
        assert_eq!(b, pattern_bytes(n).unwrap());
    }

    #[test]
    fn len_of_first_input_else_args() {
        assert_eq!(
            num(call("len", b"ignored", &[Bytes::from(vec![0; 1000]), i(1)])),
            1000
        );
        assert_eq!(num(call("len", b"abcd", &[])), 4);
    }

    #[test]
    fn fail_returns_its_message() {
        assert_eq!(
            call("fail", "boom ☃".as_bytes(), &[]).unwrap_err(),
            "boom ☃"
        );
        assert_eq!(
            call("fail", b"", &[]).unwrap_err(),
            "fail: failed on purpose"
        );
    }

    #[test]
    fn panic_panics_with_its_message() {
        let r = std::panic::catch_unwind(|| call("panic", b"kaboom", &[]));
        let payload = r.unwrap_err();
        assert_eq!(payload.downcast_ref::<String>().unwrap(), "kaboom");
    }

    #[test]
    fn identity_returns_first_input_else_args() {
        let input = Bytes::from_static(b"data");
        let out = call("identity", b"args", &[input.clone(), i(1)]).unwrap();
        assert_eq!(out, input);
        // Same buffer, not a copy: identity forwards large inputs for free.
        assert_eq!(out.as_ptr(), input.as_ptr());
        assert_eq!(&call("identity", b"args", &[]).unwrap()[..], b"args");
    }

    #[test]
    fn alloc_touches_holds_and_returns_its_size() {
        let t = std::time::Instant::now();
        let mut args = u64_le(32 << 20);
        args.extend(u64_le(30));
        assert_eq!(num(call("alloc", &args, &[])), 32 << 20);
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert_eq!(num(call("alloc", &u64_le(0), &[])), 0);
        assert_eq!(
            call("alloc", b"abc", &[]).unwrap_err(),
            "alloc: expected u64 byte count and optional u64 milliseconds (8 or 16 bytes), got 3 bytes"
        );
        assert!(
            call("alloc", &u64_le(u64::MAX), &[])
                .unwrap_err()
                .starts_with("alloc: cannot allocate")
        );
    }

    #[test]
    fn checksum_is_fnv1a_of_concatenated_inputs() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        let split = call(
            "checksum",
            &[],
            &[Bytes::from_static(b"foo"), Bytes::from_static(b"bar")],
        );
        assert_eq!(split.unwrap()[..], 0x8594_4171_f739_67e8u64.to_le_bytes());
        assert_eq!(
            call("checksum", b"foobar", &[]).unwrap()[..],
            fnv1a64(b"foobar").to_le_bytes()
        );
        // A reordered transfer is caught.
        let swapped = call(
            "checksum",
            &[],
            &[Bytes::from_static(b"bar"), Bytes::from_static(b"foo")],
        );
        assert_ne!(swapped.unwrap()[..], 0x8594_4171_f739_67e8u64.to_le_bytes());
    }
}
