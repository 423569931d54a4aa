//! Unix `SOCK_SEQPACKET` sockets in the abstract namespace: rendezvous, descriptor passing, peer
//! credentials.
//!
//! An abstract socket name (leading NUL byte) lives only as long as the socket bound to it, so a
//! server that dies — however it dies — frees its name at once, and nothing is ever left in the
//! filesystem. Abstract names have no permissions of their own; access control is done by checking
//! the peer's credentials (`SO_PEERCRED`) on both ends.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// Most descriptors one message carries.
pub(crate) const MAX_FDS: usize = 6;

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

/// `SO_PASSRIGHTS` (Linux 6.16): whether others may send descriptors to this socket.
const SO_PASSRIGHTS: libc::c_int = 83;

/// Sets whether peers may pass descriptors to `socket` (`SO_PASSRIGHTS`, Linux 6.16+). Returns
/// `Ok(false)` on a kernel without the option.
///
/// Why it matters: a descriptor that arrives in a message we never wanted is closed by *us*, when
/// we read the message without room for it or close the socket it waits in, and closing some
/// descriptors blocks (a TCP socket with `SO_LINGER` waits out its linger time). A peer could
/// stall any thread of ours that way. With the option off the kernel refuses such messages at
/// the sender (`EPERM`). A listener passes the setting on to the connections it accepts, from
/// the moment they connect.
pub(crate) fn set_accept_descriptors(socket: impl AsFd, accept: bool) -> Result<bool, Errno> {
    let value: libc::c_int = accept.into();
    // `setsockopt` only reads `size_of::<c_int>()` bytes from `value`, which outlives the call.
    // SAFETY: the descriptor is open (borrowed for the call); pointer and length describe `value`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSRIGHTS,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    match Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO) {
        Errno::NOPROTOOPT | Errno::INVAL => Ok(false),
        e => Err(e),
    }
}

/// Binds and listens on abstract name `name`, non-blocking (`accept` says `EAGAIN` when no
/// connection waits), refusing descriptors from connectors where the kernel can (see
/// [`set_accept_descriptors`]; the second value says whether it could). `EADDRINUSE` means a live
/// process has the name.
pub(crate) fn listen(name: &str) -> Result<(OwnedFd, bool), Errno> {
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let refuses = set_accept_descriptors(&socket, false)?;
    rustix::net::bind(&socket, &address(name)?)?;
    rustix::net::listen(&socket, 128)?;
    Ok((socket, refuses))
}

/// Binds a `SOCK_SEQPACKET` socket to abstract name `name` without listening: the name is
/// ours (`EADDRINUSE` for anyone else who binds it) but nobody can connect to it
/// (`ECONNREFUSED`), so nobody can send us anything through it, descriptors included. Closing
/// it never blocks. Close-on-exec.
pub(crate) fn bind_unconnectable(name: &str) -> Result<OwnedFd, Errno> {
    let socket = seqpacket()?;
    rustix::net::bind(&socket, &address(name)?)?;
    Ok(socket)
}

/// The inode number of the socket `socket` (what `/proc/PID/fd/N` shows as `socket:[INODE]`),
/// which identifies it as long as it is open.
pub(crate) fn inode(socket: impl AsFd) -> Result<u64, Errno> {
    Ok(rustix::fs::fstat(socket)?.st_ino)
}

/// Takes ownership of descriptor number `raw`, inherited from the process that started us, if
/// it is the socket `inode` bound to the abstract name `name` (anything else under that number
/// is left alone, and `None` returned).
///
/// The caller must call this at most once per process for a given number, and only for a
/// number that was handed over for memlink to take (the start lock a launcher passes on, see
/// `rpc::launch`): nothing else in the process may own it.
pub(crate) fn take_inherited(raw: i32, inode: u64, name: &str) -> Option<OwnedFd> {
    if raw <= 2 {
        return None;
    }
    // `F_GETFD` only reads the descriptor table: a number that is not open gives `EBADF`.
    // SAFETY: no pointer is passed; any integer is a valid argument.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return None;
    }
    // The number is open (checked above) and, by this function's contract, owned by nobody
    // else in the process, so nobody closes it while we look.
    // SAFETY: `raw` is an open descriptor that stays open for the borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    let stat = rustix::fs::fstat(fd).ok()?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK || stat.st_ino != inode {
        return None;
    }
    let bound = rustix::net::getsockname(fd).ok()?;
    let bound = SocketAddrUnix::try_from(bound).ok()?;
    if bound.abstract_name() != Some(name.as_bytes()) {
        return None;
    }
    // It is the very socket the launcher handed over (same inode, same name), which nothing
    // else in this process owns (the contract above): ours to close.
    // SAFETY: `raw` is open and exclusively ours from here on.
    Some(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Connects to abstract name `name`, waiting at most `timeout` for a listener whose backlog is
/// full (a listener that never accepts cannot hold us). The new socket refuses descriptors until
/// [`set_accept_descriptors`] allows them. `ECONNREFUSED` means nobody listens there, `EAGAIN`
/// that the wait ran out.
pub(crate) fn connect(name: &str, timeout: Duration) -> Result<OwnedFd, Errno> {
    let socket = seqpacket()?;
    set_accept_descriptors(&socket, false)?;
    set_io_timeout(&socket, timeout)?;
    rustix::net::connect(&socket, &address(name)?)?;
    Ok(socket)
}

/// Accepts one connection; the new socket is blocking (flags are not inherited).
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

/// The credentials the kernel recorded for the peer when the connection was made. The pid is 0
/// when the peer is in a pid namespace we cannot see.
pub(crate) fn peer_credentials(socket: impl AsFd) -> Result<PeerCredentials, Errno> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // Read directly rather than through rustix, whose `UCred` assumes a nonzero pid: the kernel
    // reports 0 for a peer in a pid namespace we cannot see. The descriptor is open for the call.
    // SAFETY: `cred` and `len` are valid and writable; `len` holds `cred`'s size, the most written.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    Ok(PeerCredentials {
        pid: cred.pid.unsigned_abs(),
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// `SO_PEERGROUPS` (Linux 4.13), in the generic socket option numbering x86-64 and arm64 use.
const SO_PEERGROUPS: libc::c_int = 59;

/// The supplementary groups the kernel recorded for the peer when the connection was made.
pub(crate) fn peer_groups(socket: impl AsFd) -> Result<Vec<u32>, Errno> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // The kernel writes at most `len` bytes (the buffer's size) and says how many it needed.
        // SAFETY: the descriptor is open for the call; the pointer and `len` describe `groups`.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        let count = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        match Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO) {
            // The kernel caps a process's groups at 65,536.
            Errno::RANGE if count > groups.len() && count <= 65_536 => groups.resize(count, 0),
            e => return Err(e),
        }
    }
}

