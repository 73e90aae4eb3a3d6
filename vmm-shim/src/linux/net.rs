//! Sockets, on host sockets of the same kind: the program's socket descriptors are host
//! sockets, its addresses are copied in and out byte for byte (AF_UNIX paths name host
//! files, as the program's other paths do), and descriptors passed in SCM_RIGHTS
//! messages are translated between the program's table and the host's.
//!
//! Like `read` on a pipe, a call that blocks (accept, connect, recv and send on a
//! blocking socket) holds the process while it waits; event loops use non-blocking
//! sockets and epoll, which release it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::linux::Process;
use crate::linux::errno::Errno;
use crate::linux::fd::Fd;
use crate::linux::host;
use crate::linux::syscall::{MAX_IO, iov_room};
use crate::memory::GuestVirtAddr;

/// Largest socket address or option value accepted from the program.
const MAX_ADDR: u64 = 128;
const MAX_OPT: u64 = 4096;
/// Largest control-message buffer accepted (room for ~1000 descriptors).
const MAX_CONTROL: u64 = 4096;

/// Socket options whose value holds a pointer or a descriptor, which the host kernel
/// would take as its own: refused.
fn forbidden_option(level: i32, name: i32) -> bool {
    level == libc::SOL_SOCKET
        && matches!(
            name,
            libc::SO_ATTACH_FILTER
                | libc::SO_ATTACH_BPF
                | libc::SO_ATTACH_REUSEPORT_CBPF
                | libc::SO_ATTACH_REUSEPORT_EBPF
        )
}

/// Each `SOL_SOCKET`/`SCM_RIGHTS` message's descriptors, in place: (offset of the
/// first int, count) per message, walking the `cmsghdr` chain as the kernel does.
fn rights(control: &[u8]) -> Vec<(usize, usize)> {
    const HDR: usize = 16; // cmsg_len (u64), cmsg_level (i32), cmsg_type (i32)
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + HDR <= control.len() {
        let len = u64::from_le_bytes(control[at..at + 8].try_into().unwrap_or_default()) as usize;
        let level = i32::from_le_bytes(control[at + 8..at + 12].try_into().unwrap_or_default());
        let ty = i32::from_le_bytes(control[at + 12..at + 16].try_into().unwrap_or_default());
        if len < HDR || at.checked_add(len).is_none_or(|end| end > control.len()) {
            break;
        }
        if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
            out.push((at + HDR, (len - HDR) / 4));
        }
        at += (len + 7) & !7;
    }
    out
}

impl Process {
    fn read_bytes(&self, va: u64, len: u64, max: u64) -> Result<Vec<u8>, Errno> {
        if len > max {
            return Err(Errno::EINVAL);
        }
        let mut b = vec![0u8; len as usize];
        self.mm.read(GuestVirtAddr(va), &mut b)?;
        Ok(b)
    }

    /// Writes an address the kernel returned into the program's buffer at `va` (room:
    /// `*len_va`), truncated as the kernel truncates, and its full length to `len_va`.
    fn out_addr(&self, va: u64, len_va: u64, addr: &[u8], full: usize) -> Result<(), Errno> {
        if va == 0 || len_va == 0 {
            return Ok(());
        }
        let room = self.mm.read_u32(len_va)? as usize;
        let n = room.min(full).min(addr.len());
        self.mm.write(GuestVirtAddr(va), &addr[..n])?;
        self.mm
            .write(GuestVirtAddr(len_va), &(full as u32).to_le_bytes())
    }

    fn socket_of(&self, fd: u64) -> Result<Arc<OwnedFd>, Errno> {
        Ok(self.fds.get(fd)?.file.clone())
    }

    pub(crate) fn sys_socket(&mut self, domain: u64, ty: u64, protocol: u64) -> Result<u64, Errno> {
        let ty = ty as i32;
        let s = host::socket(domain as i32, ty, protocol as i32)?;
        self.fds.insert(Fd::new(s, ty & libc::SOCK_CLOEXEC != 0))
    }

