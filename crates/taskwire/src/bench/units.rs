//! Byte sizes as people type them (`64`, `64KiB`, `1MiB`, `64MiB`) and as we print them.

/// Parse a size: a number with an optional unit. `KiB`/`MiB`/`GiB` (and bare `K`/`M`/`G`, as
/// iperf3 and dd read them) are powers of 1024; `KB`/`MB`/`GB` are powers of 1000.
pub(crate) fn parse_size(input: &str) -> Result<usize, String> {
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let scale: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "ki" | "kib" => 1024.0,
        "m" | "mi" | "mib" => (1u64 << 20) as f64,
        "g" | "gi" | "gib" => (1u64 << 30) as f64,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        _ => {
            return Err(format!(
                "unknown size unit '{unit}' in '{input}' (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{input}' is not a size (e.g. 64, 64KiB, 1MiB, 64MiB)"))?;
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 0.0 || bytes > (usize::MAX / 2) as f64 || bytes.fract() != 0.0
    {
        return Err(format!("'{input}' is not a whole number of bytes"));
    }
    Ok(bytes as usize)
}

/// `65536` → `64 KiB`; sizes that are not a whole number of a binary unit stay in bytes.
pub(crate) fn format_size(bytes: usize) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64 mib"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("64XB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("0.3").is_err());
    }

    #[test]
    fn sizes_print_in_the_largest_whole_unit() {
        assert_eq!(format_size(64), "64 B");
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(1536), "1536 B");
    }
}
