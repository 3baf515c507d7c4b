package mounter

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// zeroChunk is the write size of the zeroing fallback.
const zeroChunk = 4 << 20

// Wipe cleans device according to policy, then probes it and fails with
// ErrNotClean when any signature is left:
//
//   - CleanupSignatures: wipefs --all
//   - CleanupDiscard: blkdiscard, then wipefs --all; fails on a device that
//     cannot discard
//   - CleanupZero: blkdiscard --zeroout; where that fails, zeroes are written
//     from Go in 4 MiB chunks, stopping when ctx is done, then synced
//   - CleanupShred: shred --iterations=1 --zero (random data, then zeroes)
//
// An unknown policy fails with ErrUnknownPolicy before anything is touched.
// Wipe then refuses a device in use: it opens the device exclusively, which
// fails while the device is mounted or held by device-mapper, md or another
// exclusive opener (a bind mount of the device node is no such use; callers
// look for those with Uses). It then clears the device's read-only flag,
// which a crash while a volume was published read-only can leave set. A
// cancelled ctx stops the running tool and leaves the device partly cleaned.
func (r *Real) Wipe(ctx context.Context, device string, policy CleanupPolicy) error {
	switch policy {
	case CleanupSignatures, CleanupDiscard, CleanupZero, CleanupShred:
	default:
		return fmt.Errorf("%w: %q", ErrUnknownPolicy, policy)
	}
	start := time.Now()
	klog.InfoS("Wiping", "device", device, "cleanupPolicy", policy)
	if err := r.wipe(ctx, device, policy); err != nil {
		klog.ErrorS(err, "Wipe failed", "device", device, "cleanupPolicy", policy, "duration", time.Since(start))
		return err
	}
	klog.InfoS("Wiped", "device", device, "cleanupPolicy", policy, "duration", time.Since(start))
	return nil
}

func (r *Real) wipe(ctx context.Context, device string, policy CleanupPolicy) error {
	if err := checkNotInUse(device); err != nil {
		return err
	}
	if err := r.SetDeviceReadOnly(device, false); err != nil {
		return err
	}
	var err error
	switch policy {
	case CleanupSignatures:
		_, err = r.run(ctx, "wipefs", "--all", device)
	case CleanupDiscard:
		if _, err = r.run(ctx, "blkdiscard", device); err == nil {
			_, err = r.run(ctx, "wipefs", "--all", device)
		}
	case CleanupZero:
		if _, zerr := r.run(ctx, "blkdiscard", "--zeroout", device); zerr != nil {
			if ctx.Err() != nil {
				return zerr
			}
			klog.InfoS("blkdiscard --zeroout failed, writing zeroes", "device", device, "err", zerr.Error())
			err = writeZeroes(ctx, device)
		}
	case CleanupShred:
		_, err = r.run(ctx, "shred", "--iterations=1", "--zero", device)
	}
	if err != nil {
		return err
	}
	p, err := r.Probe(ctx, device)
	if err != nil {
		return err
	}
	if len(p.Signatures) > 0 {
		return fmt.Errorf("%w: %s carries %s after cleanup %s", ErrNotClean, device, strings.Join(p.Signatures, ","), policy)
	}
	return nil
}

// CheckUnclaimed opens device exclusively and closes it again.
func (r *Real) CheckUnclaimed(device string) error { return checkNotInUse(device) }

// checkNotInUse opens device exclusively and closes it again; for a block
// device that fails with EBUSY while it is mounted or otherwise claimed.
func checkNotInUse(device string) error {
	fd, err := unix.Open(device, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s is in use (mounted or held): %w", device, &os.PathError{Op: "open exclusively", Path: device, Err: err})
	}
	return unix.Close(fd)
}

// writeZeroes overwrites the whole device with zeroes, checking ctx between
// 4 MiB chunks, and syncs it. The device is opened exclusively, so a mounted
// device is refused.
func writeZeroes(ctx context.Context, device string) error {
	f, err := os.OpenFile(device, os.O_WRONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("size of %s: %w", device, err)
	}
	buf := make([]byte, zeroChunk)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("zeroing %s stopped at byte %d: %w", device, off, err)
		}
		n := min(int64(len(buf)), size-off)
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return fmt.Errorf("zeroing %s: %w", device, err)
		}
		off += n
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", device, err)
	}
	return nil
}
