//! systemd's readiness protocol (`sd_notify`, for `Type=notify` units): one datagram
//! per state change to the socket systemd names in `NOTIFY_SOCKET`.

/// Sends `state` (`READY=1`, `STOPPING=1`…) to the socket systemd names in
/// `NOTIFY_SOCKET`; does nothing when the variable is unset (not run by systemd) or
/// the `systemd` feature is off. A failure is logged, never fatal: the proxy serves
/// whether or not its supervisor hears about it.
pub fn notify(state: &str) {
    #[cfg(feature = "systemd")]
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET")
        && let Err(e) = send(&path, state)
    {
        tracing::warn!(error = %e, socket = ?path, state, "cannot notify systemd");
    }
    #[cfg(not(feature = "systemd"))]
    let _ = state;
}

#[cfg(feature = "systemd")]
fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let bytes = path.as_bytes();
    // `@name` is a socket in the abstract namespace, as systemd may hand out.
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            UnixAddr::from_abstract_name(name)?
        }
        None => UnixAddr::from_pathname(path)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}
