//! What memlink objects exist on this machine, whether their creators live, and removing them.
//!
//! Inspection never maps an object: it reads the header with `pread` and asks the kernel about the
//! owner lock, so it is safe on garbage, truncated and foreign objects alike.

use rustix::io::Errno;

use super::header::ObjectKind;
use super::name::{FILE_PREFIX, file_name, object_name, validate_name};
use super::segment::read_header;
use crate::error::{Error, Result};
use crate::platform::shm::{self, ShmDir};

/// Whether an object's creator is still running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectState {
    /// The creator holds the object open.
    Live,
    /// The creator is gone; the next `create` of the name reclaims it, `memlink rm` removes it.
    Stale,
    /// Could not be determined; the reason says why (e.g. permission denied, not a memlink object).
    Unknown(String),
}

/// One memlink object, as `memlink ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's name.
    pub name: String,
    /// What it is, if its header could be read and is valid.
    pub kind: Option<ObjectKind>,
    /// Size in bytes (header included).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// User id owning the object.
    pub owner_uid: u32,
    /// Creator's process id, from the header.
    pub creator_pid: Option<u32>,
    /// Whether the creator is alive.
    pub state: ObjectState,
}

fn open_dir() -> Result<ShmDir> {
    ShmDir::open().map_err(|e| Error::os("opening the shared memory directory", e))
}

/// Lists every memlink object on the machine, sorted by name.
///
/// # Errors
/// [`Error::Os`] if the shared memory directory cannot be read.
pub fn list() -> Result<Vec<ObjectInfo>> {
    let dir = open_dir()?;
    let files = dir
        .list(FILE_PREFIX)
        .map_err(|e| Error::os("listing the shared memory directory", e))?;
    Ok(files
        .iter()
        .filter_map(|file| Some(inspect(&dir, object_name(file)?)))
        .flatten()
        .collect())
}

/// Describes object `name`; `None` if it vanished meanwhile.
fn inspect(dir: &ShmDir, name: &str) -> Option<ObjectInfo> {
    let file = file_name(name);
    let stat = dir.stat(&file).ok()?;
    let mut info = ObjectInfo {
        name: name.to_owned(),
        kind: None,
        size: stat.size,
        mode: stat.mode,
        owner_uid: stat.uid,
        creator_pid: None,
        state: ObjectState::Unknown(String::new()),
    };
    let fd = match dir.open_existing(&file, false) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return None,
        Err(e) => {
            info.state = ObjectState::Unknown(format!("cannot open: {e}"));
            return Some(info);
        }
    };
    match read_header(&fd) {
        Ok(header) => {
            info.kind = Some(header.kind);
            info.creator_pid = Some(header.creator_pid);
        }
        Err(problem) => {
            info.state = ObjectState::Unknown(format!("not a valid memlink object: {problem:?}"));
            return Some(info);
        }
    }
    info.state = match shm::owner_lock_held(&fd) {
        Ok(true) => ObjectState::Live,
        Ok(false) => ObjectState::Stale,
        Err(e) => ObjectState::Unknown(format!("cannot probe its owner: {e}")),
    };
    Some(info)
}

/// Removes object `name`. A live object (its creator is running) is refused unless `force`;
/// processes that have it open keep their mapping, but nobody can open it by name any more.
///
/// # Errors
/// [`Error::InUse`] for a live object without `force`, [`Error::NotFound`],
/// [`Error::PermissionDenied`], [`Error::InvalidName`].
pub fn remove(name: &str, force: bool) -> Result<()> {
    validate_name(name)?;
    let dir = open_dir()?;
    let file = file_name(name);
    let info = inspect(&dir, name).ok_or_else(|| Error::NotFound {
        name: name.to_owned(),
    })?;
    if info.state == ObjectState::Live && !force {
        return Err(Error::InUse {
            name: name.to_owned(),
            pid: info.creator_pid.unwrap_or(0),
        });
    }
    match dir.unlink(&file) {
        Ok(()) => Ok(()),
        Err(Errno::NOENT) => Err(Error::NotFound {
            name: name.to_owned(),
        }),
        Err(Errno::ACCESS | Errno::PERM) => Err(Error::PermissionDenied {
            name: name.to_owned(),
        }),
        Err(e) => Err(Error::os("removing an object", e)),
    }
}