    pub(crate) fn sys_socketpair(
        &mut self,
        domain: u64,
        ty: u64,
        protocol: u64,
        sv: u64,
    ) -> Result<u64, Errno> {
        let ty = ty as i32;
        // The result array must be writable before descriptors are made.
        self.mm.write(GuestVirtAddr(sv), &[0u8; 8])?;
        let (a, b) = host::socketpair(domain as i32, ty, protocol as i32)?;
        let cloexec = ty & libc::SOCK_CLOEXEC != 0;
        let fa = self.fds.insert(Fd::new(a, cloexec))?;
        let fb = match self.fds.insert(Fd::new(b, cloexec)) {
            Ok(f) => f,
            Err(e) => {
                let _ = self.fds.close(fa);
                return Err(e);
            }
        };
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&(fa as u32).to_le_bytes());
        out[4..].copy_from_slice(&(fb as u32).to_le_bytes());
        self.mm.write(GuestVirtAddr(sv), &out)?;
        Ok(0)
    }

    pub(crate) fn sys_bind_connect(
        &mut self,
        fd: u64,
        addr: u64,
        len: u64,
        connect: bool,
    ) -> Result<u64, Errno> {
        let s = self.socket_of(fd)?;
        let a = self.read_bytes(addr, len, MAX_ADDR)?;
        host::bind_or_connect(s.as_fd(), &a, connect).map(|()| 0)
    }

    pub(crate) fn sys_listen(&mut self, fd: u64, backlog: u64) -> Result<u64, Errno> {
        host::listen(self.fds.get(fd)?.host(), backlog as i32).map(|()| 0)
    }

    pub(crate) fn sys_accept(
        &mut self,
        fd: u64,
        addr: u64,
        len: u64,
        flags: u64,
    ) -> Result<u64, Errno> {
        let flags = flags as i32;
        if flags & !(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) != 0 {
            return Err(Errno::EINVAL);
        }
        let s = self.socket_of(fd)?;
        let (c, peer, full) = host::accept4(s.as_fd(), flags)?;
        self.out_addr(addr, len, &peer, full)?;
        self.fds.insert(Fd::new(c, flags & libc::SOCK_CLOEXEC != 0))
    }

    pub(crate) fn sys_setsockopt(
        &mut self,
        fd: u64,
        level: u64,
        name: u64,
        val: u64,
        len: u64,
    ) -> Result<u64, Errno> {
        let (level, name) = (level as i32, name as i32);
        if forbidden_option(level, name) {
            return Err(Errno(libc::ENOPROTOOPT));
        }
        let v = self.read_bytes(val, len, MAX_OPT)?;
        host::setsockopt(self.fds.get(fd)?.host(), level, name, &v).map(|()| 0)
    }

    pub(crate) fn sys_getsockopt(
        &mut self,
        fd: u64,
        level: u64,
        name: u64,
        val: u64,
        len_va: u64,
    ) -> Result<u64, Errno> {
        let room = u64::from(self.mm.read_u32(len_va)?).min(MAX_OPT);
        let v = host::getsockopt(
            self.fds.get(fd)?.host(),
            level as i32,
            name as i32,
            room as usize,
        )?;
        self.mm.write(GuestVirtAddr(val), &v)?;
        self.mm
            .write(GuestVirtAddr(len_va), &(v.len() as u32).to_le_bytes())?;
        Ok(0)
    }

    pub(crate) fn sys_shutdown(&mut self, fd: u64, how: u64) -> Result<u64, Errno> {
        host::shutdown(self.fds.get(fd)?.host(), how as i32).map(|()| 0)
    }

    pub(crate) fn sys_sendto(
        &mut self,
        fd: u64,
        buf: u64,
        len: u64,
        flags: u64,
        to: u64,
        to_len: u64,
    ) -> Result<u64, Errno> {
        let s = self.socket_of(fd)?;
        let data = self.read_bytes(buf, len.min(MAX_IO as u64), MAX_IO as u64)?;
        let to = if to == 0 {
            None
        } else {
            Some(self.read_bytes(to, to_len, MAX_ADDR)?)
        };
        host::sendmsg(s.as_fd(), &data, to.as_deref(), &[], flags as i32).map(|n| n as u64)
    }

    pub(crate) fn sys_recvfrom(
        &mut self,
        fd: u64,
        buf: u64,
        len: u64,
        flags: u64,
        from: u64,
        from_len: u64,
    ) -> Result<u64, Errno> {
        let s = self.socket_of(fd)?;
        let len = len.min(MAX_IO as u64) as usize;
        let (data, r) = host::recvmsg(s.as_fd(), len, 0, flags as i32)?;
        self.mm.write(GuestVirtAddr(buf), &data[..r.len.min(len)])?;
        self.out_addr(from, from_len, &r.from, r.from_len)?;
        Ok(r.len as u64)
    }

    /// The fields of a `struct msghdr` at `va`: name, namelen, iov, iovlen, control,
    /// controllen, flags.
    fn msghdr(&self, va: u64) -> Result<[u64; 7], Errno> {
        let mut b = [0u8; 56];
        self.mm.read(GuestVirtAddr(va), &mut b)?;
        let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        Ok([
            w(0),
            u64::from(u32::from_le_bytes(b[8..12].try_into().unwrap_or_default())),
            w(16),
            w(24),
            w(32),
            w(40),
            u64::from(u32::from_le_bytes(b[48..52].try_into().unwrap_or_default())),
        ])
    }

    pub(crate) fn sys_sendmsg(&mut self, fd: u64, msg: u64, flags: u64) -> Result<u64, Errno> {
        let s = self.socket_of(fd)?;
        let [name, namelen, iov, iovlen, control, controllen, _] = self.msghdr(msg)?;
        let data = self.gather(iov, iovlen)?;
        let to = if name == 0 {
            None
        } else {
            Some(self.read_bytes(name, namelen, MAX_ADDR)?)
        };
        let mut ctl = if control == 0 {
            Vec::new()
        } else {
            self.read_bytes(control, controllen, MAX_CONTROL)?
        };
        // Guest descriptors become the host's (kept open until the call returns).
        let mut keep = Vec::new();
        for (at, n) in rights(&ctl) {
            for i in 0..n {
                let o = at + 4 * i;
                let gfd = i32::from_le_bytes(ctl[o..o + 4].try_into().unwrap_or_default());
                let f = self.fds.get(gfd as u64)?.file.clone();
                ctl[o..o + 4].copy_from_slice(&f.as_raw_fd().to_le_bytes());
                keep.push(f);
            }
        }
        let n = host::sendmsg(s.as_fd(), &data, to.as_deref(), &ctl, flags as i32)?;
        drop(keep);
        Ok(n as u64)
    }

    /// sendmmsg/recvmmsg: [`Self::sys_sendmsg`] or [`Self::sys_recvmsg`] on each of
    /// `vlen` `struct mmsghdr`s (a msghdr, then the message's length, which is written
    /// back), until one fails; how many went, or the first one's error. glibc's
    /// resolver sends its A and AAAA queries with one sendmmsg. recvmmsg waits for the
    /// first message only (as with MSG_WAITFORONE; Linux without it waits for `vlen`
    /// or the timeout) and takes what else has arrived.
    pub(crate) fn sys_mmsg(
        &mut self,
        fd: u64,
        vec: u64,
        vlen: u64,
        flags: u64,
        send: bool,
    ) -> Result<u64, Errno> {
        const MMSGHDR: u64 = 64;
        const MSG_WAITFORONE: u64 = 0x10000;
        let mut done = 0;
        for i in 0..vlen.min(1024) {
            let msg = vec.checked_add(i * MMSGHDR).ok_or(Errno(libc::EFAULT))?;
            let r = if send {
                self.sys_sendmsg(fd, msg, flags)
            } else if i > 0 {
                self.sys_recvmsg(
                    fd,
                    msg,
                    (flags & !MSG_WAITFORONE) | libc::MSG_DONTWAIT as u64,
                )
            } else {
                self.sys_recvmsg(fd, msg, flags & !MSG_WAITFORONE)
            };
            match r {
                Ok(n) => {
                    self.mm
                        .write(GuestVirtAddr(msg + 56), &(n as u32).to_le_bytes())?;
                    done += 1;
                }
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    }

    pub(crate) fn sys_recvmsg(&mut self, fd: u64, msg: u64, flags: u64) -> Result<u64, Errno> {
        let s = self.socket_of(fd)?;
        let [name, _, iov, iovlen, control, controllen, _] = self.msghdr(msg)?;
        let v = self.iovecs(iov, iovlen)?;
        let len = iov_room(&v);
        let room = if control == 0 {
            0
        } else {
            controllen.min(MAX_CONTROL) as usize
        };
        let (data, r) = host::recvmsg(s.as_fd(), len, room, flags as i32)?;
        self.scatter(&v, &data[..r.len.min(len).min(data.len())])?;
        // Host descriptors that arrived join the program's table.
        let mut ctl = r.control;
        let cloexec = flags as i32 & libc::MSG_CMSG_CLOEXEC != 0;
        for (at, n) in rights(&ctl) {
            for i in 0..n {
                let o = at + 4 * i;
                let raw = i32::from_le_bytes(ctl[o..o + 4].try_into().unwrap_or_default());
                let gfd = match host::adopt_received(raw) {
                    Some(f) => self
                        .fds
                        .insert(Fd::new(f, cloexec))
                        .map_or(-1, |g| g as i32),
                    None => -1,
                };
                ctl[o..o + 4].copy_from_slice(&gfd.to_le_bytes());
            }
        }
        if name != 0 {
            let n = r.from_len.min(r.from.len());
            let room = self.msghdr(msg)?[1] as usize;
            self.mm.write(GuestVirtAddr(name), &r.from[..n.min(room)])?;
            self.mm
                .write(GuestVirtAddr(msg + 8), &(r.from_len as u32).to_le_bytes())?;
        }
        if control != 0 {
            self.mm.write(GuestVirtAddr(control), &ctl)?;
            self.mm
                .write(GuestVirtAddr(msg + 40), &(ctl.len() as u64).to_le_bytes())?;
        }
        self.mm
            .write(GuestVirtAddr(msg + 48), &r.flags.to_le_bytes())?;
        Ok(r.len as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_messages_are_found_in_a_control_chain() {
        let mut c = Vec::new();
        // SCM_CREDENTIALS (ignored), then SCM_RIGHTS with two descriptors.
        c.extend_from_slice(&28u64.to_le_bytes());
        c.extend_from_slice(&libc::SOL_SOCKET.to_le_bytes());
        c.extend_from_slice(&libc::SCM_CREDENTIALS.to_le_bytes());
        c.extend_from_slice(&[0; 12]);
        c.extend_from_slice(&[0; 4]); // padding to 8
        c.extend_from_slice(&24u64.to_le_bytes());
        c.extend_from_slice(&libc::SOL_SOCKET.to_le_bytes());
        c.extend_from_slice(&libc::SCM_RIGHTS.to_le_bytes());
        c.extend_from_slice(&3i32.to_le_bytes());
        c.extend_from_slice(&4i32.to_le_bytes());
        assert_eq!(rights(&c), vec![(48, 2)]);
        // Truncated or nonsense lengths stop the walk.
        assert!(rights(&c[..40]).len() <= 1);
        let mut bad = c.clone();
        bad[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(rights(&bad).is_empty());
        assert!(rights(&[]).is_empty());
    }

    #[test]
    fn filters_that_carry_pointers_are_refused() {
        assert!(forbidden_option(libc::SOL_SOCKET, libc::SO_ATTACH_FILTER));
        assert!(!forbidden_option(libc::SOL_SOCKET, libc::SO_REUSEADDR));
        assert!(!forbidden_option(libc::IPPROTO_TCP, libc::SO_ATTACH_FILTER));
    }
}
