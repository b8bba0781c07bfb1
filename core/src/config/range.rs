//! Ranges for numeric keys, checked while the file is parsed (so the error names the key and
//! its line, as every other config error does). A value the type allows but the daemon cannot
//! run on (a grace period of 2^64 seconds, a cache of 2^32 entries, 100,000 threads) is refused
//! here, not found out later by a panic or an allocation failure.

use std::num::{NonZeroU32, NonZeroU64};

use serde::{Deserialize, Deserializer};

/// A config value that is a whole number.
pub trait Whole: Copy {
    /// The value, widened.
    fn whole(self) -> u64;
}

impl Whole for u32 {
    fn whole(self) -> u64 {
        u64::from(self)
    }
}

impl Whole for u64 {
    fn whole(self) -> u64 {
        self
    }
}

impl Whole for NonZeroU32 {
    fn whole(self) -> u64 {
        u64::from(self.get())
    }
}

impl Whole for NonZeroU64 {
    fn whole(self) -> u64 {
        self.get()
    }
}

/// Deserializes a `T` and refuses it outside `MIN..=MAX`; used as
/// `#[serde(deserialize_with = "within::<_, _, MIN, MAX>")]`.
pub fn within<'de, D, T, const MIN: u64, const MAX: u64>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Whole,
{
    let value = T::deserialize(d)?;
    let n = value.whole();
    if (MIN..=MAX).contains(&n) {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "{n} is out of range: this key takes {MIN} to {MAX}"
        )))
    }
}

/// [`within`] for a key that may be absent (a table whose defaults depend on other keys).
pub fn within_opt<'de, D, T, const MIN: u64, const MAX: u64>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Whole,
{
    match Option::<T>::deserialize(d)? {
        None => Ok(None),
        Some(value) if (MIN..=MAX).contains(&value.whole()) => Ok(Some(value)),
        Some(value) => Err(serde::de::Error::custom(format!(
            "{} is out of range: this key takes {MIN} to {MAX}",
            value.whole()
        ))),
    }
}

/// Directories that others may write to: a state directory there could be planted in, and
/// making it private would change it for everyone.
const SHARED_DIRS: &[&str] = &["/", "/tmp", "/var/tmp", "/dev/shm", "/run", "/var/run"];

/// Deserializes `state_dir`: absolute, and not a directory shared with other users.
pub fn private_dir<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    let Some(dir) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    let path = std::path::Path::new(&dir);
    if !path.is_absolute() {
        return Err(serde::de::Error::custom(format!(
            "{dir:?} is not an absolute path: give the directory from / (e.g. \"/home/me/.local/state/reaper\")"
        )));
    }
    let normal: std::path::PathBuf = path.components().collect();
    if SHARED_DIRS
        .iter()
        .any(|s| normal == std::path::Path::new(s))
    {
        return Err(serde::de::Error::custom(format!(
            "{dir:?} is shared with other users: use a directory of its own (e.g. {}/reaper)",
            normal.display()
        )));
    }
    Ok(Some(dir))
}
