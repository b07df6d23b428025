//! Payloads passed as descriptors: a large payload travels as a sealed memfd sent with
//! its frame (`SCM_RIGHTS`, flag [`crate::FLAG_FD`]) instead of through the socket, so
//! neither the daemon nor the socket copies it. This module makes such a memfd, checks
//! and maps one received, and sends and receives descriptors beside a frame's bytes.
//!
//! A descriptor rides with the first byte of the `sendmsg` that carries it, and a
//! `recvmsg` that meets it returns it and stops there; so a sender that writes each
//! frame with a descriptor in a `sendmsg` of its own lets the receiver pair descriptors
//! with flagged frames in order, as they arrive.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use bytes::Bytes;

/// The seals a payload memfd must have: nothing can change its contents or size.
const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// Descriptors one `recvmsg` takes at most; a sender sends one per frame.
const FDS_PER_READ: usize = 4;

/// Why a descriptor received is not a payload.
#[derive(Debug, thiserror::Error)]
pub enum MemfdError {
    #[error("the descriptor passed is not a sealed memfd: {0}")]
    NotSealed(String),
    #[error("the payload passed as a descriptor is {size} bytes, over the limit of {max}")]
    TooLarge { size: u64, max: u64 },
    #[error("cannot map the payload passed as a descriptor: {0}")]
    Map(io::Error),
}

/// A payload in a sealed memfd of its own, ready to be sent with [`send_with_fd`].
pub fn seal_payload(payload: &[u8]) -> io::Result<OwnedFd> {
    let name = c"ipc-payload";
    // SAFETY: `name` is a valid C string; the result is checked.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor just made and owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = std::fs::File::from(fd);
    io::Write::write_all(&mut file, payload)?;
    let fd = OwnedFd::from(file);
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A mapping of a sealed memfd, read-only, and the memfd itself (to be passed on).
struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and its memfd is sealed against writes, so the bytes
// never change while any thread reads them.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `drop`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are a mapping made by `map_payload` and unmapped only here.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

/// Payloads up to this size a receiver reads into its memory rather than maps.
pub const READ_UP_TO: u64 = 8 << 20;

/// Where in its buffer a payload read from its memfd starts: at a multiple of this. The
/// kernel copies a file's pages out with `rep movsb`, which on some CPUs runs five or six
/// times slower into a destination that starts a few bytes past a 64-byte line; and a
/// large block from glibc's allocator starts 16 bytes past a page. Measured on an AMD
/// EPYC with a C loop of `pread`s of one 1 MiB memfd: 425–620 µs each into a buffer 8,
/// 16 or 24 bytes past a page, 77–99 µs at 0, 32, 40, 48 or 56 bytes past it.
const READ_ALIGN: usize = 64;

/// Checks that `fd` is a sealed memfd of at most `max` bytes and gives its payload, for a
/// receiver that keeps the payload, not the memfd: read into this process's memory up
/// to [`READ_UP_TO`] bytes, mapped past that. A read costs one copy; a mapping costs a
/// page fault every few pages, then unmapping them and flushing them from every CPU
/// that ran this process's threads — more than the copy, measured on 1 MiB payloads,
/// until the payload is so large that holding a copy of it matters.
pub fn receive_payload(fd: OwnedFd, max: u64) -> Result<Bytes, MemfdError> {
    let (file, size) = checked(fd, max)?;
    if size > READ_UP_TO {
        return map_checked(file, size, max).map(|(payload, _)| payload);
    }
    let len = usize::try_from(size).map_err(|_| MemfdError::TooLarge { size, max })?;
    if len == 0 {
        return Ok(Bytes::new());
    }
    // The buffer has room to start the payload at the next multiple of `READ_ALIGN`; the
    // bytes skipped are zeroed so that the vector holds only initialised bytes.
    let mut buf: Vec<u8> = Vec::with_capacity(len + READ_ALIGN - 1);
    let skip = (READ_ALIGN - buf.as_ptr() as usize % READ_ALIGN) % READ_ALIGN;
    buf.resize(skip, 0);
    let end = skip + len;
    // Read at offsets, not from the file's position: the sender's writes left that at
    // the end, and the open file is shared with it.
    while buf.len() < end {
        let done = buf.len() - skip;
        // SAFETY: reads at most `len - done` bytes into the vector's spare capacity,
        // which has that room (`end <= capacity`); the result is checked before the
        // length counts them.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(skip + done).cast(),
                len - done,
                done as libc::off_t,
            )
        };
        match n {
            n if n > 0 => {
                // SAFETY: the kernel wrote `n` more bytes, at most `len - done`.
                unsafe { buf.set_len(skip + done + n as usize) };
            }
            0 => {
                return Err(MemfdError::Map(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("it ended after {done} of its {len} bytes"),
                )));
            }
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(MemfdError::Map(error));
                }
            }
        }
    }
    // `Bytes` takes the vector as it is and slices it: no copy.
    Ok(Bytes::from(buf).slice(skip..))
}

/// Checks that `fd` is a sealed memfd of at most `max` bytes and maps it: its payload
/// as bytes that need no copy, and the memfd, to pass on as it came.
pub fn map_payload(fd: OwnedFd, max: u64) -> Result<(Bytes, Arc<OwnedFd>), MemfdError> {
    let (file, size) = checked(fd, max)?;
    map_checked(file, size, max)
}

