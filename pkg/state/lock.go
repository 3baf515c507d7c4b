package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// LockFileName is the file in a state directory whose lock marks the
// directory as in use by one driver process.
const LockFileName = "lock"

// ErrLocked is returned by LockDir when another live process holds the
// state directory.
var ErrLocked = errors.New("state directory is in use by another process")

// DirLock is the exclusive hold of one process on a state directory. The
// kernel releases it when the process ends, however it ends, so a crashed
// driver never leaves a directory locked.
type DirLock struct {
	f *os.File
}

// LockDir takes the exclusive lock of the state directory dir, creating the
// directory if needed, without waiting. While the returned lock is held no
// other process gets it: a second caller gets an error wrapping ErrLocked
// that names the directory and, when recorded, the holder's PID. The lock
// file records the PID of its holder.
func LockDir(dir string) (*DirLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, LockFileName)
	// Go opens files close-on-exec: a tool the driver runs (mkfs, a wipe)
	// never inherits the lock.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	if err := flock(f); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is locked by %s (lock file %s); only one driver may run on a state directory",
				ErrLocked, dir, holder(path), path)
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	if err := writePID(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("recording the PID in %s: %w", path, err)
	}
	return &DirLock{f: f}, nil
}

// flock takes an exclusive flock on f without blocking, retrying when a
// signal interrupts the call.
func flock(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// writePID replaces the content of the held lock file with this process's
// PID.
func writePID(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return err
}

// holder describes the process that holds the lock file at path, from the
// PID it recorded.
func holder(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "another process"
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return "another process (no PID recorded)"
	}
	return "process " + strconv.Itoa(pid)
}

// Unlock releases the directory. The lock file stays: removing it could
// let two processes lock two different files of the same name.
func (l *DirLock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	_ = l.f.Truncate(0) // no PID left behind for a later reader
	err := l.f.Close()
	l.f = nil
	return err
}
