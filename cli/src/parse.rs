//! Value parsers for the command line: octal modes, `UID[:GID]` owners, byte sizes and
//! durations. They are pure functions so that clap reports their errors as usage errors
//! (exit 2) before anything is sent.

use std::time::Duration;

/// Modes and sizes are read the same way by the daemon's configuration file.
pub use ipc_proto::units::{mode, size};

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
