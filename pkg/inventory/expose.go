package inventory

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// ErrNoRaw: the volume's disk cannot be handed out as a raw block device.
var ErrNoRaw = fmt.Errorf("%w: the disk cannot be used as a raw block device", ErrForeign)

// ExposeRaw readies the volume's disk to be handed to a pod as a raw block
// device and returns the volume and its device path. It is the one owner of
// that act. The first time, the device must be the volume's disk, unused
// and blank, and a disk that may hold an earlier volume's bytes is zeroed
// first (see zeroForRaw); then RawExposed is recorded, before the caller
// binds the device. From then on the disk holds what the pod wrote, and
// only the identity is checked. A disk whose tail holds the driver's
// identity pin is never handed out raw.
func (inv *Inventory) ExposeRaw(ctx context.Context, volumeID string) (Volume, string, error) {
	v, path, err := inv.Acquire(ctx, volumeID)
	if err != nil {
		return Volume{}, "", err
	}
	if v.Disk.ReservedTailBytes > 0 {
		return Volume{}, "", fmt.Errorf("%w: volume %s is on a disk without a serial whose tail holds its identity pin", ErrNoRaw, volumeID)
	}
	if v.RawExposed {
		return v, path, nil
	}
	if v.Format != state.FormatNone {
		return Volume{}, "", fmt.Errorf("%w: volume %s has a filesystem of the driver's (mkfs %s); it is not handed out raw", ErrForeign, volumeID, v.Format)
	}
	if v.Disk.Residual {
		if err := inv.zeroForRaw(ctx, v, path); err != nil {
			return Volume{}, "", err
		}
	}
	unlock := inv.lockCheck(v.Disk.ID)
	defer unlock()
	if err := inv.checkBlankHeld(ctx, v.Disk.ID, path); err != nil {
		return Volume{}, "", fmt.Errorf("volume %s cannot be handed out raw: %w", volumeID, err)
	}
	if err := inv.updateVolume(volumeID, func(d *state.Disk) { d.Volume.RawExposed = true }); err != nil {
		return Volume{}, "", err
	}
	v.RawExposed, v.Disk.Residual = true, false
	return v, path, nil
}

// zeroJob is the zeroing of one disk before a raw hand-out.
type zeroJob struct {
	done    chan struct{}
	err     error
	started time.Time
}

// maxZeroWait bounds how long one call waits for a zeroing; the zeroing
// itself runs on (a multi-TiB HDD takes hours) and the retries find it.
const maxZeroWait = 30 * time.Second

// zeroForRaw zeroes the volume's disk, which may hold an earlier volume's
// bytes, in the background: no call's deadline cuts it short, and a retry
// finds the same zeroing rather than starting over. It waits for it up to
// maxZeroWait or the call's deadline; a zeroing still running is ErrBusy
// with how long it has run. Done, the disk is no longer residual.
func (inv *Inventory) zeroForRaw(ctx context.Context, v Volume, path string) error {
	inv.mu.Lock()
	job := inv.zeroing[v.Disk.ID]
	if job == nil && inv.stopped {
		inv.mu.Unlock()
		return ErrNotReady
	}
	if job == nil {
		job = &zeroJob{done: make(chan struct{}), started: time.Now()}
		inv.zeroing[v.Disk.ID] = job
		inv.cleaner.Add(1)
		go func() {
			defer inv.cleaner.Done()
			job.err = inv.zero(v, path)
			close(job.done)
		}()
	}
	inv.mu.Unlock()
	wait := maxZeroWait
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)-100*time.Millisecond)
	}
	timer := time.NewTimer(max(wait, 0))
	defer timer.Stop()
	select {
	case <-job.done:
	case <-ctx.Done():
	case <-timer.C:
	}
	select {
	case <-job.done:
		inv.mu.Lock()
		if inv.zeroing[v.Disk.ID] == job {
			delete(inv.zeroing, v.Disk.ID)
		}
		inv.mu.Unlock()
		if job.err != nil {
			return fmt.Errorf("zeroing %s before handing it out raw: %w", path, job.err)
		}
		return nil
	default:
		return fmt.Errorf("%w: zeroing disk %s (%s) before handing it out raw, for %s so far", ErrBusy, v.Disk.ID, path, time.Since(job.started).Round(time.Second))
	}
}

// zero checks and zeroes the disk of v and records it clean.
func (inv *Inventory) zero(v Volume, path string) error {
	unlock := inv.lockCheck(v.Disk.ID)
	defer unlock()
	ctx := inv.ctx
	if err := inv.checkBlankHeld(ctx, v.Disk.ID, path); err != nil {
		return err
	}
	start := time.Now()
	klog.InfoS("Zeroing a disk that may hold an earlier volume's data before handing it out raw", "volumeID", v.ID, "disk", v.Disk.ID, "device", path)
	if err := inv.wipeOwn(ctx, v.Disk.ID, path, &v.Volume, mounter.CleanupZero, mounter.WipeOptions{BytesPerSecond: inv.cfg.CleanupBytesPerSecond}); err != nil {
		return err
	}
	if err := inv.updateVolume(v.ID, func(d *state.Disk) { d.Residual = false }); err != nil {
		return err
	}
	klog.InfoS("Disk zeroed", "volumeID", v.ID, "disk", v.Disk.ID, "device", path, "duration", time.Since(start))
	return nil
}

