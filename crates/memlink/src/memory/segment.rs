//! Named shared memory segments.
//!
//! A [`Segment`] is a named object in the shared memory directory: a validated header
//! ([`super::header`]) followed by a payload of caller-chosen size. Creating one is exclusive and
//! atomic (the object is built unnamed, then published), opening one validates it, and a segment
//! whose creator died is *stale*: `create` reclaims it instead of failing forever.
//!
//! The payload is shared with other processes that may write it at any time, so it is accessed by
//! copying ([`Segment::read`], [`Segment::write`]) or through atomics, never through slices.
//!
//! Anyone who may create files in the shared memory directory can put a file under any free
//! memlink name, so an existing object is used only if it is a regular file (opened without
//! following symlinks or blocking on FIFOs), owned by our effective uid or a uid the caller trusts
//! ([`SegmentOptions::trust_owner_uid`]), with a mode no wider than the permissions asked for.
//! Root gets no exemption: a squatter's object is exactly what root must not use.
//!
//! Uses the platform layer only; knows nothing about sync primitives or messaging.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::io::Errno;

use super::header::{HEADER_LEN, HeaderProblem, ObjectHeader, ObjectKind};
use super::name::{file_name, validate_name};
use crate::error::{Error, Result};
use crate::platform::mapping::Mapping;
use crate::platform::process;
use crate::platform::shm::{self, FileInfo, ShmDir};

/// Who may open an object. Applied exactly when creating (the umask does not narrow it); when
/// opening an existing object, the widest mode accepted (see [`SegmentOptions::permissions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Permissions {
    /// Read-write for the creating user only (`0600`). The default.
    #[default]
    OwnerOnly,
    /// Read-write for the creating user and its group (`0660`).
    Group,
    /// Read-write for every user on the machine (`0666`).
    Everyone,
}

impl Permissions {
    /// The file mode these permissions map to.
    pub fn mode(self) -> u32 {
        match self {
            Permissions::OwnerOnly => 0o600,
            Permissions::Group => 0o660,
            Permissions::Everyone => 0o666,
        }
    }
}

/// How to create or open a segment. `SegmentOptions::new()` gives owner-only permissions and a
/// creator that removes the name when its last handle drops.
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    permissions: Permissions,
    remove_on_drop: bool,
    trusted_owners: Vec<u32>,
    pub(crate) kind: ObjectKind,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            permissions: Permissions::OwnerOnly,
            remove_on_drop: true,
            trusted_owners: Vec::new(),
            kind: ObjectKind::Segment,
        }
    }
}

impl SegmentOptions {
    /// Default options: owner-only, removed when the creator drops it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Who may open the object. For `create`, the mode the new object gets; for opening an
    /// existing one, the widest mode accepted: with the default [`Permissions::OwnerOnly`] an
    /// object that group or other users may write is refused ([`Error::PermissionDenied`]), as it
    /// may hold anything those users wrote.
    pub fn permissions(mut self, permissions: Permissions) -> Self {
        self.permissions = permissions;
        self
    }

    /// Whether the creator removes the name when its last handle drops (default `true`). With
    /// `false` the object outlives its creator — readable by `open` — until someone calls `create`
    /// on the name (which reclaims it) or removes it with `memlink rm`.
    pub fn remove_on_drop(mut self, remove: bool) -> Self {
        self.remove_on_drop = remove;
        self
    }

    /// Also accepts existing objects owned by user `uid` (by default only objects owned by our
    /// effective uid are opened, root included). For objects one user shares with another on
    /// purpose: the opener names the user it expects, and usually asks for the permissions the
    /// object was created with (e.g. [`Permissions::Everyone`]). May be called several times.
    /// Trusting a user does not let `create` reclaim that user's stale objects.
    pub fn trust_owner_uid(mut self, uid: u32) -> Self {
        if !self.trusted_owners.contains(&uid) {
            self.trusted_owners.push(uid);
        }
        self
    }

    pub(crate) fn kind(mut self, kind: ObjectKind) -> Self {
        self.kind = kind;
        self
    }

    /// Refuses an existing object that is not a regular file or whose owner we do not trust.
    fn check_identity(&self, name: &str, info: &FileInfo) -> Result<()> {
        if !info.is_regular() {
            return Err(not_regular(name, info));
        }
        if info.uid != process::effective_uid() && !self.trusted_owners.contains(&info.uid) {
            return Err(denied(name, info.uid));
        }
        Ok(())
    }

