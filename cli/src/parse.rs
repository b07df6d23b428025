//! Value parsers for the command line: octal modes, `UID[:GID]` owners, byte sizes and
//! durations. They are pure functions so that clap reports their errors as usage errors
//! (exit 2) before anything is sent.

use std::time::Duration;

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

/// A message type to send: SysV `mtype`, at least 1 (0 and negative types only have a
/// meaning when receiving).
pub fn send_type(s: &str) -> Result<i64, String> {
    match s.parse::<i64>() {
        Ok(t) if t >= 1 => Ok(t),
        Ok(t) => Err(format!(
            "a message's type must be at least 1, not {t} (0 and negative types select \
             messages when receiving)"
        )),
        Err(e) => Err(format!("{s:?} is not a message type: {e}")),
    }
}

/// A new owner: either part may be left out, as in `chown UID`, `chown UID:GID` and
/// `chown :GID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// `UID`, `UID:GID` or `:GID`, numeric only: the daemon knows uids, not user names.
pub fn owner(s: &str) -> Result<Owner, String> {
    let id = |part: &str, what: &str| {
        part.parse::<u32>()
            .map_err(|_| format!("{part:?} is not a numeric {what} (in {s:?}; expected UID[:GID])"))
    };
    let owner = match s.split_once(':') {
        None => Owner {
            uid: Some(id(s, "uid")?),
            gid: None,
        },
        Some((uid, gid)) => Owner {
            uid: if uid.is_empty() {
                None
            } else {
                Some(id(uid, "uid")?)
            },
            gid: Some(id(gid, "gid")?),
        },
    };
    Ok(owner)
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

/// A duration as humantime reads it (`500ms`, `2s`, `1m`, `1h 30m`), or a bare number of
/// seconds as `sleep` and `timeout` take it.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| format!("{s:?}: {e}"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration such as 500ms, 2s or 1m ({e})"))
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
    fn send_types() {
        assert_eq!(send_type("1"), Ok(1));
        assert_eq!(send_type(&i64::MAX.to_string()), Ok(i64::MAX));
        for bad in ["0", "-1", "", "x", "1.5", "9223372036854775808"] {
            assert!(send_type(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn owners() {
        let o = |uid, gid| Ok(Owner { uid, gid });
        assert_eq!(owner("1000"), o(Some(1000), None));
        assert_eq!(owner("1000:100"), o(Some(1000), Some(100)));
        assert_eq!(owner(":100"), o(None, Some(100)));
        assert_eq!(owner("0:0"), o(Some(0), Some(0)));
        for bad in [
            "",
            ":",
            "1000:",
            "alice",
            "1000:staff",
            "-1",
            "1:2:3",
            "4294967296",
        ] {
            assert!(owner(bad).is_err(), "{bad:?} should be refused");
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

    #[test]
    fn durations() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        for bad in ["", "soon", "-1s", "1x", "ms"] {
            assert!(duration(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
