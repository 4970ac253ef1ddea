//! The running kernel's release, for io_uring features that cannot be probed: a flag an
//! older kernel ignores rather than refuses.

/// Whether the running kernel is `major.minor` or later (`false` when it cannot be told).
pub fn at_least(major: u32, minor: u32) -> bool {
    // SAFETY: uname(2) fills the struct it is given; all zeroes is a valid `utsname`.
    #[allow(unsafe_code)]
    let name = unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        (libc::uname(&raw mut name) == 0).then_some(name)
    };
    name.and_then(|name| {
        let release = name.release.iter().take_while(|&&c| c != 0);
        let release: String = release.map(|&c| c as u8 as char).collect();
        parse(&release)
    })
    .is_some_and(|running| running >= (major, minor))
}

/// `6.18.0-1-amd64` -> (6, 18).
fn parse(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_to_major_and_minor() {
        assert_eq!(parse("6.18.0-1-amd64\n"), Some((6, 18)));
        assert_eq!(parse("6.1.0+"), Some((6, 1)));
        assert_eq!(parse("5.19-rc1"), Some((5, 19)));
        assert_eq!(parse("linux"), None);
        assert!(at_least(3, 0), "this kernel is older than 3.0?");
        assert!(!at_least(999, 0));
    }
}