    /// Refuses an object whose mode is wider than the permissions we asked for, or has setuid,
    /// setgid, sticky or execute bits (no memlink object has them).
    fn check_mode(&self, name: &str, info: &FileInfo) -> Result<()> {
        if info.mode & !self.permissions.mode() != 0 {
            return Err(denied(name, info.uid));
        }
        Ok(())
    }

    /// Creates segment `name` with `size` payload bytes, all zero.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] if a live creator of ours (or of a trusted user) has the name; a
    /// stale object of ours is reclaimed.
    /// [`Error::PermissionDenied`] naming the owner (`owner_uid`) if another user's object has
    /// the name, live or stale: it is neither used nor removed.
    /// [`Error::Incompatible`] if something other than a regular file (a FIFO, a symlink, ...)
    /// has the name; remove it with `memlink rm`.
    /// [`Error::InvalidName`]; [`Error::Os`] if the system is out of shared memory.
    pub fn create(&self, name: &str, size: usize) -> Result<Segment> {
        self.create_initialized(name, size, |_| Ok(()))
    }

    /// Opens the existing segment `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    /// [`Error::PermissionDenied`] naming the owner (`owner_uid`) if the object is owned by
    /// another user not trusted with [`SegmentOptions::trust_owner_uid`], if its mode is wider
    /// than [`SegmentOptions::permissions`] (or has setuid/setgid/sticky/execute bits), or if the
    /// system refuses us access.
    /// [`Error::Incompatible`] if it is not a regular file (FIFO, symlink, ...; never followed or
    /// waited on) or not a memlink segment; [`Error::Corrupted`] if its header is inconsistent.
    pub fn open(&self, name: &str) -> Result<Segment> {
        validate_name(name)?;
        let dir =
            ShmDir::open().map_err(|e| Error::os("opening the shared memory directory", e))?;
        open_validated(&dir, name, self)
    }

    /// Opens `name` if it exists with a live creator, or else creates it; whichever happened is
    /// reported by [`Segment::is_creator`]. Opening an existing segment whose payload is smaller
    /// than `size` fails with [`Error::Incompatible`].
    ///
    /// # Errors
    /// As [`SegmentOptions::create`] and [`SegmentOptions::open`].
    pub fn create_or_open(&self, name: &str, size: usize) -> Result<Segment> {
        self.create_or_open_initialized(name, size, |_| Ok(()))
    }