/// Maps `file`, a memfd [`checked`] to be `size` bytes.
fn map_checked(
    file: std::fs::File,
    size: u64,
    max: u64,
) -> Result<(Bytes, Arc<OwnedFd>), MemfdError> {
    let fd = Arc::new(OwnedFd::from(file));
    if size == 0 {
        return Ok((Bytes::new(), fd));
    }
    let len = usize::try_from(size).map_err(|_| MemfdError::TooLarge { size, max })?;
    // SAFETY: a shared read-only mapping of a sealed file of `len` bytes; the result is
    // checked.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(MemfdError::Map(io::Error::last_os_error()));
    }
    let mapping = Mapping {
        ptr: ptr as *const u8,
        len,
    };
    Ok((Bytes::from_owner(mapping), fd))
}

/// Checks that `fd` is a memfd sealed against writing, growing and shrinking, of at most
/// `max` bytes: the file and its size.
fn checked(fd: OwnedFd, max: u64) -> Result<(std::fs::File, u64), MemfdError> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
    let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    if seals < 0 {
        return Err(MemfdError::NotSealed(
            io::Error::last_os_error().to_string(),
        ));
    }
    if seals & needed != needed {
        return Err(MemfdError::NotSealed(format!(
            "its seals {seals:#x} do not forbid writing, growing and shrinking"
        )));
    }
    let file = std::fs::File::from(fd);
    let size = file.metadata().map_err(MemfdError::Map)?.len();
    if size > max {
        return Err(MemfdError::TooLarge { size, max });
    }
    Ok((file, size))
}

/// Writes the start of `bytes` with `fd` attached; returns how much was written (the
/// rest goes as any other bytes).
pub fn send_with_fd(socket: BorrowedFd<'_>, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; its pointers are set below to live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` has room for one header with one descriptor (CMSG_SPACE above).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
    }
    loop {
        // SAFETY: `msg` points at live buffers for the call.
        let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reads into `buf`, keeping any descriptors that came with the bytes in `fds`, in order.
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space =
        unsafe { libc::CMSG_SPACE((FDS_PER_READ * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = [0u8; 128];
    debug_assert!(space <= control.len());
    // SAFETY: an all-zero msghdr is valid; its pointers are set below to live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: `msg` points at live buffers for the call.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: the kernel filled `msg`'s control buffer; each header is read within it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push_back(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more descriptors came than one frame may carry",
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_sealed_payload_crosses_a_socket_and_maps_back() {
        let (a, b) = UnixStream::pair().unwrap();
        let payload: Vec<u8> = (0..100_000u32).map(|n| n as u8).collect();
        let memfd = seal_payload(&payload).unwrap();
        assert_eq!(send_with_fd(a.as_fd(), b"frame", memfd.as_fd()).unwrap(), 5);
        drop(memfd);
        let mut buf = [0u8; 16];
        let mut fds = VecDeque::new();
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap(), 5);
        assert_eq!(&buf[..5], b"frame");
        assert_eq!(fds.len(), 1);
        let (bytes, _fd) = map_payload(fds.pop_front().unwrap(), 1 << 20).unwrap();
        assert_eq!(&bytes[..], &payload[..]);
    }

    #[test]
    fn only_a_sealed_memfd_within_the_limit_is_a_payload() {
        let (r, _w) = {
            let mut fds = [0; 2];
            // SAFETY: pipe fills two descriptors we then own.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            // SAFETY: as above.
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        assert!(matches!(map_payload(r, 100), Err(MemfdError::NotSealed(_))));
        let big = seal_payload(&[7; 1000]).unwrap();
        assert!(matches!(
            map_payload(big, 999),
            Err(MemfdError::TooLarge {
                size: 1000,
                max: 999
            })
        ));
        let empty = seal_payload(&[]).unwrap();
        assert!(map_payload(empty, 0).unwrap().0.is_empty());
        let big = seal_payload(&[7; 1000]).unwrap();
        assert!(matches!(
            receive_payload(big, 999),
            Err(MemfdError::TooLarge { .. })
        ));
    }

    /// A receiver reads a payload whole from the start, wherever the sender's writes
    /// left the open file's position (the two share it), and maps one past
    /// `READ_UP_TO`; both give the bytes sent. One read starts at a multiple of
    /// `READ_ALIGN`, wherever the allocator put its buffer.
    #[test]
    fn a_received_payload_is_read_whole_or_mapped_when_large() {
        for len in [0, 1, 4096 * 3 + 5, 1 << 20, READ_UP_TO as usize + 1] {
            let payload: Vec<u8> = (0..len).map(|n| (n % 251) as u8).collect();
            let memfd = seal_payload(&payload).unwrap();
            let bytes = receive_payload(memfd, u64::MAX).unwrap();
            assert_eq!(bytes.len(), len);
            assert!(bytes[..] == payload[..], "{len} bytes");
            if len > 0 {
                assert_eq!(bytes.as_ptr() as usize % READ_ALIGN, 0, "{len} bytes");
            }
        }
    }
}