// PrepareFilesystem makes sure the volume's disk at path carries the
// filesystem the driver makes for it, and is the one owner of mkfs and of
// the wipe before it. It runs mkfs on a blank disk of a volume never
// formatted, and again over the partial filesystem of a mkfs of its own that
// was cut short; each time it first checks that the device is still the
// volume's disk and unused, and records the start and the end of mkfs.
// A complete filesystem is never made again: a volume recorded as formatted
// whose disk now probes blank is ErrDataGone, and the volume is marked
// abnormal. Any other content is ErrForeign and is not touched.
func (inv *Inventory) PrepareFilesystem(ctx context.Context, v Volume, path, fsType string, mkfsArgs []string) error {
	p, err := inv.cfg.Mounter.Probe(ctx, path)
	if err != nil {
		return err
	}
	switch {
	case v.RawExposed:
		return fmt.Errorf("%w: volume %s was handed out as a raw block device; the driver does not format it", ErrForeign, v.ID)
	case v.Format == state.FormatStarted && !partialOwn(&v.Volume, p):
		return fmt.Errorf("%w: the driver's mkfs for volume %s was cut short, and %s now carries %s with UUID %q, not what that mkfs writes; it is not wiped",
			ErrForeign, v.ID, path, strings.Join(p.Signatures, ","), p.UUID)
	case v.Format == state.FormatStarted:
		// The driver's own mkfs for this volume was cut short, and the
		// disk was never mounted since: what is on it is a partial
		// filesystem of the driver's, made again from scratch.
		klog.InfoS("Formatting of this volume was interrupted, formatting again", "volumeID", v.ID, "device", path, "signatures", p.Signatures)
		return inv.format(ctx, v, path, fsType, mkfsArgs, true)
	case len(p.Signatures) == 0 && v.Format == state.FormatDone && v.Lost != "":
		return fmt.Errorf("%w: volume %s is lost: %s; the driver never formats it again: restore the data from a backup into a new volume", ErrDataGone, v.ID, v.Lost)
	case len(p.Signatures) == 0 && v.Format == state.FormatDone:
		err := fmt.Errorf("%w: volume %s was formatted by the driver and %s now carries no filesystem (zeroed or wiped by someone else, "+
			"a redeployed instance or a re-initialised disk); the driver never formats it again: restore the data from a backup into a new volume", ErrDataGone, v.ID, path)
		if lerr := inv.markLost(v.ID, err.Error()); lerr != nil {
			klog.ErrorS(lerr, "Recording the volume as lost", "volumeID", v.ID)
		}
		return err
	case len(p.Signatures) == 0:
		return inv.format(ctx, v, path, fsType, mkfsArgs, false)
	case p.FSType == fsType && p.UUID == v.FSUUID && len(p.Signatures) == 1:
		return nil // the filesystem the driver made for this volume
	case p.FSType == fsType:
		return fmt.Errorf("%w: %s holds a %s filesystem with UUID %s, not %s that the driver makes for volume %s; it may hold another volume's data and is not mounted",
			ErrForeign, path, p.FSType, p.UUID, v.FSUUID, v.ID)
	}
	return fmt.Errorf("%w: %s carries %s, the volume needs %s; the driver never formats over existing data",
		ErrForeign, path, strings.Join(p.Signatures, ","), fsType)
}

// partialOwn says whether what a probe found on the disk of a volume whose
// mkfs was cut short is what that mkfs leaves: nothing, or a filesystem with
// the UUID the driver gave it.
func partialOwn(v *state.Volume, p disk.Probe) bool {
	return len(p.Signatures) == 0 || (len(p.Signatures) == 1 && p.UUID == v.FSUUID)
}

// format checks the device, wipes the partial filesystem of an interrupted
// mkfs of its own when again is set, and makes the filesystem, recording
// its start and end. The checks and the acts on one disk hold its check
// lock, so that no other check's exclusive open fails them.
func (inv *Inventory) format(ctx context.Context, v Volume, path, fsType string, mkfsArgs []string, again bool) error {
	unlock := inv.lockCheck(v.Disk.ID)
	defer unlock()
	if again {
		// What the cut-short mkfs left, looked at again under the lock.
		if err := inv.wipeOwn(ctx, v.Disk.ID, path, &v.Volume, mounter.CleanupSignatures, mounter.WipeOptions{}); err != nil {
			return err
		}
	}
	if err := inv.checkIdentity(ctx, v.Disk.ID, path); err != nil {
		return err
	}
	if err := inv.checkUnused(path); err != nil {
		return err
	}
	var sizeLimit int64
	if v.Disk.ReservedTailBytes > 0 {
		sizeLimit = v.Disk.SizeBytes // stop short of the driver's tail
	}
	if err := inv.SetFormat(v.ID, state.FormatStarted); err != nil {
		return err
	}
	klog.InfoS("Formatting blank disk", "volumeID", v.ID, "device", path, "fsType", fsType, "mkfsOptions", mkfsArgs)
	if err := inv.cfg.Mounter.Format(ctx, path, fsType, v.FSUUID, sizeLimit, mkfsArgs); err != nil {
		return err
	}
	return inv.SetFormat(v.ID, state.FormatDone)
}

// updateVolume changes the allocated volume's record and saves it.
func (inv *Inventory) updateVolume(volumeID string, change func(*state.Disk)) error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if !inv.ready {
		return ErrNotReady
	}
	v, err := inv.lookupLocked(volumeID)
	if err != nil {
		return err
	}
	next := inv.rec.Clone()
	change(next.Disks[v.Disk.ID])
	return inv.commitLocked(next)
}