    pub(crate) fn create_or_open_initialized(
        &self,
        name: &str,
        size: usize,
        init: impl Fn(&Segment) -> Result<()>,
    ) -> Result<Segment> {
        // Each round either creates, opens, or observes that the other side just changed state
        // (removed or published); a handful of rounds settles any realistic race.
        let mut last = None;
        for _ in 0..16 {
            match self.create_initialized(name, size, &init) {
                Err(Error::AlreadyExists { .. }) => {}
                other => return other,
            }
            match self.open(name) {
                Ok(segment) if segment.len() < size => {
                    return Err(Error::incompatible(
                        name,
                        format!(
                            "it has {} payload bytes but {size} were asked for",
                            segment.len()
                        ),
                    ));
                }
                Err(e @ Error::NotFound { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or(Error::NotFound {
            name: name.to_owned(),
        }))
    }

    /// Creates the object, runs `init` on it while it is still unnamed (invisible to everyone),
    /// then publishes it under `name`.
    pub(crate) fn create_initialized(
        &self,
        name: &str,
        size: usize,
        init: impl FnOnce(&Segment) -> Result<()>,
    ) -> Result<Segment> {
        validate_name(name)?;
        let file = file_name(name);
        let total = size
            .checked_add(HEADER_LEN)
            .filter(|&t| t <= isize::MAX as usize)
            .ok_or_else(|| {
                Error::incompatible(name, format!("a {size}-byte segment cannot be mapped"))
            })?;
        let denied = |e: Errno, op| match e {
            Errno::ACCESS | Errno::PERM => Error::PermissionDenied {
                name: name.to_owned(),
                owner_uid: None,
            },
            e => Error::os(op, e),
        };

        let dir =
            ShmDir::open().map_err(|e| Error::os("opening the shared memory directory", e))?;
        let fd = dir
            .create_unnamed(self.permissions.mode())
            .map_err(|e| denied(e, "creating a shared memory object"))?;
        shm::reserve(&fd, total as u64)
            .map_err(|e| Error::os("reserving shared memory (is /dev/shm full?)", e))?;
        let map =
            Mapping::map_shared(&fd, total).map_err(|e| Error::os("mapping shared memory", e))?;
        let header = ObjectHeader {
            kind: self.kind,
            total_size: total as u64,
            creator_pid: process::current_pid(),
            creator_uid: process::effective_uid(),
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        };
        if !map.copy_in(0, &header.encode()) {
            return Err(Error::os("writing the object header", Errno::INVAL));
        }
        // Nobody else can have this unnamed file open, so the lock is ours; holding it until the
        // descriptor closes is what tells everyone else we are alive.
        if !shm::try_lock_owner(&fd).map_err(|e| Error::os("locking a new object", e))? {
            return Err(Error::os("locking a new object", Errno::AGAIN));
        }
        let info = shm::fstat(&fd).map_err(|e| Error::os("inspecting a new object", e))?;
        let mut segment = Segment::from_parts(name, fd, map, header, info, false);
        init(&segment)?;

        for _ in 0..16 {
            match dir.publish(&segment.inner.file, &file) {
                Ok(()) => {
                    let inner = Arc::get_mut(&mut segment.inner)
                        .ok_or(Error::os("publishing", Errno::BUSY))?;
                    inner.remove_on_drop = self.remove_on_drop;
                    inner.is_creator = true;
                    return Ok(segment);
                }
                Err(Errno::EXIST) => match reclaim_if_stale(&dir, name, &file, self)? {
                    Existing::Gone => {}
                    Existing::Live { pid } => {
                        return Err(Error::AlreadyExists {
                            name: name.to_owned(),
                            pid,
                        });
                    }
                },
                Err(e) => return Err(denied(e, "publishing a shared memory object")),
            }
        }
        Err(Error::AlreadyExists {
            name: name.to_owned(),
            pid: 0,
        })
    }
}

enum Existing {
    /// The name is free now (it was stale and we removed it, or someone else did).
    Gone,
    Live {
        pid: u32,
    },
}

/// Looks at the object currently named `file`. If its creator is dead and it is ours, removes the
/// name. Another user's object (trusted or not) is never removed, and one we do not trust is not
/// even opened beyond the type and owner check.
fn reclaim_if_stale(
    dir: &ShmDir,
    name: &str,
    file: &str,
    options: &SegmentOptions,
) -> Result<Existing> {
    let Some((old, info)) = open_checked(dir, name, file, options)? else {
        return Ok(Existing::Gone);
    };
    // Taking the owner lock on the old object both proves its creator is gone and makes us the
    // only process allowed to unlink it: another reclaimer racing with us fails here.
    if !shm::try_lock_owner(&old).map_err(|e| Error::os("probing an object's owner", e))? {
        return Ok(Existing::Live {
            pid: read_header(&old).map_or(0, |h| h.creator_pid),
        });
    }
    if info.uid != process::effective_uid() {
        // A trusted user's stale object: theirs to remove, not ours.
        return Err(denied(name, info.uid));
    }
    match dir.unlink_if_same(file, &info) {
        Ok(_) => Ok(Existing::Gone),
        Err(Errno::ACCESS | Errno::PERM) => Err(denied(name, info.uid)),
        Err(e) => Err(Error::os("removing a stale object", e)),
    }
}

fn denied(name: &str, owner_uid: u32) -> Error {
    Error::PermissionDenied {
        name: name.to_owned(),
        owner_uid: Some(owner_uid),
    }
}

fn not_regular(name: &str, info: &FileInfo) -> Error {
    Error::incompatible(
        name,
        format!(
            "it is a {}, not a regular file, so no memlink process made it (it was not opened); \
             remove it with `memlink rm {name}`",
            info.type_name()
        ),
    )
}

/// Opens the object named `file` read-write without following a symlink or blocking on a FIFO,
/// refusing it unless it is a regular file owned by us or a trusted user: checked with `lstat`
/// before opening (so a FIFO or device is never opened) and again with `fstat` on what was opened.
/// `Ok(None)` if there is no such object. The mode is not checked here.
fn open_checked(
    dir: &ShmDir,
    name: &str,
    file: &str,
    options: &SegmentOptions,
) -> Result<Option<(OwnedFd, FileInfo)>> {
    let seen = match dir.stat(file) {
        Ok(info) => info,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(Error::os("inspecting a shared memory object", e)),
    };
    options.check_identity(name, &seen)?;
    let fd = match dir.open_existing(file, true) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::ACCESS | Errno::PERM) => return Err(denied(name, seen.uid)),
        // Replaced by a symlink since the `lstat`; O_NOFOLLOW refused it.
        Err(Errno::LOOP) => {
            return Err(Error::incompatible(
                name,
                format!("it is a symlink (not followed); remove it with `memlink rm {name}`"),
            ));
        }
        Err(e) => return Err(Error::os("opening a shared memory object", e)),
    };
    let info = shm::fstat(&fd).map_err(|e| Error::os("inspecting a shared memory object", e))?;
    options.check_identity(name, &info)?;
    Ok(Some((fd, info)))
}

/// Reads and decodes the header with `pread`, without mapping anything.
pub(crate) fn read_header(fd: &OwnedFd) -> std::result::Result<ObjectHeader, HeaderProblem> {
    let mut bytes = [0u8; HEADER_LEN];
    match shm::read_at(fd, &mut bytes, 0) {
        Ok(HEADER_LEN) => ObjectHeader::decode(&bytes),
        Ok(n) => Err(HeaderProblem::Foreign(format!(
            "only {n} bytes long, too small for a memlink header"
        ))),
        Err(e) => Err(HeaderProblem::Foreign(format!("unreadable: {e}"))),
    }
}

fn open_validated(dir: &ShmDir, name: &str, options: &SegmentOptions) -> Result<Segment> {
    let expected = options.kind;
    let (fd, info) =
        open_checked(dir, name, &file_name(name), options)?.ok_or_else(|| Error::NotFound {
            name: name.to_owned(),
        })?;
    options.check_mode(name, &info)?;
    // Size comes from the kernel, not from the (untrusted) header: we map exactly what exists, so
    // a header that lies about the size cannot make us touch pages past the end of the file.
    let header = read_header(&fd).map_err(|p| match p {
        HeaderProblem::Foreign(r) => Error::incompatible(name, r),
        HeaderProblem::Invalid(r) => Error::corrupted(name, r),
    })?;
    if header.total_size != info.size {
        return Err(Error::corrupted(
            name,
            format!(
                "its header says {} bytes but the object has {}",
                header.total_size, info.size
            ),
        ));
    }
    if header.kind != expected {
        return Err(Error::incompatible(
            name,
            format!("its kind is {}, expected {expected}", header.kind),
        ));
    }
    let len = usize::try_from(info.size).map_err(|_| Error::corrupted(name, "too large to map"))?;
    let map = Mapping::map_shared(&fd, len).map_err(|e| Error::os("mapping shared memory", e))?;
    Ok(Segment::from_parts(name, fd, map, header, info, false))
}

/// A named region of shared memory. Cheap to clone; the name is removed (if this process created
/// it with `remove_on_drop`) when the last clone drops.
///
/// # Examples
/// ```
/// # fn main() -> memlink::Result<()> {
/// # let name = format!("doc-segment-{}", std::process::id());
/// let writer = memlink::Segment::create(&name, 4096)?;
/// writer.write(0, b"hello")?;
///
/// let reader = memlink::Segment::open(&name)?; // usually in another process
/// let mut buf = [0u8; 5];
/// reader.read(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Segment {
    inner: Arc<SegmentInner>,
}

