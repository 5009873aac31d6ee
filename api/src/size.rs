//! Sizes with units: `20GiB`, `1G`, `512M`, `4096`, `1.5TiB`.
//!
//! `K`, `M`, `G`, `T`, `P` and their `iB` forms are powers of 1024 (as in
//! qemu-img); `KB`, `MB`, `GB`, `TB` are powers of 1000. Volume sizes must be
//! a multiple of 512 bytes.

/// Why a size does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with an optional unit.
    #[error("`{0}` is not a size: write e.g. 20GiB, 512M, 1T or a byte count")]
    Syntax(String),
    /// Larger than [`MAX_SIZE`], the largest volume.
    #[error("`{0}` is too large: the largest size is 1EiB (1152921504606846976 bytes)")]
    TooLarge(String),
    /// Zero bytes.
    #[error("size must be greater than zero")]
    Zero,
    /// A minus sign (`-5G`).
    #[error("`{0}` is negative: a size is a positive amount, e.g. 5G")]
    Negative(String),
    /// Not a whole number of 512-byte sectors.
    #[error("`{0}` is {1} bytes, not a multiple of 512")]
    Unaligned(String, u64),
}

/// The largest size: 1 EiB, the largest volume a store keeps (its index
/// packs offsets into 60 bits).
pub const MAX_SIZE: u64 = 1 << 60;

/// Parses a size with an optional unit into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(SizeError::Negative(text.to_owned()));
    }
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "p" | "pib" => 1 << 50,
        "e" | "eib" => 1 << 60,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "pb" => 1_000_000_000_000_000,
        "eb" => 1_000_000_000_000_000_000,
        _ => return Err(SizeError::Syntax(text.to_owned())),
    };
    if number.is_empty() || number.matches('.').count() > 1 || number == "." {
        return Err(SizeError::Syntax(text.to_owned()));
    }
    let bytes = match number.split_once('.') {
        None => number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
            .ok_or_else(|| SizeError::TooLarge(text.to_owned()))?,
        Some((whole, fraction)) => {
            // Exact decimal arithmetic: whole * m + fraction * m / 10^digits.
            if fraction.len() > 9 {
                return Err(SizeError::Syntax(text.to_owned()));
            }
            let whole: u64 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| SizeError::TooLarge(text.to_owned()))?
            };
            let scale = 10u128.pow(fraction.len() as u32);
            let fraction: u128 = if fraction.is_empty() { 0 } else { fraction.parse().unwrap_or(0) };
            let total =
                u128::from(whole) * u128::from(multiplier) + fraction * u128::from(multiplier) / scale;
            u64::try_from(total).map_err(|_| SizeError::TooLarge(text.to_owned()))?
        }
    };
    if bytes > MAX_SIZE {
        return Err(SizeError::TooLarge(text.to_owned()));
    }
    if bytes == 0 {
        return Err(SizeError::Zero);
    }
    if bytes % 512 != 0 {
        return Err(SizeError::Unaligned(text.to_owned(), bytes));
    }
    Ok(bytes)
}

/// Formats bytes for people: `1 GiB`, `512 MiB`, `1.5 GiB`, `4096 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if bytes.is_multiple_of(1u64 << (10 * unit)) {
        format!("{} {}", bytes >> (10 * unit), UNITS[unit])
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// [`format_size`] for a volume's size, where the exact figure matters:
/// the byte count follows when the short form rounds ("4.00 MiB (4198400
/// bytes)").
pub fn format_size_exact(bytes: u64) -> String {
    let short = format_size(bytes);
    if short.contains('.') { format!("{short} ({bytes} bytes)") } else { short }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::SizeArg;
    use proptest::prelude::*;

    #[test]
    fn exact_sizes_say_the_bytes_when_the_short_form_rounds() {
        assert_eq!(format_size_exact(4100 << 10), "4.00 MiB (4198400 bytes)");
        assert_eq!(format_size_exact(3 << 29), "1.50 GiB (1610612736 bytes)");
        assert_eq!(format_size_exact(1 << 30), "1 GiB");
        assert_eq!(format_size_exact(4096), "4 KiB");
        assert_eq!(format_size_exact(1000), "1000 B");
    }

    #[test]
    fn units_mean_what_users_expect() {
        // Binary for K/M/G/T and their iB forms, decimal for KB/MB/GB/TB.
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("2 TiB"), Ok(2 << 40));
    }

    #[test]
    fn bad_sizes_are_refused_with_a_reason() {
        // Each malformed size fails with the variant that explains it.
        assert!(matches!(parse_size("lots"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("12XB"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size(""), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("0"), Err(SizeError::Zero)));
        assert!(matches!(parse_size("1000"), Err(SizeError::Unaligned(_, 1000))));
        assert!(matches!(parse_size("99999999999P"), Err(SizeError::TooLarge(_))));
        // The largest volume is 1 EiB, and every message says so.
        assert_eq!(parse_size("1EiB"), Ok(MAX_SIZE));
        assert_eq!(parse_size("1024P"), Ok(MAX_SIZE));
        assert!(parse_size("8000PiB").unwrap_err().to_string().contains("the largest size is 1EiB"));
        assert!(matches!(parse_size("1025P"), Err(SizeError::TooLarge(_))));
        assert!(matches!(SizeArg::Bytes(MAX_SIZE + 512).bytes(), Err(SizeError::TooLarge(_))));
        assert!(matches!(parse_size("-1G"), Err(SizeError::Negative(_))));
        assert!(parse_size("-5G").unwrap_err().to_string().contains("`-5G` is negative"));
    }

    #[test]
    fn formats_round_and_fractional_sizes() {
        // Whole units print without decimals; others with two.
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(3 << 29), "1.50 GiB");
        assert_eq!(format_size(100), "100 B");
    }

    proptest! {
        #[test]
        fn never_panics(text in ".{0,40}") {
            // Any CLI argument parses or fails cleanly.
            let _ = parse_size(&text);
        }

        #[test]
        fn formatted_whole_units_parse_back(n in 1u64..1_000_000) {
            // What we print for whole MiB counts is valid input.
            let bytes = n << 20;
            let text = format_size(bytes).replace(' ', "");
            if !text.contains('.') {
                prop_assert_eq!(parse_size(&text), Ok(bytes));
            }
        }
    }
}
