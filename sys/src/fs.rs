//! Private directories (0700) and private files (0600) that are replaced atomically and durably: written to a
//! temporary sibling, fsynced, renamed over the target, and the directory fsynced, so a crash leaves either the old
//! file or the new one, never a torn or world-readable one. On Windows the modes do not apply; files inherit the
//! directory's ACL.

use std::io::Write;
use std::path::Path;

/// Creates `dir` and its missing parents, the last one mode 0700; an existing directory is tightened to 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir)?;
        if meta.permissions().mode() & 0o777 != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// Replaces `path` with `contents`, mode 0600, atomically and durably (see the module doc).
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A leftover from a crash may have any mode: start from nothing so create_new applies 0600.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// fsyncs the directory holding `path`, so a rename or a new file in it survives a crash (a no-op off Unix).
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
        std::fs::File::open(parent)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0)
    }

    #[test]
    fn private_file_is_0600_and_replaced_whole() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("key");
        std::fs::write(p.with_file_name("key.tmp"), b"stale")?;
        std::fs::set_permissions(p.with_file_name("key.tmp"), std::fs::Permissions::from_mode(0o666))?;
        write_private(&p, b"one")?;
        write_private(&p, b"two")?;
        assert_eq!(std::fs::read(&p)?, b"two");
        assert_eq!(mode(&p), 0o600);
        assert!(!p.with_file_name("key.tmp").exists());
        Ok(())
    }

    #[test]
    fn private_dir_is_created_and_tightened() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().join("a/b");
        private_dir(&d)?;
        assert_eq!(mode(&d), 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        private_dir(&d)?;
        assert_eq!(mode(&d), 0o700);
        Ok(())
    }
}
