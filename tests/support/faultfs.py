#!/usr/bin/python3
"""A passthrough FUSE file system that injects storage faults, for the relay's tests.

    faultfs.py BACKING MOUNTPOINT CONTROL

Every operation on MOUNTPOINT is done on BACKING. Before each fsync or fdatasync of a file or
a directory it reads, in the directory CONTROL:
  - fsync_delay_ms: sleep this long first (a stalled disk);
  - fsync_eio: if it holds a positive number, fail this many syncs with EIO (a failing disk),
    counting down.
Missing or empty files mean no fault. Runs in the foreground until unmounted.
"""

import errno
import os
import sys
import threading
import time

from fusepy import FUSE, FuseOSError, Operations

LOCK = threading.Lock()


class FaultFS(Operations):
    def __init__(self, root, control):
        self.root = root
        self.control = control

    def _path(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _read_control(self, name):
        try:
            with open(os.path.join(self.control, name)) as f:
                text = f.read().strip()
            return int(text) if text else 0
        except (FileNotFoundError, ValueError):
            return 0

    def _sync_fault(self):
        delay = self._read_control("fsync_delay_ms")
        if delay > 0:
            time.sleep(delay / 1000.0)
        with LOCK:
            left = self._read_control("fsync_eio")
            if left > 0:
                with open(os.path.join(self.control, "fsync_eio"), "w") as f:
                    f.write(str(left - 1))
                raise FuseOSError(errno.EIO)

    # Files and directories, passed through.
    def access(self, path, mode):
        if not os.access(self._path(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        return os.chmod(self._path(path), mode)

    def chown(self, path, uid, gid):
        return os.chown(self._path(path), uid, gid)

    def getattr(self, path, fh=None):
        st = os.lstat(self._path(path))
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink",
                "st_size", "st_uid")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def readlink(self, path):
        return os.readlink(self._path(path))

    def mknod(self, path, mode, dev):
        return os.mknod(self._path(path), mode, dev)

    def rmdir(self, path):
        return os.rmdir(self._path(path))

    def mkdir(self, path, mode):
        return os.mkdir(self._path(path), mode)

    def statfs(self, path):
        st = os.statvfs(self._path(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                "f_files", "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    def unlink(self, path):
        return os.unlink(self._path(path))

    def symlink(self, name, target):
        return os.symlink(target, self._path(name))

    def rename(self, old, new):
        return os.rename(self._path(old), self._path(new))

    def link(self, target, name):
        return os.link(self._path(name), self._path(target))

    def utimens(self, path, times=None):
        return os.utime(self._path(path), times)

    def open(self, path, flags):
        return os.open(self._path(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._path(path), os.O_WRONLY | os.O_CREAT, mode)

    def read(self, path, length, offset, fh):
        return os.pread(fh, length, offset)

    def write(self, path, buf, offset, fh):
        return os.pwrite(fh, buf, offset)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            with open(self._path(path), "r+") as f:
                f.truncate(length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return os.close(fh)

    def fsync(self, path, datasync, fh):
        self._sync_fault()
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def fsyncdir(self, path, datasync, fh):
        self._sync_fault()
        fd = os.open(self._path(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0


def main():
    backing, mountpoint, control = sys.argv[1:4]
    FUSE(FaultFS(backing, control), mountpoint, foreground=True, nothreads=False,
         allow_other=True, default_permissions=True)


if __name__ == "__main__":
    main()
