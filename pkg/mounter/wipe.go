package mounter

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Wipe cleans device according to policy, then probes it and fails with
// ErrNotClean when any signature is left:
//
//   - CleanupSignatures: wipefs --all
//   - CleanupDiscard: blkdiscard, then wipefs --all; fails on a device that
//     cannot discard
//   - CleanupZero: zeroes over the device (the BLKZEROOUT ioctl, which the
//     device or the kernel carries out; written from Go where the device
//     refuses it), in chunks of at most 64 MiB, synced at checkpoints
//   - CleanupShred: one pass of random data, then one of zeroes, the same way
//
// CleanupZero and CleanupShred are resumable: see WipeOptions.
// An unknown policy fails with ErrUnknownPolicy before anything is touched.
// Wipe then refuses a device in use: it opens the device exclusively, which
// fails while the device is mounted or held by device-mapper, md or another
// exclusive opener (a bind mount of the device node is no such use; callers
// look for those with Uses). It then clears the device's read-only flag,
// which a crash while a volume was published read-only can leave set. A
// cancelled ctx stops the running tool and leaves the device partly cleaned.
func (r *Real) Wipe(ctx context.Context, device string, policy CleanupPolicy, o WipeOptions) error {
	switch policy {
	case CleanupSignatures, CleanupDiscard, CleanupZero, CleanupShred:
	default:
		return fmt.Errorf("%w: %q", ErrUnknownPolicy, policy)
	}
	start := time.Now()
	klog.InfoS("Wiping", "device", device, "cleanupPolicy", policy)
	if err := r.wipe(ctx, device, policy, o); err != nil {
		klog.ErrorS(err, "Wipe failed", "device", device, "cleanupPolicy", policy, "duration", time.Since(start))
		return err
	}
	klog.InfoS("Wiped", "device", device, "cleanupPolicy", policy, "duration", time.Since(start))
	return nil
}

func (r *Real) wipe(ctx context.Context, device string, policy CleanupPolicy, o WipeOptions) error {
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
	case CleanupZero, CleanupShred:
		err = r.overwrite(ctx, device, policy, o)
	}
	if err != nil {
		return err
	}
	rereadPartitions(device)
	p, err := r.Probe(ctx, device)
	if err != nil {
		return err
	}
	if len(p.Signatures) > 0 {
		return fmt.Errorf("%w: %s carries %s after cleanup %s", ErrNotClean, device, strings.Join(p.Signatures, ","), policy)
	}
	return nil
}

// rereadPartitions asks the kernel to read the device's partition table
// again (BLKRRPART), so that partitions whose table the wipe erased leave
// the kernel too. A device whose partitions the kernel does not scan (a
// loop device without partscan) refuses, as one whose partitions are in
// use would: either way the partitions left are what the kernel says, and
// the free-disk checks look at them (Partitions).
func rereadPartitions(device string) {
	fd, err := unix.Open(device, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, unix.BLKRRPART, 0); err != nil && err != unix.EINVAL {
		klog.V(2).InfoS("Re-reading the partition table after a wipe failed", "device", device, "err", err)
	}
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