/// Sends one message carrying `bytes` and the descriptors `fds`, never blocking: `MSG_DONTWAIT`
/// acts on this call only, so nothing the peer does to a shared open file description's flags can
/// make it wait. A peer that does not read its socket gets `EAGAIN`, never a stuck sender.
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
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )?;
    if sent == bytes.len() {
        Ok(())
    } else {
        Err(Errno::MSGSIZE)
    }
}

/// Receives one message into `buf`; returns its length and the descriptors it carried. A zero
/// length with no descriptors means the peer closed the connection. Waits (up to the socket's
/// receive timeout) only if `wait`.
pub(crate) fn receive_message(
    socket: impl AsFd,
    buf: &mut [u8],
    wait: bool,
) -> Result<(usize, Vec<OwnedFd>), Errno> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        if wait {
            RecvFlags::CMSG_CLOEXEC
        } else {
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT
        },
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
    fn a_listener_that_refuses_descriptors_refuses_them_from_its_connections() {
        let name = format!("memlink.unit.norights.{}", std::process::id());
        let (listener, refuses) = listen(&name).unwrap();
        if !refuses {
            eprintln!("skipped: this kernel has no SO_PASSRIGHTS");
            return;
        }
        let client = connect(&name, Duration::from_secs(5)).unwrap();
        let payload = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        // Before and after the connection is accepted.
        assert_eq!(
            send_message(&client, b"x", &[payload.as_fd()]),
            Err(Errno::PERM)
        );
        let _server_side = accept(&listener).unwrap();
        assert_eq!(
            send_message(&client, b"x", &[payload.as_fd()]),
            Err(Errno::PERM)
        );
        assert_eq!(send_message(&client, b"x", &[]), Ok(()));
    }

    #[test]
    fn an_unconnectable_name_is_held_refuses_connections_and_can_be_handed_over() {
        use std::os::fd::IntoRawFd;
        let name = format!("memlink.unit.unconnectable.{}", std::process::id());
        let held = bind_unconnectable(&name).unwrap();
        assert_eq!(bind_unconnectable(&name).err(), Some(Errno::ADDRINUSE));
        assert_eq!(listen(&name).err(), Some(Errno::ADDRINUSE));
        assert_eq!(
            connect(&name, Duration::from_secs(5)).err(),
            Some(Errno::CONNREFUSED)
        );
        let ino = inode(&held).unwrap();
        let raw = rustix::io::fcntl_dupfd_cloexec(&held, 3)
            .unwrap()
            .into_raw_fd();
        // Only the very socket, under the very name, is taken.
        assert!(take_inherited(raw, ino + 1, &name).is_none());
        assert!(take_inherited(raw, ino, "memlink.unit.other").is_none());
        assert!(take_inherited(0, ino, &name).is_none());
        let taken = take_inherited(raw, ino, &name).unwrap();
        drop(held);
        assert_eq!(bind_unconnectable(&name).err(), Some(Errno::ADDRINUSE));
        drop(taken);
        assert!(bind_unconnectable(&name).is_ok());
    }

    #[test]
    fn passes_descriptors_and_credentials_and_frees_the_name_on_close() {
        let name = format!("memlink.unit.sock.{}", std::process::id());
        let (listener, _) = listen(&name).unwrap();
        assert_eq!(listen(&name).err(), Some(Errno::ADDRINUSE));
        assert!(bound_abstract_names("memlink.unit.sock.").contains(&name));

        let client = connect(&name, Duration::from_secs(5)).unwrap();
        set_accept_descriptors(&client, true).unwrap();
        let server_side = accept(&listener).unwrap();
        let creds = peer_credentials(&server_side).unwrap();
        assert_eq!(creds.pid, std::process::id());

        let payload = rustix::event::eventfd(7, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        send_message(&server_side, b"hello", &[payload.as_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = receive_message(&client, &mut buf, true).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        let mut counter = [0u8; 8];
        rustix::io::read(&fds[0], &mut counter).unwrap();
        assert_eq!(u64::from_ne_bytes(counter), 7);

        drop(server_side);
        let (n, fds) = receive_message(&client, &mut buf, true).unwrap();
        assert_eq!((n, fds.len()), (0, 0), "close is seen as an empty message");
        drop(listener);
        assert_eq!(
            connect(&name, Duration::from_secs(5)).err(),
            Some(Errno::CONNREFUSED)
        );
    }
}
