//! Who runs a local command (`pause`, `approve`, `reject`), for the audit log.
//! Without unsafe code and without libc: the name comes from the environment,
//! the uid from the kernel (`/proc/self/status`).

/// The user's name: `$SUDO_USER` (the person behind `sudo`), else `$USER`.
pub fn name() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into())
}

/// This process's real uid, from `/proc/self/status`.
pub fn uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `name (uid N)`.
pub fn describe() -> String {
    let uid = uid().map_or_else(|| "?".to_string(), |u| u.to_string());
    format!("{} (uid {uid})", name())
}
