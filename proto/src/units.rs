//! The textual units that people write both on `ipcctl`'s command line and in
//! `ipcd`'s configuration file, parsed one way for both: octal modes and byte sizes.

/// An octal mode as `chmod` takes it: `660`, `0660` or `0o660`, at most `777`.
pub fn mode(s: &str) -> Result<u32, String> {
    let digits = s
        .strip_prefix("0o")
        .or_else(|| s.strip_prefix("0O"))
        .unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("{s:?} is not an octal mode such as 660 or 0o640"));
    }
    // Leading zeros are allowed, so the digit count says nothing; the value does.
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "mode {s} is out of range: only permission bits (at most 777) can be set"
        )),
    }
}

/// A byte count: a plain number, or one with a binary suffix `K`, `M`, `G` (also written
/// `KiB`, `MiB`, `GiB`). Decimal units (`KB`, `MB`) are refused rather than guessed.
pub fn size(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let shift = match unit {
        "" => 0,
        "k" | "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => {
            return Err(format!(
                "{s:?} is not a size: use a number of bytes, optionally with K, M or G \
                 (binary multiples: 1K = 1024)"
            ));
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size: it must start with a number"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal() {
        assert_eq!(mode("660"), Ok(0o660));
        assert_eq!(mode("0660"), Ok(0o660));
        assert_eq!(mode("0o660"), Ok(0o660));
        assert_eq!(mode("0O640"), Ok(0o640));
        assert_eq!(mode("0"), Ok(0));
        assert_eq!(mode("777"), Ok(0o777));
        assert_eq!(mode("00000777"), Ok(0o777));
        for bad in [
            "", "0o", "1000", "1777", "4755", "8", "69", "rw", "-1", "+660", " 660",
        ] {
            assert!(mode(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(size("0"), Ok(0));
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("4K"), Ok(4096));
        assert_eq!(size("4KiB"), Ok(4096));
        assert_eq!(size("64M"), Ok(64 << 20));
        assert_eq!(size("1GiB"), Ok(1 << 30));
        for bad in [
            "",
            "K",
            "1KB",
            "1.5M",
            "1 M",
            "-1",
            "1T",
            "99999999999999999999G",
        ] {
            assert!(size(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
