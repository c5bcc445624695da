//! Overlayfs markers: whiteouts (char device 0:0) and opaque directories
//! (the `overlay.opaque` xattr), read in layer mode and recreated on restore.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Result, StoreError};

const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| StoreError::InvalidName {
        name: path.display().to_string(),
        reason: "contains NUL",
    })
}

pub(crate) fn is_opaque(dir: &Path) -> Result<bool> {
    let path = c_path(dir)?;
    for name in OPAQUE_XATTRS {
        let name = CString::new(name).unwrap_or_default();
        let mut value = [0u8; 4];
        // SAFETY: both strings are NUL-terminated and live for the call; the
        // buffer pointer and its length describe `value`.
        let len = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len == 1 && value[0] == b'y' {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(crate) fn set_opaque(dir: &Path) -> Result<()> {
    let path = c_path(dir)?;
    let name = CString::new(OPAQUE_XATTRS[0]).unwrap_or_default();
    // SAFETY: NUL-terminated strings and a one-byte value that live for the call.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EPERM) {
            return Err(StoreError::NeedsPrivilege {
                path: dir.to_path_buf(),
            });
        }
        return Err(StoreError::io(dir, error));
    }
    Ok(())
}

pub(crate) fn make_whiteout(path: &Path) -> Result<()> {
    let c = c_path(path)?;
    // SAFETY: `c` is NUL-terminated and lives for the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EPERM) {
            return Err(StoreError::NeedsPrivilege {
                path: path.to_path_buf(),
            });
        }
        return Err(StoreError::io(path, error));
    }
    Ok(())
}
