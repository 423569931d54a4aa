//! What memlink objects exist on this machine, whether their creators live, and removing them.
//!
//! Inspection never maps an object: it reads the header with `pread` and asks the kernel about the
//! owner lock, so it is safe on garbage, truncated and foreign objects alike.

use rustix::io::Errno;

use super::header::ObjectKind;
use super::name::{FILE_PREFIX, file_name, object_name, validate_name};
use super::segment::read_header;
use crate::error::{Error, Result};
use crate::platform::shm::{self, FileInfo, ShmDir};

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
/// Never blocks and never follows a symlink: a file under a memlink name that is not a regular
/// file (a FIFO, symlink, socket, device, directory) is listed as [`ObjectState::Unknown`] without
/// being opened, and regular files are opened `O_NONBLOCK | O_NOFOLLOW`. Each object's owner is
/// in [`ObjectInfo::owner_uid`]: an object of another user under a name you use may be a squatter.
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
        .filter_map(|file| Some(inspect(&dir, object_name(file)?)?.0))
        .collect())
}

fn describe(name: &str, stat: &FileInfo, state: ObjectState) -> ObjectInfo {
    ObjectInfo {
        name: name.to_owned(),
        kind: None,
        size: stat.size,
        mode: stat.mode,
        owner_uid: stat.uid,
        creator_pid: None,
        state,
    }
}

/// Describes object `name`, with the identity of the very file described (what a removal must
/// still find under the name); `None` if it vanished meanwhile.
fn inspect(dir: &ShmDir, name: &str) -> Option<(ObjectInfo, FileInfo)> {
    let file = file_name(name);
    let seen = dir.stat(&file).ok()?;
    if !seen.is_regular() {
        // Not opened at all: opening a FIFO could block, a device could do anything.
        let why = format!("not a regular file: {}", seen.type_name());
        return Some((describe(name, &seen, ObjectState::Unknown(why)), seen));
    }
    let fd = match dir.open_existing(&file, false) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return None,
        Err(e) => {
            let why = format!("cannot open: {e}");
            return Some((describe(name, &seen, ObjectState::Unknown(why)), seen));
        }
    };
    // From here on describe what was opened, which may not be what `lstat` saw.
    let stat = match shm::fstat(&fd) {
        Ok(stat) => stat,
        Err(e) => {
            let why = format!("cannot inspect: {e}");
            return Some((describe(name, &seen, ObjectState::Unknown(why)), seen));
        }
    };
    if !stat.is_regular() {
        let why = format!("not a regular file: {}", stat.type_name());
        return Some((describe(name, &stat, ObjectState::Unknown(why)), stat));
    }
    let mut info = describe(name, &stat, ObjectState::Unknown(String::new()));
    match read_header(&fd) {
        Ok(header) => {
            info.kind = Some(header.kind);
            info.creator_pid = Some(header.creator_pid);
        }
        Err(problem) => {
            info.state = ObjectState::Unknown(format!("not a valid memlink object: {problem:?}"));
            return Some((info, stat));
        }
    }
    info.state = match shm::owner_lock_held(&fd) {
        Ok(true) => ObjectState::Live,
        Ok(false) => ObjectState::Stale,
        Err(e) => ObjectState::Unknown(format!("cannot probe its owner: {e}")),
    };
    Some((info, stat))
}

/// Removes object `name`. A live object (its creator is running) is refused unless `force`;
/// processes that have it open keep their mapping, but nobody can open it by name any more.
///
/// Only the file that was inspected is removed: if the name was given to another file between
/// the check and the removal, that file stays. A file under a memlink name that is not a regular
/// file (FIFO, symlink, ...) is junk and is removed without being opened or followed.
///
/// # Errors
/// [`Error::InUse`] for a live object without `force`, [`Error::NotFound`],
/// [`Error::PermissionDenied`] naming the owner if we may not remove it, [`Error::InvalidName`],
/// [`Error::Os`] if the name was given to another object during the removal (run it again).
pub fn remove(name: &str, force: bool) -> Result<()> {
    validate_name(name)?;
    let dir = open_dir()?;
    let (info, inspected) = inspect(&dir, name).ok_or_else(|| Error::NotFound {
        name: name.to_owned(),
    })?;
    if info.state == ObjectState::Live && !force {
        return Err(Error::InUse {
            name: name.to_owned(),
            pid: info.creator_pid.unwrap_or(0),
        });
    }
    remove_inspected(&dir, name, &inspected)
}

/// Unlinks `name` if it still names the file `inspected`.
fn remove_inspected(dir: &ShmDir, name: &str, inspected: &FileInfo) -> Result<()> {
    match dir.unlink_if_same(&file_name(name), inspected) {
        Ok(true) => Ok(()),
        Ok(false) => match dir.stat(&file_name(name)) {
            Err(Errno::NOENT) => Err(Error::NotFound {
                name: name.to_owned(),
            }),
            _ => Err(Error::os(
                "removing an object that was replaced while being checked (left alone; run again)",
                Errno::AGAIN,
            )),
        },
        Err(Errno::NOENT) => Err(Error::NotFound {
            name: name.to_owned(),
        }),
        Err(Errno::ACCESS | Errno::PERM) => Err(Error::PermissionDenied {
            name: name.to_owned(),
            owner_uid: Some(inspected.uid),
        }),
        Err(e) => Err(Error::os("removing an object", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::segment::{Segment, SegmentOptions};

    #[test]
    fn removal_leaves_an_object_that_replaced_the_inspected_one() {
        let name = format!("unit-rm-swap-{}", std::process::id());
        let dir = open_dir().unwrap();
        let first = SegmentOptions::new()
            .remove_on_drop(false)
            .create(&name, 8)
            .unwrap();
        drop(first);
        let (_, inspected) = inspect(&dir, &name).unwrap();
        // Someone replaces the object between the check and the removal.
        dir.unlink(&file_name(&name)).unwrap();
        let replacement = Segment::create(&name, 8).unwrap();
        let err = remove_inspected(&dir, &name, &inspected).unwrap_err();
        assert!(matches!(err, Error::Os { .. }), "{err:?}");
        assert!(Segment::open(&name).is_ok(), "the replacement was removed");
        // The replacement's own identity removes it.
        let (_, now) = inspect(&dir, &name).unwrap();
        remove_inspected(&dir, &name, &now).unwrap();
        assert!(matches!(
            remove_inspected(&dir, &name, &now),
            Err(Error::NotFound { .. })
        ));
        drop(replacement);
        assert_eq!(dir.stat(&file_name(&name)), Err(Errno::NOENT));
    }
}
