//! Unix `SOCK_SEQPACKET` sockets in the abstract namespace: rendezvous, descriptor passing, peer
//! credentials.
//!
//! An abstract socket name (leading NUL byte) lives only as long as the socket bound to it, so a
//! server that dies — however it dies — frees its name at once, and nothing is ever left in the
//! filesystem. Abstract names have no permissions of their own; access control is done by checking
//! the peer's credentials (`SO_PEERCRED`) on both ends.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// Most descriptors one message carries.
pub(crate) const MAX_FDS: usize = 4;

/// Who is on the other end of a connected socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerCredentials {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

fn address(name: &str) -> Result<SocketAddrUnix, Errno> {
    SocketAddrUnix::new_abstract_name(name.as_bytes())
}

fn seqpacket() -> Result<OwnedFd, Errno> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
}

/// Binds and listens on abstract name `name`. `EADDRINUSE` means a live process has it.
pub(crate) fn listen(name: &str) -> Result<OwnedFd, Errno> {
    let socket = seqpacket()?;
    rustix::net::bind(&socket, &address(name)?)?;
    rustix::net::listen(&socket, 128)?;
    Ok(socket)
}

/// Connects to abstract name `name`. `ECONNREFUSED` means nobody listens there.
pub(crate) fn connect(name: &str) -> Result<OwnedFd, Errno> {
    let socket = seqpacket()?;
    rustix::net::connect(&socket, &address(name)?)?;
    Ok(socket)
}

/// Accepts one connection (blocking unless the listener is non-blocking).
pub(crate) fn accept(listener: impl AsFd) -> Result<OwnedFd, Errno> {
    rustix::net::accept_with(listener, SocketFlags::CLOEXEC)
}

/// Shuts `socket` down in both directions. Unlike closing a descriptor this acts on the socket
/// itself: a listener refuses new connections (`ECONNREFUSED`) at once, even while copies of
/// its descriptor live on (for instance in a child between `fork` and `exec`).
pub(crate) fn shut_down(socket: impl AsFd) -> Result<(), Errno> {
    rustix::net::shutdown(socket, rustix::net::Shutdown::Both)
}

/// Bounds how long a blocking send or receive on `socket` may take.
pub(crate) fn set_io_timeout(socket: impl AsFd, timeout: Duration) -> Result<(), Errno> {
    use rustix::net::sockopt::{Timeout, set_socket_timeout};
    set_socket_timeout(&socket, Timeout::Recv, Some(timeout))?;
    set_socket_timeout(&socket, Timeout::Send, Some(timeout))
}

/// The credentials the kernel recorded for the peer when the connection was made.
pub(crate) fn peer_credentials(socket: impl AsFd) -> Result<PeerCredentials, Errno> {
    let cred = rustix::net::sockopt::socket_peercred(socket)?;
    Ok(PeerCredentials {
        pid: cred.pid.as_raw_nonzero().get().unsigned_abs(),
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
    })
}

/// Sends one message carrying `bytes` and the descriptors `fds`.
pub(crate) fn send_message(
    socket: impl AsFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), Errno> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty()
        && (fds.len() > MAX_FDS || !control.push(SendAncillaryMessage::ScmRights(fds)))
    {
        return Err(Errno::INVAL);
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent == bytes.len() {
        Ok(())
    } else {
        Err(Errno::MSGSIZE)
    }
}

/// Receives one message into `buf`; returns its length and the descriptors it carried. A zero
/// length with no descriptors means the peer closed the connection.
pub(crate) fn receive_message(
    socket: impl AsFd,
    buf: &mut [u8],
) -> Result<(usize, Vec<OwnedFd>), Errno> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if received
        .flags
        .intersects(rustix::net::ReturnFlags::TRUNC | rustix::net::ReturnFlags::CTRUNC)
    {
        return Err(Errno::MSGSIZE);
    }
    Ok((received.bytes, fds))
}

/// Abstract socket names currently bound on this machine (from `/proc/net/unix`) that start with
/// `prefix`, without the leading `@`.
pub(crate) fn bound_abstract_names(prefix: &str) -> Vec<String> {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let mut names: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(7))
        .filter_map(|path| path.strip_prefix('@'))
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn passes_descriptors_and_credentials_and_frees_the_name_on_close() {
        let name = format!("memlink.unit.sock.{}", std::process::id());
        let listener = listen(&name).unwrap();
        assert_eq!(listen(&name).err(), Some(Errno::ADDRINUSE));
        assert!(bound_abstract_names("memlink.unit.sock.").contains(&name));

        let client = connect(&name).unwrap();
        let server_side = accept(&listener).unwrap();
        let creds = peer_credentials(&server_side).unwrap();
        assert_eq!(creds.pid, std::process::id());

        let payload = rustix::event::eventfd(7, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        send_message(&server_side, b"hello", &[payload.as_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = receive_message(&client, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        let mut counter = [0u8; 8];
        rustix::io::read(&fds[0], &mut counter).unwrap();
        assert_eq!(u64::from_ne_bytes(counter), 7);

        drop(server_side);
        let (n, fds) = receive_message(&client, &mut buf).unwrap();
        assert_eq!((n, fds.len()), (0, 0), "close is seen as an empty message");
        drop(listener);
        assert_eq!(connect(&name).err(), Some(Errno::CONNREFUSED));
    }
}