#[derive(Debug)]
struct SegmentInner {
    name: String,
    map: Mapping,
    header: ObjectHeader,
    info: FileInfo,
    is_creator: bool,
    remove_on_drop: bool,
    // Declared last so it closes after the mapping is gone; closing it drops our owner lock.
    file: OwnedFd,
}

impl Drop for SegmentInner {
    fn drop(&mut self) {
        if self.is_creator && self.remove_on_drop {
            // Only remove the name if it is still ours: `memlink rm --force` may have removed it
            // and someone else may have created a new object under it since.
            if let Ok(dir) = ShmDir::open() {
                let _ = dir.unlink_if_same(&file_name(&self.name), &self.info);
            }
        }
    }
}

impl Segment {
    /// Creates segment `name` with `size` zeroed payload bytes and default options.
    /// See [`SegmentOptions::create`].
    ///
    /// # Errors
    /// As [`SegmentOptions::create`].
    #[doc(alias = "shm_open")]
    pub fn create(name: &str, size: usize) -> Result<Segment> {
        SegmentOptions::new().create(name, size)
    }

    /// Opens existing segment `name`. See [`SegmentOptions::open`].
    ///
    /// # Errors
    /// As [`SegmentOptions::open`].
    pub fn open(name: &str) -> Result<Segment> {
        SegmentOptions::new().open(name)
    }

    /// Opens `name` or creates it. See [`SegmentOptions::create_or_open`].
    ///
    /// # Errors
    /// As [`SegmentOptions::create_or_open`].
    pub fn create_or_open(name: &str, size: usize) -> Result<Segment> {
        SegmentOptions::new().create_or_open(name, size)
    }

    /// Options for creating or opening with non-default settings.
    pub fn options() -> SegmentOptions {
        SegmentOptions::new()
    }

    fn from_parts(
        name: &str,
        file: OwnedFd,
        map: Mapping,
        header: ObjectHeader,
        info: FileInfo,
        is_creator: bool,
    ) -> Self {
        Segment {
            inner: Arc::new(SegmentInner {
                name: name.to_owned(),
                map,
                header,
                info,
                is_creator,
                remove_on_drop: false,
                file,
            }),
        }
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Payload size in bytes.
    pub fn len(&self) -> usize {
        self.inner.map.len() - HEADER_LEN
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this handle created the segment (as opposed to opening it).
    pub fn is_creator(&self) -> bool {
        self.inner.is_creator
    }

    /// Process id of the segment's creator, as recorded in its header.
    pub fn creator_pid(&self) -> u32 {
        self.inner.header.creator_pid
    }

    /// What the object is.
    pub fn kind(&self) -> ObjectKind {
        self.inner.header.kind
    }

    fn out_of_bounds(&self, offset: usize, len: usize) -> Error {
        Error::OutOfBounds {
            offset,
            len,
            size: self.len(),
        }
    }

    fn absolute(&self, offset: usize, len: usize) -> Result<usize> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(HEADER_LEN + offset),
            _ => Err(self.out_of_bounds(offset, len)),
        }
    }

    /// Copies `buf.len()` payload bytes starting at `offset` into `buf`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the range is not inside the payload.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        let at = self.absolute(offset, buf.len())?;
        if self.inner.map.read_atomic(at, buf) {
            Ok(())
        } else {
            Err(self.out_of_bounds(offset, buf.len()))
        }
    }

    /// Copies `data` into the payload at `offset`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the range is not inside the payload.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        let at = self.absolute(offset, data.len())?;
        if self.inner.map.write_atomic(at, data) {
            Ok(())
        } else {
            Err(self.out_of_bounds(offset, data.len()))
        }
    }

    /// The 32-bit atomic at payload `offset` (must be 4-byte aligned).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`].
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32> {
        let at = self.absolute(offset, 4)?;
        self.inner
            .map
            .atomic_u32(at)
            .ok_or(Error::Misaligned { offset, align: 4 })
    }

    /// The 64-bit atomic at payload `offset` (must be 8-byte aligned).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`].
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64> {
        let at = self.absolute(offset, 8)?;
        self.inner
            .map
            .atomic_u64(at)
            .ok_or(Error::Misaligned { offset, align: 8 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn unique(tag: &str) -> String {
        use std::sync::atomic::AtomicUsize;
        static N: AtomicUsize = AtomicUsize::new(0);
        format!(
            "unit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    #[test]
    fn bounds_and_alignment_are_checked() {
        let s = Segment::create(&unique("bounds"), 64).unwrap();
        assert_eq!(s.len(), 64);
        assert!(s.write(60, &[1, 2, 3, 4]).is_ok());
        assert!(matches!(
            s.write(61, &[1, 2, 3, 4]),
            Err(Error::OutOfBounds {
                offset: 61,
                len: 4,
                size: 64
            })
        ));
        assert!(matches!(
            s.read(usize::MAX, &mut [0u8; 2]),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            s.atomic_u32(2),
            Err(Error::Misaligned {
                offset: 2,
                align: 4
            })
        ));
        assert!(matches!(s.atomic_u64(60), Err(Error::OutOfBounds { .. })));
        s.atomic_u64(56).unwrap().store(7, Ordering::Relaxed);
        let mut b = [0u8; 8];
        s.read(56, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 7);
    }

    #[test]
    fn create_is_exclusive_while_creator_lives_and_name_goes_with_it() {
        let name = unique("excl");
        let first = Segment::create(&name, 8).unwrap();
        assert!(first.is_creator());
        match Segment::create(&name, 8) {
            Err(Error::AlreadyExists { pid, .. }) => assert_eq!(pid, std::process::id()),
            other => panic!("second create succeeded: {other:?}"),
        }
        let opened = Segment::create_or_open(&name, 8).unwrap();
        assert!(!opened.is_creator());
        assert!(matches!(
            Segment::create_or_open(&name, 9),
            Err(Error::Incompatible { .. })
        ));
        drop(opened);
        drop(first);
        assert!(matches!(Segment::open(&name), Err(Error::NotFound { .. })));
    }

    #[test]
    fn kind_mismatch_is_incompatible() {
        let name = unique("kind");
        let _s = Segment::create(&name, 8).unwrap();
        let err = SegmentOptions::new()
            .kind(ObjectKind::Event)
            .open(&name)
            .unwrap_err();
        assert!(
            matches!(err, Error::Incompatible { ref reason, .. } if reason.contains("kind is segment, expected event"))
        );
    }
}
